"""The SAM-Mix workflow: train (SAM-Mix or a baseline), evaluate both ways, predict NIfTI files.

``configs/train_sam_mix.json`` builds one :class:`SamMixWorkflow` and MONAI's ``SupervisedTrainer``
(``train#trainer``) from its :attr:`SamMixWorkflow.training_run`; its run ids call :meth:`SamMixWorkflow.train`
(``training``) and, with ``configs/evaluate_sam_mix.json`` merged on top, :meth:`SamMixWorkflow.evaluate`
(``evaluating``). ``configs/inference_sam_mix.json`` needs only the model folder (MONAI's ``SupervisedEvaluator``
with :class:`~bundle.workflows.semisup.predictor.SamMixInferer` and
:class:`~bundle.workflows.semisup.outputs.OutputRecords`).

What is checked before any SAM work: ``num_labelled`` is a whole number the method can use, the datalist is of the
organ's dataset and has its label values, every training / validation / testing case passes the case check and
carries slice labels computed from its label file as it is now (:mod:`bundle.data.summaries`), and the training
section has at least ``num_labelled`` slices holding the organ.

Under ``torchrun`` (``configs/multi_gpu_train.json`` merged last) every rank trains on its share of the slices
(:class:`~bundle.workflows.semisup.training.TrainingRun`); rank 0 alone writes the shared files (the training summary
``sam_mix_training.json``, TensorBoard panels, the evaluation reports) while the other ranks wait.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from monai.utils import look_up_option

from bundle import distributed
from bundle.atomic import write_text_atomic
from bundle.data.case_ids import case_id_of
from bundle.data.datalist_io import load_checked_section, read_datalist
from bundle.data.slice_dataset import cached_slices, slice_items
from bundle.errors import InputError
from bundle.networks.sam_mix import SamMixNet, classifier_stride
from bundle.sam.loading import load_sam, sam_info
from bundle.sam.trainable import TrainableSam
from bundle.workflows.common.case_report import json_safe
from bundle.workflows.semisup.data import draw_labelled_slices, labelled_count, labelled_subset, organ_task
from bundle.workflows.semisup.evaluation import evaluate_case, write_evaluation
from bundle.workflows.semisup.panels import write_panels
from bundle.workflows.semisup.predictor import SamMixPredictor, build_unet
from bundle.workflows.common.run_settings import datalist_digest, resume_flag
from bundle.workflows.semisup.training import METHODS, TrainingRun, TrainingSettings, training_card, training_plan

__all__ = ["SamMixWorkflow", "run_name"]

logger = logging.getLogger(__name__)


def run_name(method: str, organ: str, num_labelled: int, seed: int) -> str:
    """The folder name of a run: ``sam_mix_n50_liver_seed0``, ``unet_n5_liver_seed1``, ...

    Raises:
        ValueError: ``num_labelled`` is not a whole number the method can use (:func:`labelled_count`): the config
            computes the run's folders from it first, so this is where ``--num_labelled 2.5`` is refused.
    """
    return f"{method}_n{labelled_count(num_labelled, method)}_{organ}_seed{int(seed)}"


class SamMixWorkflow:
    """SAM-Mix (or a baseline) on one dataset and organ (see the module docstring).

    Args:
        datalist, dataset_dir: the datalist and the folder its relative paths start from.
        dataset_name: the dataset preset (``lits``, ``abdomenct1k``, ...).
        organ, organ_values: the organ and its label values (default: :data:`~bundle.workflows.semisup.data.
            DEFAULT_ORGANS`).
        method: ``sam_mix``, ``zero_shot`` (CAM boxes into SAM as published) or ``unet`` (the N labelled slices only).
        num_labelled: N, the slices whose masks train the segmentation (5 / 50 / 100 in the paper): a whole
            number, 1 or more (0 for ``zero_shot``, which trains no segmentation).
        output_dir, model_dir, eval_dir: resume checkpoint and TensorBoard events; ``model.pt`` / ``adapter.pt``;
            evaluation reports.
        volume_transform: loads ``image`` and ``label`` (checked, RAS, intensity-scaled, label -> organ mask).
        train_item_transform, val_item_transform: per-slice transforms (resize to ``roi_size``, augmentation).
        sam: ``{"model_type", "checkpoint", "lora_rank", "lora_alpha", "multimask", "guidance", "guidance_weight"}``.
        classifier: ``{"backbone", "backbone_kwargs", "cam_threshold", "output_stride"}`` (``output_stride``: 8,
            16 or 32, checked here, before any data is read; missing: the backbone as MONAI builds it).
        unet: the U-Net baseline's ``channels``, ``strides``, ``num_res_units``.
        training: :class:`~bundle.workflows.semisup.training.TrainingSettings` (or its fields).
        card: fields recorded with the model (roi size, channel names, intensity).
        central_fraction: keep the central part of each volume's slices (authors: 0.3; default all).
        protocols: the evaluation protocols (``fair``, ``anchor``).
        resume: False trains afresh, replacing the model and checkpoint of ``model_dir`` / ``output_dir``; True
            (default) reuses or resumes them only when they were made with the same run settings and refuses
            otherwise, before the data and SAM are loaded (:func:`~bundle.workflows.semisup.training.training_plan`).
    """

    def __init__(self, datalist, dataset_dir, dataset_name: str, method: str, num_labelled: int,
                 output_dir, model_dir, eval_dir, volume_transform, train_item_transform, val_item_transform,
                 sam: Mapping, classifier: Mapping, unet: Mapping, training: TrainingSettings | Mapping, card: Mapping,
                 organ: str | None = None, organ_values: Sequence[int] | None = None, central_fraction: float = 1.0,
                 seed: int = 0, protocols: Sequence[str] = ("fair", "anchor"), summary_writer=None,
                 panels: int = 2, device="cpu", num_workers: int = 0, cache_rate: float = 1.0,
                 resume: bool = True) -> None:
        self.datalist, self.dataset_dir = os.fspath(datalist), os.fspath(dataset_dir)
        self.task = organ_task(dataset_name, organ, organ_values)
        self.organ = self.task.class_names[1]
        self.method = look_up_option(method, METHODS)
        self.num_labelled, self.seed = labelled_count(num_labelled, self.method), int(seed)
        self.output_dir, self.model_dir, self.eval_dir = Path(output_dir), Path(model_dir), Path(eval_dir)
        self.volume_transform = volume_transform
        self.train_item_transform, self.val_item_transform = train_item_transform, val_item_transform
        self.sam_args, self.classifier_args = dict(sam), dict(classifier)
        if self.method != "unet":  # the stride the classifier will have, or the one-line refusal of the option
            self.classifier_args["output_stride"] = classifier_stride(
                self.classifier_args["backbone"], len(card["image_channel_names"]),
                self.classifier_args.get("backbone_kwargs"), self.classifier_args.get("output_stride"))
        self.unet_args = dict(unet)
        self.training = training if isinstance(training, TrainingSettings) else TrainingSettings(**training)
        self.card_fields = dict(card)
        self.central_fraction = float(central_fraction)
        self.protocols = [look_up_option(p, ("fair", "anchor")) for p in protocols]
        self.summary_writer, self.panels = summary_writer, int(panels)
        self.device = torch.device(device)
        self.num_workers, self.cache_rate = int(num_workers), float(cache_rate)
        self.resume = resume_flag(resume)

    # ---- data ----------------------------------------------------------------------------------------------------
    def entries(self, section: str) -> list[dict]:
        data = read_datalist(self.datalist)
        if not isinstance(data.get(section), list) or not data[section]:
            return []
        entries = load_checked_section(self.datalist, section, self.dataset_dir, required=("image", "label"),
                                       summaries=True)  # the classifier trains on the slice labels
        return [{**e, "case_id": case_id_of(e)} for e in entries]

    def check(self) -> tuple[list[dict], list[dict]]:
        """The training entries and slice items, after every check of the module docstring."""
        self.task.check_datalist(read_datalist(self.datalist), self.datalist)
        entries = self.entries("training")
        if not entries:
            raise InputError(self.datalist, "the training section has no case")
        items = slice_items(entries, self.task, central_fraction=self.central_fraction, where=self.datalist)
        self.entries("validation")
        self.entries("testing")
        draw_labelled_slices(items, self.num_labelled, self.seed, self.datalist)
        return entries, items

    # ---- model ---------------------------------------------------------------------------------------------------
    def _sam_record(self) -> dict:
        info = sam_info(self.sam_args["model_type"], self.sam_args.get("checkpoint") or None)
        if info.checkpoint_sha256 is None:
            raise FileNotFoundError(f"SAM {info.model_type} needs a checkpoint (priors#sam_checkpoint): SAM-Mix tunes "
                                    "real weights; 'lite_medsam' ships with the bundle's dependencies")
        tuned = self.method == "sam_mix"
        return {"model_type": info.model_type, "checkpoint": self.sam_args.get("checkpoint") or None,
                "checkpoint_sha256": info.checkpoint_sha256,
                "lora_rank": int(self.sam_args["lora_rank"]) if tuned else 0,
                "lora_alpha": self.sam_args.get("lora_alpha") if tuned else None,
                "multimask": self.sam_args.get("multimask", "auto"),
                "guidance": self.sam_args.get("guidance", "fixed") if tuned else "fixed",
                "guidance_weight": float(self.sam_args.get("guidance_weight", 1.0)) if tuned else 0.0}

    def _card(self, labelled: list[dict]) -> dict:
        card = {**self.card_fields, "task": self.task.name, "dataset": self.task.dataset, "organ": self.organ,
                "organ_values": list(self.task.values[0]), "num_labelled": self.num_labelled,
                "labelled_slices": labelled, "central_fraction": self.central_fraction}
        if self.method == "unet":
            channels = len(card["image_channel_names"])
            card["unet"] = {"in_channels": channels, "channels": list(self.unet_args["channels"]),
                            "strides": list(self.unet_args["strides"]),
                            "num_res_units": int(self.unet_args.get("num_res_units", 2))}
        else:
            card["sam"] = self._sam_record()
            card["classifier"] = {"backbone": self.classifier_args["backbone"],
                                  "backbone_kwargs": dict(self.classifier_args.get("backbone_kwargs") or {}),
                                  "cam_threshold": float(self.classifier_args.get("cam_threshold", 0.4)),
                                  "dense_guidance": self.method == "sam_mix",
                                  "output_stride": int(self.classifier_args["output_stride"])}
        return card

    def _network(self, card: Mapping) -> torch.nn.Module:
        if self.method == "unet":
            return build_unet(card["unet"])
        rec = card["sam"]
        sam = load_sam(rec["model_type"], rec["checkpoint"])
        tuned = self.method == "sam_mix"
        tsam = TrainableSam(sam, lora_rank=rec["lora_rank"], lora_alpha=rec["lora_alpha"], tune=tuned,
                            multimask=rec["multimask"], guidance=rec["guidance"],
                            guidance_weight=rec["guidance_weight"])
        cls = card["classifier"]
        return SamMixNet(tsam, cls["backbone"], len(card["image_channel_names"]), cls["backbone_kwargs"],
                         cls["cam_threshold"], cls["dense_guidance"], cls["output_stride"])

    # ---- stages --------------------------------------------------------------------------------------------------
    @functools.cached_property
    def training_run(self) -> TrainingRun:
        """The training of this configuration: the parts ``train#trainer`` (MONAI's ``SupervisedTrainer``) of
        ``configs/train_sam_mix.json`` is built from. Built once, after every check of the module docstring and the
        refusal of other run settings (before SAM is loaded); the volumes are loaded when :meth:`train` starts, so
        building it for MONAI's ``check_properties`` loads no data."""
        self._started = time.perf_counter()
        entries, items = self.check()
        labelled = draw_labelled_slices(items, self.num_labelled, self.seed, self.datalist)
        card = self._card(labelled)
        data = {"datalist": datalist_digest(self.datalist)}
        training_plan(training_card(card, self.method, device=self.device, seed=self.seed,
                                    **dataclasses.asdict(self.training)),
                      self.output_dir, self.model_dir, data, self.resume)  # refuses other settings before any loading
        loading = {"keys": ("image", "label"), "cache_rate": self.cache_rate, "num_workers": self.num_workers,
                   "deferred": True}
        train = cached_slices(entries, items, self.volume_transform, self.train_item_transform, **loading)
        labelled_data = cached_slices(entries, labelled_subset(items, labelled), self.volume_transform,
                                      self.train_item_transform, **loading) if self.method != "zero_shot" else None
        self._sizes = {"labelled_slices": len(labelled), "training_slices": len(items)}
        return TrainingRun(self.method, self._network(card), train, labelled_data, self.output_dir, self.model_dir,
                           card, self.training, device=self.device, seed=self.seed, num_workers=self.num_workers,
                           summary_writer=self.summary_writer, epoch_callback=self._panel_callback(),
                           data_settings=data, resume=self.resume)

    def train(self, trainer, dataset=None) -> dict:
        """Train (resume, or reuse) the model of this configuration with ``trainer`` (``train#trainer``, built from
        :attr:`training_run`; ``dataset``: ``train#dataset``, which must be the run's slices); returns what was done
        (with several processes, what each rank did: its slices per epoch, iterations and the digest of the weights it
        ended with)."""
        outcome = self.training_run.run(trainer, dataset)
        result = {"method": self.method, "model_dir": str(self.model_dir), **self._sizes,
                  "seconds": round(time.perf_counter() - self._started, 2)}
        if outcome["ranks"] is not None and len(outcome["ranks"]) > 1:
            result["ranks"] = outcome["ranks"]
        if distributed.is_main_process():
            write_text_atomic(self.output_dir / "sam_mix_training.json", json.dumps(json_safe(result), indent=1))
        distributed.barrier()
        return result

    def _panel_callback(self):
        if self.summary_writer is None or not self.panels or not distributed.is_main_process():
            return None
        val_entries = self.entries("validation")
        if not val_entries:
            return None
        items = [i for i in slice_items(val_entries, self.task, where=self.datalist) if i["class_label"] == 1]
        if not items:
            return None
        step = max(1, len(items) // self.panels)
        shown = items[::step][: self.panels]
        data = cached_slices(val_entries, shown, self.volume_transform, self.val_item_transform,
                             keys=("image", "label"), cache_rate=self.cache_rate, deferred=True)
        writer, device = self.summary_writer, self.device

        def callback(engine):
            write_panels(writer, engine.network, [data[i] for i in range(len(data))], engine.state.epoch, device)

        return callback

    def evaluate(self, section: str = "testing") -> dict:
        """Both protocols on a section's cases with the trained model; reports under ``eval_dir``.

        Under ``torchrun`` rank 0 evaluates and writes the reports while the others wait; every rank returns its result.
        """
        result = self._evaluate(section) if distributed.is_main_process() else None
        return distributed.gather_objects(result)[0]

    def _evaluate(self, section: str) -> dict:
        entries = self.entries(section)
        if not entries:
            raise InputError(self.datalist, f"the {section} section has no case to evaluate")
        predictor = SamMixPredictor(self.model_dir, self.device, sam_checkpoint=self.sam_args.get("checkpoint"))
        card = predictor.card
        if card["organ_values"] != list(self.task.values[0]):
            raise InputError(self.model_dir / "model.pt", f"trained on {card['organ']} (label values "
                                                          f"{card['organ_values']}), evaluated as {self.organ} "
                                                          f"{list(self.task.values[0])}: set organ / organ_values")
        records: dict[str, list] = {p: [] for p in self.protocols}
        for i, entry in enumerate(entries, 1):
            data = self.volume_transform({"image": entry["image"], "label": entry["label"]})
            image, truth = data["image"], data["label"]
            spacing = [float(s) for s in image.pixdim[:3]]
            scores = evaluate_case(predictor, image, truth, spacing, self.organ, self.protocols)
            for protocol, result in scores.items():
                record = {"case_id": entry["case_id"], "source": str(entry["image"]),
                          **{k: v for k, v in result.items() if k != "seconds"}, "seconds": round(result["seconds"], 3)}
                records[protocol].append(record)
            logger.info("sam-mix evaluation: case %d/%d %s %s", i, len(entries), entry["case_id"],
                        {p: r["metrics"][self.organ] for p, r in scores.items()})
        tags = {"method": card["method"], "organ": self.organ, "num_labelled": card["num_labelled"],
                "seed": card["training"]["seed"], "section": section,
                "sam": {k: card["sam"][k] for k in ("model_type", "checkpoint_sha256", "lora_rank")}
                if "sam" in card else None}
        both = write_evaluation(records, self.eval_dir, self.organ, tags)
        return {"eval_dir": str(self.eval_dir), "protocols": both["protocols"]}
