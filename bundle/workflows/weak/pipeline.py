"""The WeakMedSAM pipeline: six stages, each resumable, run one at a time or all together.

``configs/train_weak.json`` builds one :class:`WeakPipeline`; its run ids call :meth:`WeakPipeline.run`::

    sam_features   pooled SAM embeddings + prompt-affinity logit maps of every slice (cache, per case)
    subclasses     seeded k-means of the positive training slices' embeddings -> child targets (one JSON)
    classifier     parent/child slice classifier on slice labels (checkpoint every epoch, model + card)
    pseudo_labels  CAMs -> random walk -> pseudo-label NIfTIs (cache, per case) and a datalist pointing at them
    pseudo_quality the pseudo labels (with and without the walk) against the ground truth: 3D Dice per class
    segmentation   the SAMAug segmentation workflow trained on the pseudo labels (its own resume checkpoint)
    evaluation     that network on the real labels of the test split (3D Dice / HD95 in mm + slice convention)

``training`` runs them in order. Each stage finds the work of an earlier run (cache entries, the sub-class file,
the classifier's card, the segmentation checkpoint) and does only what is missing, so an interrupted pipeline is
resumed by running the same command again. The first four stages never read a label voxel: their entries are loaded
without the ``label`` key (only the datalist's slice-label summaries are used, once checked to come from the label
files as they are now: :mod:`bundle.data.summaries`); the ground truth is read by ``pseudo_quality`` (a report only:
nothing trains on it) and by the evaluation. Before the first stage, every datalist section the stages need is
checked to hold cases (:meth:`WeakPipeline.check_splits`): an empty test split is not found after the trainings.

Under ``torchrun`` (``configs/multi_gpu_train.json`` merged last) every rank runs the same stages
(:mod:`bundle.workflows.weak.ranks`): ``sam_features`` and ``pseudo_labels`` deal the cases out (sorted case ids,
rank ``r`` of ``W`` takes every ``W``-th from the ``r``-th), each rank writing its own cache entries, and rank 0 writes
the manifests, datalists and TensorBoard panels once every rank is done; rank 0 alone writes the sub-class file and
the quality report while the others wait; the classifier trains with ``DistributedDataParallel`` on each rank's share
of the slices; the segmentation and its evaluation run the segmentation workflow on every rank (each its share of the
cases, reports written by rank 0). ``weak_summary.json`` is written by rank 0. One process runs as before.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from monai.bundle import ConfigWorkflow
from monai.transforms import Compose
from monai.utils import look_up_option

from bundle import distributed
from bundle.atomic import write_text_atomic
from bundle.data.case_ids import case_id_of
from bundle.data.channel_select import SelectChannelsd
from bundle.data.datalist_io import load_checked_section, read_datalist
from bundle.data.labels import DATASETS
from bundle.data.summaries import SUMMARY_KEY
from bundle.data.tasks import get_task
from bundle.errors import InputError
from bundle.folders import CONFIGS_DIR
from bundle.workflows.common import ddp
from bundle.workflows.common.case_report import json_safe
from bundle.workflows.common.run_settings import datalist_digest, resume_flag
from bundle.workflows.weak.classifier import (CLASSIFIERS, ClassifierRun, ClassifierSettings, classifier_card,
                                              classifier_plan, slice_dataset)
from bundle.workflows.weak.embedding_slices import EmbeddingSlices, WindowSlices
from bundle.workflows.weak.features import SamSliceFeatures
from bundle.workflows.weak.panels import write_panels
from bundle.workflows.weak.pseudo_stage import CAM_KIND, PSEUDO_KIND, PseudoLabels, pseudo_label_quality
from bundle.workflows.weak.ranks import each_case, on_main
from bundle.workflows.weak.slices import class_groups, parent_labels, weak_slice_items, with_targets
from bundle.workflows.weak.subclass_stage import SubclassTargets

__all__ = ["DEFAULT_TASKS", "SEG_LABELS", "STAGES", "WeakPipeline", "default_task", "pseudo_datalist"]

logger = logging.getLogger(__name__)

STAGES = ("sam_features", "subclasses", "classifier", "pseudo_labels", "pseudo_quality", "segmentation", "evaluation")
DEFAULT_TASKS = MappingProxyType({name: spec.weak_task for name, spec in DATASETS.items() if spec.weak_task})
"""The weak task of each dataset preset (the spec's ``weak_task``): BraTS whole tumour, LiTS liver, AbdomenCT-1K's four
organs."""
SEG_LABELS = (PSEUDO_KIND, CAM_KIND, "ground_truth")
"""What the segmentation stage trains on: the pseudo labels, the CAM-alone labels, or (the fully supervised baseline
with the same settings) the datalist's real labels."""
_NO_LABEL = "__weak_no_label__"  # a label key no entry has: entries are checked and loaded without their label
#: the datalist sections a stage cannot run without: training for everything up to the segmentation, validation for
#: the segmentation workflow (it validates every epoch), testing for the evaluation
_SECTIONS_NEEDED = {"training": STAGES[:-1], "validation": ("segmentation",), "testing": ("evaluation",)}
_FRACTION_OPTION = {"validation": "--val-fraction", "testing": "--test-fraction"}


def default_task(dataset_name: str) -> str:
    """The weak task of a dataset preset (:data:`DEFAULT_TASKS`)."""
    return look_up_option(dataset_name, DEFAULT_TASKS)


def pseudo_datalist(datalist: str | os.PathLike, data_root: str | os.PathLike, labels: Mapping[str, str],
                    path: str | os.PathLike, sections: Sequence[str] = ("training", "validation")) -> Path:
    """Write a copy of ``datalist`` whose ``sections`` point ``label`` at the pseudo labels (absolute paths).

    Paths are made absolute (so the copy can live anywhere), the entries' label summaries and check records (made
    from the real labels) are dropped, the other sections (the test split) keep their real labels, and the file says
    where its labels come from.
    """
    data = read_datalist(datalist)
    root = Path(data_root).resolve()

    def absolute(p):
        return [absolute(x) for x in p] if isinstance(p, list) else str(p if os.path.isabs(p) else root / p)

    for section in ("training", "validation", "testing"):
        for entry in data.get(section) or []:
            for key in ("image", "label"):
                if key in entry:
                    entry[key] = absolute(entry[key])
            if section in sections:
                case_id = case_id_of(entry)
                if case_id not in labels:
                    raise ValueError(f"{datalist}: no pseudo label for case {case_id} of the {section} section")
                entry["label"] = labels[case_id]
                for key in ("slice_labels", "slice_foreground", "volume_labels", SUMMARY_KEY, "checked"):
                    entry.pop(key, None)
    data["description"] = (f"{data.get('description', '')} -- weak supervision: {', '.join(sections)} labels are "
                           "WeakMedSAM pseudo labels, the other sections keep the ground truth").strip(" -")
    data["pseudo_labels"] = {"sections": list(sections), "source": os.fspath(datalist)}
    write_text_atomic(path, json.dumps(data, indent=1))
    return Path(path)


class WeakPipeline:
    """The stages of WeakMedSAM on one dataset (see the module docstring).

    Args:
        datalist, dataset_dir: the datalist and the folder its relative paths start from.
        task: a slice-level task (:data:`DEFAULT_TASKS`).
        output_dir: run folder (sub-class file, classifier checkpoint, reports, TensorBoard events).
        model_dir: where the classifier and the segmentation model are written.
        features: the :class:`~bundle.workflows.weak.features.SamSliceFeatures` stage.
        sam_loader: transform loading a volume for SAM (checked load, channel first, RAS).
        volume_transform: the classifier's volume transform (``sam_loader`` + intensity scaling).
        train_item_transform, val_item_transform: per-slice transforms (resize to ``roi_size``, augmentation).
        classifier_training: :class:`~bundle.workflows.weak.classifier.ClassifierSettings` (or its fields).
        classifier_network: the classifier's arguments: its ``kind``
            (:data:`~bundle.workflows.weak.classifier.CLASSIFIERS`), ``block_channels`` for the SAM classifiers
            (``sam_frozen`` trains on the image embeddings that ``features`` caches: build it ``with_embeddings``;
            ``sam_lora``, with ``lora_rank``, tunes a copy of the features' SAM encoder and makes its own ``M``: build
            ``features`` without maps), the backbone's arguments for ``resnet``.
        card: fields recorded with the classifier (roi size, channel names, intensity, ...); its
            ``image_channel_names`` name the channels of the loaded volume.
        classifier_channels: the channels the ``resnet`` classifier sees, by name (e.g. ``["FLAIR"]``, the authors'
            BraTS input); None (default) for all. The card records them; the SAM classifiers refuse a selection
            (they see the SAM window's channel).
        pseudo_args: :class:`~bundle.workflows.weak.pseudo_stage.PseudoLabels` settings.
        pseudo_cache_dir: the pseudo-label cache folder.
        num_subclasses, seed: sub-class exploration.
        feature_extractor: what sub-class exploration clusters: None for the pooled SAM embeddings of
            ``features`` (default), or a :class:`~bundle.workflows.weak.extractors.NetworkFeatures` (any torch
            network with the user's weights).
        seg_labels: what the segmentation trains on (:data:`SEG_LABELS`): ``pseudo_label`` (CAM + random walk),
            ``cam_label`` (the CAM alone) or ``ground_truth`` (the fully supervised baseline with the same settings);
            the outputs of the last two get a ``_cam_label`` / ``_ground_truth`` suffix.
        seg_config_files, seg_overrides: the segmentation workflow's configs and overrides (``datalist``,
            ``regions`` and the output folders are set here); ``eval_config_file`` is added for the evaluation;
            ``meta_file`` is the bundle's metadata.
        summary_writer: TensorBoard writer (loss, AUC, the image / CAM / M / refined / pseudo-label panels).
        panels: cases shown in TensorBoard.
        device: the classifier's device.
        multi_gpu_config_file: merged last onto the segmentation's configs when the pipeline runs on several
            processes (default: ``configs/multi_gpu_train.json`` of the bundle).
        resume: False trains the classifier and the segmentation afresh, replacing what ``output_dir`` /
            ``model_dir`` hold; True (default) resumes or reuses them only when they were made with the same run
            settings and refuses otherwise (:mod:`bundle.workflows.common.run_settings`), before any stage runs
            for the classifier.
    """

    def __init__(self, datalist, dataset_dir, task: str, output_dir, model_dir, features: SamSliceFeatures,
                 sam_loader, volume_transform, train_item_transform, val_item_transform,
                 classifier_network: Mapping, classifier_training: ClassifierSettings | Mapping, card: Mapping,
                 pseudo_args: Mapping, pseudo_cache_dir,
                 num_subclasses: int = 8, seed: int = 0, seg_config_files: Sequence[str] = (),
                 seg_overrides: Mapping | None = None, eval_config_file: str | None = None,
                 meta_file: str | None = None, summary_writer=None, panels: int = 2, device="cpu",
                 num_workers: int = 0, cache_rate: float = 1.0, seg_labels: str = PSEUDO_KIND,
                 feature_extractor=None, multi_gpu_config_file: str | None = None, resume: bool = True,
                 classifier_channels: Sequence[str] | None = None) -> None:
        self.task = get_task(task)
        if self.task.level != "slice":
            raise ValueError(f"task {self.task.name!r} has volume labels; WeakMedSAM needs slice labels")
        self.datalist, self.dataset_dir = os.fspath(datalist), os.fspath(dataset_dir)
        self.output_dir, self.model_dir = Path(output_dir), Path(model_dir)
        self.features = features
        self.sam_loader, self.volume_transform = sam_loader, volume_transform
        self.train_item_transform, self.val_item_transform = train_item_transform, val_item_transform
        self.classifier_network, self.card = dict(classifier_network), dict(card)
        self.classifier_training = (classifier_training if isinstance(classifier_training, ClassifierSettings)
                                    else ClassifierSettings(**classifier_training))
        try:
            self.classifier_kind = look_up_option(self.classifier_network.get("kind", "resnet"), CLASSIFIERS)
        except ValueError as error:
            raise ValueError("classifier_network: " + " ".join(str(error).split())) from None
        if self.classifier_kind == "sam_lora" and features.with_maps:
            raise ValueError("classifier_network sam_lora decodes M from its own tuned encoder: build the SAM "
                             "features without maps (with_maps false)")
        if self.classifier_kind == "sam_frozen" and not features.with_embeddings:
            raise ValueError("classifier_network sam_frozen trains on the cached SAM image embeddings: build the "
                             "SAM features with_embeddings")
        self._select_channels(classifier_channels)
        self.pseudo_args, self.pseudo_cache_dir = dict(pseudo_args), pseudo_cache_dir
        self.subclasses = SubclassTargets(self.output_dir / "subclasses.json", features, self.task.name,
                                          num_subclasses, seed, extractor=feature_extractor)
        self.seed, self.device = int(seed), device
        self.seg_config_files, self.seg_overrides = list(seg_config_files), dict(seg_overrides or {})
        self.eval_config_file, self.meta_file = eval_config_file, meta_file
        self.multi_gpu_config_file = os.fspath(multi_gpu_config_file or CONFIGS_DIR / "multi_gpu_train.json")
        self.summary_writer, self.panels = summary_writer, int(panels)
        self.num_workers, self.cache_rate = int(num_workers), float(cache_rate)
        self.seg_labels = look_up_option(seg_labels, SEG_LABELS)
        self.resume = resume_flag(resume)
        self.pseudo()  # refuses an unknown walk border / transition now, not after the SAM features and classifier

    def _select_channels(self, keep: Sequence[str] | None) -> None:
        """Narrow the classifier's volume transform and card to the channels ``keep`` (see the class)."""
        names = [str(n) for n in self.card.get("image_channel_names") or []]
        if keep is None or [str(k) for k in ([keep] if isinstance(keep, str) else keep)] == names:
            return
        if self.classifier_kind != "resnet":
            raise ValueError(f"classifier_channels selects the input of classifier_network resnet; "
                             f"{self.classifier_kind} sees the SAM window's channel (set priors#sam_window channels "
                             f"instead, or leave classifier_channels null)")
        try:
            select = SelectChannelsd("image", names, keep)
        except ValueError as error:
            raise ValueError(f"classifier_channels: {error}") from None
        self.volume_transform = Compose([self.volume_transform, select])
        self.card["image_channel_names"] = [names[i] for i in select.indices]

    # ---- data ----------------------------------------------------------------------------------------------------
    def entries(self, section: str, with_label: bool = False) -> list[dict]:
        """The checked entries of a section; without ``with_label`` the label is neither checked nor kept."""
        data = read_datalist(self.datalist)
        if not isinstance(data.get(section), list) or not data[section]:
            return []
        # summaries: the stages train on the slice labels, which must still be those of the label files
        entries = load_checked_section(self.datalist, section, self.dataset_dir, required=("image",),
                                       label_key="label" if with_label else _NO_LABEL, summaries=True)
        if not with_label:
            entries = [{k: v for k, v in e.items() if k != "label"} for e in entries]
        return [{**e, "case_id": case_id_of(e)} for e in entries]

    def _items(self, section: str) -> tuple[list[dict], list[dict]]:
        self.task.check_datalist(read_datalist(self.datalist), self.datalist)
        entries = self.entries(section)
        return entries, weak_slice_items(entries, self.task, self.datalist)

    def check(self) -> None:
        """What the label-free stages need, checked before any SAM or training work: the datalist is of the task's
        dataset, every training / validation case passes the case check and carries slice labels, and the training
        split has a positive slice for every class.

        Raises:
            InputError, MissingInputError: naming the datalist (and the case) or the file at fault.
        """
        _, train_items = self._items("training")
        self._items("validation")
        if not train_items:
            raise InputError(self.datalist, "the training section has no case")
        missing = [name for name, present in zip(class_groups(self.task), parent_labels(train_items, self.task).T)
                   if not present.any()]
        if missing:
            raise InputError(self.datalist, f"no training slice holds {missing}: the classifier of task "
                                            f"{self.task.name!r} cannot learn a class it never sees")

    def check_splits(self, stages: Sequence[str]) -> None:
        """Every datalist section that ``stages`` need holds a case, checked before the first stage: an empty test
        split would otherwise be found by the evaluation, after every training. The test cases' files (labels
        included) pass the case check here too.

        Raises:
            InputError: one line naming the datalist, the empty section and the stage that needs it.
        """
        data = read_datalist(self.datalist)
        for section, users in _SECTIONS_NEEDED.items():
            needed_by = [s for s in STAGES if s in stages and s in users]
            if not needed_by:
                continue
            if not isinstance(data.get(section), list) or not data[section]:
                state = "empty" if isinstance(data.get(section), list) else "missing"
                fix = (f" (scripts/prepare_datalist.py {_FRACTION_OPTION[section]} above 0)"
                       if section in _FRACTION_OPTION else "")
                raise InputError(self.datalist, f"the {section} section is {state}, but the WeakMedSAM stage "
                                                f"{needed_by[0]!r} needs its cases: give it cases{fix} before running "
                                                f"{', '.join(needed_by)}")
        if "evaluation" in stages:
            load_checked_section(self.datalist, "testing", self.dataset_dir, required=("image", "label"))

    # ---- stages --------------------------------------------------------------------------------------------------
    def sam_features(self) -> dict:
        entries = self.entries("training") + self.entries("validation")
        counter = iter(range(1, len(entries) + 1))
        if distributed.is_main_process():  # temporary files of a run killed while writing (never a live writer's)
            self.features.cache.tidy()

        def case(entry) -> bool:
            computed = self.features.ensure(entry, self.sam_loader)
            logger.info("sam_features: case %d/%d %s %s", next(counter), len(entries), entry["case_id"],
                        "computed" if computed else "cached")
            return computed

        done = sum(sum(share) for share in each_case("sam_features", entries, case))
        on_main("sam_features manifest", self.features.cache.write_manifest)
        return {"cases": len(entries), "computed": done, "cache": str(self.features.cache.cache_dir)}

    def _subclass_record(self) -> tuple[dict, list, list, list, list]:
        train_entries, train_items = self._items("training")
        val_entries, val_items = self._items("validation")
        if distributed.world_size() == 1:
            record = self.subclasses.ensure(train_items, val_items)
        else:  # rank 0 writes the file, the other ranks read it once it is there
            on_main("subclasses", lambda: self.subclasses.ensure(train_items, val_items)["num_outputs"])
            record = self.subclasses.read(train_items, val_items)
        return record, train_entries, train_items, val_entries, val_items

    def subclasses_stage(self) -> dict:
        record, *_ = self._subclass_record()
        return {"file": str(self.subclasses.path), "child_outputs": record["num_outputs"]}

    def _classifier_run(self) -> tuple[dict, dict, dict]:
        """``(network arguments, card, data settings)`` of the classifier: all known before the earlier stages run
        (the sub-class record is added to the card when it trains)."""
        network = dict(self.classifier_network)
        if self.classifier_kind == "sam_frozen":  # heads on the embeddings: no backbone, no image channels
            channels = int(self.features.miner.engine.info.config.get("prompt_embed_dim", 256))
            network = {"kind": "sam_frozen", "embedding_channels": channels,
                       "block_channels": int(network.get("block_channels", 128))}
        elif self.classifier_kind == "sam_lora":  # the features' SAM, its encoder tuned
            network = {"kind": "sam_lora", "sam_model_type": self.features.miner.engine.info.model_type,
                       "lora_rank": int(network.get("lora_rank", 4)),
                       "block_channels": int(network.get("block_channels", 128))}
        else:
            network = {k: v for k, v in network.items() if k not in ("kind", "block_channels", "lora_rank")}
            network["in_channels"] = len(self.card.get("image_channel_names") or []) or network.get("in_channels", 1)
        network.update(num_classes=len(class_groups(self.task)), num_subclasses=self.subclasses.num_subclasses)
        card = {**self.card, "task": self.task.name, "class_names": list(class_groups(self.task))}
        extractor = self.subclasses.extractor
        data = {"datalist": datalist_digest(self.datalist),
                "features": extractor.signature() if extractor is not None else self.features.cache.digest}
        return network, card, data

    def check_classifier_run(self) -> str:
        """What the classifier stage will do (``reuse``, ``resume``, ``fresh``), checked before any stage: a
        classifier or checkpoint made with other settings is refused here, not after the SAM features."""
        network, card, data = self._classifier_run()
        card = classifier_card(card, network, seed=self.seed, **dataclasses.asdict(self.classifier_training))
        plan, _ = classifier_plan(self.output_dir, self.classifier_path, card, data, self.resume)
        return plan

    @functools.cached_property
    def classifier_run(self) -> ClassifierRun:
        """The classifier's training: the parts ``train#trainer`` (MONAI's ``SupervisedTrainer``) of
        ``configs/train_weak.json`` is built from. Its slice datasets are built without targets (the sub-class stage
        gives them) and, for the ``resnet`` classifier, without loading a volume, so building it for MONAI's
        ``check_properties`` computes no SAM feature. The SAM classifiers train on the slices SAM ran on, which the
        ``sam_features`` stage finds: for them it runs first (cached, resumable, after the datalist checks).
        Other classifier settings than a finished model's or checkpoint's are refused here."""
        train_entries, train_items = self._items("training")
        val_entries, val_items = self._items("validation")
        initial_sam = None
        if self.classifier_kind != "resnet":
            self.check()
            self.sam_features()
        if self.classifier_kind == "sam_frozen":  # the cached embeddings: no volume is loaded, no encoder run
            train = EmbeddingSlices(self.features, train_items)
            val = EmbeddingSlices(self.features, val_items) if val_items else None
        elif self.classifier_kind == "sam_lora":  # the slices as SAM sees them; a copy of its weights is tuned
            train = WindowSlices(self.features, train_entries, train_items, self.sam_loader)
            val = WindowSlices(self.features, val_entries, val_items, self.sam_loader) if val_items else None
            engine = self.features.miner.engine
            initial_sam = lambda: copy.deepcopy(engine.model).cpu()  # noqa: E731 (only when it trains)
        else:
            train = slice_dataset(train_entries, train_items, self.volume_transform, self.train_item_transform,
                                  self.cache_rate, self.num_workers)
            val = slice_dataset(val_entries, val_items, self.volume_transform, self.val_item_transform,
                                self.cache_rate, self.num_workers) if val_items else None
        network, card, data = self._classifier_run()
        return ClassifierRun(network, train, val, self.output_dir, self.classifier_path, card,
                             self.classifier_training, device=self.device, seed=self.seed,
                             num_workers=self.num_workers, summary_writer=self.summary_writer, data_settings=data,
                             resume=self.resume, initial_sam=initial_sam)

    def classifier(self, trainer) -> dict:
        """Train (resume, or reuse) the classifier with ``trainer`` (``train#trainer``, built from
        :attr:`classifier_run`) on the targets of the sub-class stage."""
        # the pseudo-label stage after it reads every case's SAM features: a damaged file must stop the run now,
        # not once the classifier has trained
        self.features.check_cached(self.entries("training") + self.entries("validation"))
        record, _, train_items, _, val_items = self._subclass_record()
        train_items = with_targets(train_items, self.task, self.subclasses.child_targets(record, train_items))
        val_items = with_targets(val_items, self.task, self.subclasses.child_targets(record, val_items))
        card = self.classifier_run.run(trainer, train_items, val_items or None, record["signature"])
        return {"model": str(self.classifier_path), "validation": card.get("validation", {})}

    @property
    def classifier_path(self) -> Path:
        return self.model_dir / "classifier.pt"

    def pseudo(self) -> PseudoLabels:
        return PseudoLabels(self.features, self.classifier_path, self.pseudo_cache_dir, device=self.device,
                            **self.pseudo_args)

    def pseudo_labels(self) -> dict:
        pseudo = self.pseudo()
        entries = self.entries("training") + self.entries("validation")
        if distributed.is_main_process():
            pseudo.cache.tidy()
        panel_ids = {e["case_id"] for e in entries[: self.panels]}
        counter, shown = iter(range(1, len(entries) + 1)), {}

        def case(entry) -> bool:
            done = pseudo.ensure(entry, self.volume_transform, sam_loader=self.sam_loader)
            if done is not None and entry["case_id"] in panel_ids:
                shown[entry["case_id"]] = done  # drawn below without computing them again
            logger.info("pseudo_labels: case %d/%d %s %s", next(counter), len(entries), entry["case_id"],
                        "written" if done is not None else "cached")
            return done is not None

        computed = sum(sum(share) for share in each_case("pseudo_labels", entries, case))

        def shared_files() -> None:  # rank 0, once every rank's labels are in the cache
            pseudo.cache.write_manifest()
            if self.summary_writer is not None and self.panels:
                write_panels(self.summary_writer, pseudo, entries[: self.panels], self.volume_transform, shown)
            for kind in (PSEUDO_KIND, CAM_KIND):
                labels = {e["case_id"]: pseudo.label_file(e["case_id"], kind) for e in entries}
                pseudo_datalist(self.datalist, self.dataset_dir, labels, self._datalist_path(kind))

        on_main("pseudo_labels datalists", shared_files)
        return {"cases": len(entries), "computed": computed, "datalist": str(self._datalist_path(PSEUDO_KIND)),
                "cache": str(pseudo.cache.cache_dir)}

    def pseudo_quality(self) -> dict:
        """The pseudo labels against the ground truth (3D Dice per class, with and without the walk).

        Written to ``<output_dir>/pseudo_label_quality.json`` (the run's latest) and to ``quality.json`` in the
        pseudo labels' cache partition, which keeps the report of every configuration next to its labels.
        """
        return on_main("pseudo_quality", self._pseudo_quality)  # the other ranks wait for rank 0

    def _pseudo_quality(self) -> dict:
        pseudo = self.pseudo()
        quality = pseudo_label_quality(pseudo, self.entries("training", True) + self.entries("validation", True))
        path = self.output_dir / "pseudo_label_quality.json"
        text = json.dumps(json_safe(quality), indent=1)
        write_text_atomic(path, text)
        write_text_atomic(pseudo.cache.cache_dir / "quality.json", text)
        for kind, per_class in quality["mean"].items():
            logger.info("pseudo-label quality (%s, 3D Dice): %s", kind,
                        ", ".join(f"{k} {v:.3f}" for k, v in per_class.items() if v is not None))
        return {"file": str(path), "mean": quality["mean"]}

    @property
    def _suffix(self) -> str:
        return "" if self.seg_labels == PSEUDO_KIND else f"_{self.seg_labels}"

    def _datalist_path(self, kind: str) -> Path:
        return self.output_dir / f"pseudo_datalist{'' if kind == PSEUDO_KIND else '_' + kind}.json"

    @property
    def pseudo_datalist_path(self) -> Path:
        """The datalist the segmentation trains on: ``pseudo_datalist.json`` (``..._cam_label.json`` for the CAM-alone
        labels, the original datalist for ``ground_truth``)."""
        return Path(self.datalist) if self.seg_labels == "ground_truth" else self._datalist_path(self.seg_labels)

    def _seg_overrides(self) -> dict:
        regions = {name: list(values) for name, values in class_groups(self.task).items()}
        return {"regions": regions, "output_dir": str(self.output_dir / f"segmentation{self._suffix}"),
                "ckpt_dir": str(self.model_dir / f"segmentation{self._suffix}"), "seed": self.seed,
                "resume": self.resume, **self.seg_overrides}

    def segmentation(self) -> dict:
        if not self.pseudo_datalist_path.is_file():
            raise FileNotFoundError(f"{self.pseudo_datalist_path}: no pseudo-label datalist; run 'pseudo_labels'")
        overrides = {**self._seg_overrides(), "datalist": str(self.pseudo_datalist_path),
                     "model_card#method": f"weakmedsam ({self.seg_labels} labels)"}
        files = [*self.seg_config_files, *([self.multi_gpu_config_file] if ddp.is_distributed() else [])]
        self._run_bundle(files, "training", "train", overrides)
        return {"labels": self.seg_labels, "model": str(Path(overrides["ckpt_dir"]) / "model.pt")}

    def evaluation(self) -> dict:
        """The segmentation network on the real labels of the test split. Under ``torchrun`` every rank evaluates its
        share of the cases in the job's process group (the metrics and the report gather them; rank 0 writes it): the
        metrics' gathering is a collective call that a rank evaluating alone would wait in for ever."""
        if self.eval_config_file is None:
            raise ValueError("no evaluation config given (eval_config_file)")
        # the authors' slice distances (authors_*, 256 trimmed frame, pooled over slices) next to the standard ones
        overrides = {**self._seg_overrides(), "datalist": self.datalist, "eval_section": "testing",
                     "authors_metrics": True}
        self._run_bundle([*self.seg_config_files, self.eval_config_file], "evaluating", "eval", overrides)
        return {"labels": self.seg_labels, "eval_dir": str(Path(overrides["output_dir"]))}

    def _run_bundle(self, files: Sequence[str], run_id: str, workflow_type: str, overrides: Mapping) -> None:
        """Run a bundle config in this process, as ``python -m monai.bundle run RUN_ID`` does."""
        workflow = ConfigWorkflow(config_file=list(files), workflow_type=workflow_type, run_id=run_id,
                                  logging_file=False, meta_file=self.meta_file, **overrides)
        workflow.initialize()
        try:
            workflow.run()
        finally:
            workflow.finalize()

    # ---- driver --------------------------------------------------------------------------------------------------
    def run(self, stages: str | Sequence[str] = STAGES, trainer=None, dataset=None) -> dict:
        """Run stages in pipeline order; writes ``weak_summary.json`` (what each stage did, how long it took).

        Args:
            trainer: the classifier's ``SupervisedTrainer`` (``train#trainer``), needed by the ``classifier`` stage.
            dataset: the config's ``train#dataset``, checked to be the classifier run's slices.
        """
        names = [stages] if isinstance(stages, str) else list(stages)
        names = [look_up_option(s, STAGES) for s in names]
        if "classifier" in names and trainer is None:
            raise ValueError("the classifier stage trains with train#trainer: run it from configs/train_weak.json "
                             "(run ids training or classifier)")
        summary_path = self.output_dir / "weak_summary.json"
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError):
            summary = {}
        self.check_splits(names)  # every section the stages need, before the first of them
        if set(names) & set(STAGES[:4]):
            self.check()
        if {"classifier", "pseudo_labels"} & set(names):  # the pseudo labels come from the classifier in model_dir
            self.check_classifier_run()
        if "classifier" in names:  # an override of train#trainer alone is refused before the first stage
            self.classifier_run.check_trainer(trainer, dataset)
        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        for name in sorted(names, key=STAGES.index):
            logger.info("WeakMedSAM stage %r (%s)", name, self.task.name)
            start = time.perf_counter()
            if name == "classifier":
                result = self.classifier(trainer)
            else:
                result = (self.subclasses_stage if name == "subclasses" else getattr(self, name))()
            seconds = time.perf_counter() - start
            summary[name] = {**result, "seconds": round(seconds, 2)}
            if distributed.is_main_process():
                self.output_dir.mkdir(parents=True, exist_ok=True)
                write_text_atomic(summary_path, json.dumps(json_safe(summary), indent=1))
            logger.info("WeakMedSAM stage %r done in %.1f s", name, seconds)
        return summary
