"""A trained model of the bundle, rebuilt from its folder for batch inference: read the card, build the pipeline of the
task's own inference config, run it on one loaded volume.

The card (:mod:`bundle.workflows.common.model_card`) says which task the weights serve; the pipeline comes from that
task's config, so batch inference preprocesses, infers and restores exactly as the single-task commands do:

- ``segmentation`` (SAMAug, WeakMedSAM's segmentation stage): ``configs/inference.json``, which builds everything
  from the card (channels, regions, prior mode, spacing, network, intensity, SAM prior settings); its
  ``preprocessing`` after the loader, ``inferer`` and ``postprocessing`` (sigmoid, inversion to the input grid,
  regions -> label map) without the writer;
- ``classification`` (SAMAug-C): ``configs/inference_cls.json``; class probabilities per slice or per volume,
  fused as in training;
- ``sam_mix``: ``configs/inference_sam_mix.json``'s ``preprocessing`` after the file reader and its ``predictor``
  (:class:`~bundle.workflows.semisup.predictor.SamMixPredictor`: classifier gate, CAM box, LoRA-tuned SAM).

A model trained with SAM priors always runs with them, computed with the SAM configuration of its training
(:meth:`~bundle.priors.settings.PriorSettings.from_card`), hence read from the same prior-cache partition when the
cache holds the case.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImaged, SaveImaged

from bundle.data.labels import get_dataset_spec
from bundle.data.writers import to_file_grid
from bundle.errors import InputError
from bundle.folders import CONFIGS_DIR
from bundle.networks.fusion import fuse_probabilities
from bundle.priors.cache import CachedSamPriord
from bundle.priors.settings import PriorSettings
from bundle.workflows.common.checkpoints import load_network_weights
from bundle.workflows.common.model_card import card_kind, card_path, read_card, verify_weights
from bundle.workflows.segmentation.workflow import network_config
from bundle.workflows.semisup.predictor import SamMixPredictor

__all__ = ["BatchModel", "load_model", "prior_cache_for", "segment_names", "segmentation_overrides"]


def segmentation_overrides(card: Mapping[str, Any]) -> dict:
    """The overrides of ``configs/sam_priors.json`` + ``configs/train_samaug_seg.json`` that train a segmentation
    card's model again (MONAI Label's trainer): the card's ``config`` ids, its SAM prior settings (the ``priors``
    block, so the same signature and cache partition), the network and the intensity transform.

    ``card`` must have been read with :func:`~bundle.workflows.common.model_card.read_card`, which checks it against
    :mod:`bundle.workflows.common.card_schema`: every value here is then a plain number, list or allow-listed name
    (no ``$`` expression, ``@`` reference or ``_target_`` reaches the parser from the card); the only classes built
    are the allow-listed ``UNet``, intensity transform and :class:`~bundle.priors.settings.PriorSettings`."""
    intensity = card["intensity"]
    return {**card["config"], "priors": PriorSettings.from_card(card["prior"]).to_config(),
            "network_def": network_config(card["network"]),
            "intensity": {"_target_": intensity["name"], "keys": intensity["keys"], **intensity["args"]}}


def segment_names(regions: Mapping[str, Sequence[int]], dataset_name: str | None = None) -> dict[int, str]:
    """Name of each label value of a label map: the dataset's own label name where the dataset is known, otherwise
    the smallest region holding the value (``{"liver": [1, 2], "tumour": [2]}`` -> ``{1: "liver", 2: "tumour"}``)."""
    labels: Mapping[int, str] = {}
    if dataset_name:
        try:
            labels = get_dataset_spec(dataset_name).labels
        except (KeyError, ValueError):
            labels = {}
    names = {}
    for value in sorted({int(v) for vs in regions.values() for v in vs}):
        if value in labels:
            names[value] = labels[value]
        else:
            holding = [(len(vs), name) for name, vs in regions.items() if value in vs]
            names[value] = min(holding)[1]
    return names


def _parser(files: Sequence[str], overrides: Mapping[str, Any]) -> ConfigParser:
    missing = [f for f in files if not (CONFIGS_DIR / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{CONFIGS_DIR}: the bundle's configs {missing} are missing (a bundle installed "
                                "without its configs folder?)")
    parser = ConfigParser()
    parser.read_config([str(CONFIGS_DIR / f) for f in files])
    parser.update(dict(overrides))
    return parser


def _without_loader(compose: Compose) -> Compose:
    """The config's preprocessing after its file loader: batch inference loads and checks inputs itself.

    Raises:
        TypeError: the config's first transform is not a loader (the config changed; this must follow it).
    """
    first = compose.transforms[0] if compose.transforms else None
    if not isinstance(first, LoadImaged):
        raise TypeError(f"the inference config's transforms should start with a LoadImaged loader, not {first!r}")
    return Compose(compose.transforms[1:])


class BatchModel:
    """What the runner needs of a trained model.

    Attributes:
        kind: the card's kind.
        model_dir: the model folder.
        channel_names: image channels the model takes, in order.
        segments: label value -> name of the label map it writes (segmentation kinds), empty otherwise.
        class_names: class names (classification), empty otherwise.
        description: one line for logs and the summary.
        modality: the card's modality (``CT``, ``MR``, ``other``), checked against each input
            (:mod:`bundle.inference.modality`) unless ``allow_modality_mismatch``.
    """

    kind: str = ""
    uses_priors: bool = False
    allow_modality_mismatch: bool = False

    def __init__(self, model_dir: Path, card: Mapping[str, Any], device: torch.device) -> None:
        self.model_dir, self.card, self.device = model_dir, dict(card), device
        self.channel_names: list[str] = []
        self.segments: dict[int, str] = {}
        self.class_names: list[str] = []
        self.description = ""
        self.modality: str | None = card.get("modality")

    def predict(self, image: MetaTensor, case_id: str, progress=None) -> Any:
        """The prediction for one loaded volume (``[C, I, J, K]``, its file's grid); ``progress`` is called with the
        number of slices whose SAM priors were just computed (or read from the cache)."""
        raise NotImplementedError


class SegmentationModel(BatchModel):
    """SAMAug / WeakMedSAM segmentation network: returns the label map ``[I, J, K]`` (uint8) in the input's grid."""

    kind = "segmentation"

    def __init__(self, model_dir: Path, card: Mapping[str, Any], device: torch.device,
                 prior_cache_dir: str) -> None:
        super().__init__(model_dir, card, device)
        config = dict(card["config"])
        # the card read and checked once, handed over as plain values (inference.json would read it again)
        overrides = {"model_dir": str(model_dir), "card": dict(card), "device": device, "amp": device.type == "cuda",
                     "prior_cache_dir": prior_cache_dir}
        parser = _parser(["inference.json"], overrides)
        self.uses_priors = bool(parser.get_parsed_content("use_priors"))
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.forward = _without_loader(self.preprocessing)
        self.network = parser.get_parsed_content("network")
        load_network_weights(self.network, model_dir / "model.pt", parser.get_parsed_content("input_channel_names"),
                             config.get("prior_mode"), map_location=device)
        self.network.eval()
        self.inferer = parser.get_parsed_content("inferer")
        post = parser.get_parsed_content("postprocessing")
        self.postprocessing = Compose([t for t in post.transforms if not isinstance(t, SaveImaged)])
        self.channel_names = list(config["image_channel_names"])
        self.segments = segment_names(config["regions"], card.get("dataset_name"))
        self.description = (f"segmentation ({card.get('method', 'samaug')}, regions {list(config['regions'])}, "
                            f"prior_mode {config['prior_mode']}"
                            + (f", SAM priors cached in {prior_cache_dir})" if self.uses_priors else ")"))

    def predict(self, image: MetaTensor, case_id: str, progress=None) -> np.ndarray:
        data: dict = {"image": image, "case_id": case_id}
        for transform in self.forward.transforms:  # as Compose does, with the prior's slice progress shown
            if isinstance(transform, CachedSamPriord) and progress is not None:
                data = dict(data)
                for key in transform.key_iterator(data):
                    data[f"{key}{transform.output_postfix}"] = transform.prior_for(data, key, progress=progress)
            else:
                data = transform(data)
        batch = data["image"].unsqueeze(0).to(self.device)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
            pred = self.inferer(batch, self.network)
        data["pred"] = torch.as_tensor(pred[0]).float().cpu()  # Invertd takes the operations of "image"
        label = self.postprocessing(data)["pred"]
        return np.asarray(label.detach().cpu().numpy()[0], np.uint8)


class ClassificationModel(BatchModel):
    """SAMAug-C classifier: returns one row per slice (slice task) or per volume with the fused probabilities."""

    kind = "classification"

    def __init__(self, model_dir: Path, card: Mapping[str, Any], device: torch.device,
                 prior_cache_dir: str) -> None:
        super().__init__(model_dir, card, device)
        overrides = {"model_dir": str(model_dir), "device": device, "amp": device.type == "cuda",
                     "prior_cache_dir": prior_cache_dir}
        parser = _parser(["inference_cls.json"], overrides)
        self.uses_priors = bool(card["use_priors"])
        self.level = parser.get_parsed_content("level")
        self.class_names = list(parser.get_parsed_content("class_names"))
        self.multi_label = bool(parser.get_parsed_content("multi_label"))
        self.keys = parser.get_parsed_content("volume_keys")
        self.volume_transform = _without_loader(parser.get_parsed_content("volume_transforms"))
        self.item_transform = parser.get_parsed_content("item_transforms")
        self.batch_size = int(parser.get_parsed_content("batch_size"))
        self.network = parser.get_parsed_content("network")
        load_network_weights(self.network, model_dir / "model.pt", list(card["image_channel_names"]),
                             map_location=device)
        self.network.eval()
        self.fusion_weight = float(card["fusion_weight"])
        self.channel_names = list(card["image_channel_names"])
        self.description = (f"classification ({card['task']}, {self.level} level, classes {self.class_names}"
                            + (f", SAM priors cached in {prior_cache_dir})" if self.uses_priors else ")"))

    def predict(self, image: MetaTensor, case_id: str, progress=None) -> list[dict]:
        from torch.utils.data import DataLoader

        from bundle.workflows.classification.workflow import InferenceData

        data = InferenceData([{"image": image, "case_id": case_id}], self.level, self.volume_transform,
                             self.item_transform, self.keys)
        rows = []
        for batch in DataLoader(data, batch_size=self.batch_size, shuffle=False, num_workers=0):
            x = torch.as_tensor(batch["cls_input"]).to(self.device)
            with torch.no_grad(), torch.autocast(self.device.type, enabled=self.device.type == "cuda"):
                logits = self.network(x)
            probs = fuse_probabilities(logits.float().cpu(), self.fusion_weight, self.multi_label)
            indices = batch.get("slice_index")
            for i, p in enumerate(probs.tolist()):
                rows.append({"slice_index": None if indices is None else int(indices[i]),
                             **{name: round(float(v), 6) for name, v in zip(self.class_names, p)}})
        return rows


class SamMixModel(BatchModel):
    """SAM-Mix model (or its U-Net / zero-shot baselines): returns the organ mask ``[I, J, K]`` in the input's grid."""

    kind = "sam_mix"

    def __init__(self, model_dir: Path, card: Mapping[str, Any], device: torch.device,
                 sam_checkpoint: str | None = None) -> None:
        super().__init__(model_dir, card, device)
        # the config's own predictor, built here so that its refusals (moved checkpoint, foreign adapter) are raised
        # as they are, not wrapped by the config parser
        self.predictor = SamMixPredictor(model_dir, device, sam_checkpoint=sam_checkpoint)
        parser = _parser(["inference_sam_mix.json"], {"model_dir": str(model_dir), "device": device,
                                                      "predictor": self.predictor})
        self.loader = _without_loader(parser.get_parsed_content("preprocessing"))
        self.channel_names = list(card["image_channel_names"])
        self.segments = {1: str(card["organ"])}
        self.description = f"SAM-Mix ({card['method']}, {card['organ']}, {card['num_labelled']} labelled slices)"

    def predict(self, image: MetaTensor, case_id: str, progress=None) -> np.ndarray:
        oriented = self.loader({"image": image})["image"]
        mask = self.predictor.predict_volume(oriented)["fair"]["mask"][0]
        file_affine = np.asarray(image.affine, np.float64)
        return to_file_grid(np.asarray(mask), np.asarray(oriented.affine, np.float64), file_affine).astype(np.uint8)


def prior_cache_for(card: Mapping[str, Any], requested: str | os.PathLike | None,
                    fallback: str | os.PathLike) -> str:
    """The prior cache of a run: ``requested``; else the cache the model was trained with (the card's
    ``prior_cache_dir``) when it exists and is writable here; else ``fallback``."""
    if requested:
        return os.fspath(requested)
    trained = (card.get("prior") or {}).get("prior_cache_dir")
    if trained and os.path.isdir(trained) and os.access(trained, os.W_OK | os.X_OK):
        return os.fspath(trained)
    return os.fspath(fallback)


def load_model(model_dir: str | os.PathLike, device: Any = "cpu", prior_cache_dir: str | None = None,
               sam_checkpoint: str | None = None, fallback_cache_dir: str | os.PathLike = "prior_cache") -> BatchModel:
    """The trained model in ``model_dir`` (``model.pt`` + ``model_card.json``), ready to predict.

    The SAM prior cache is ``prior_cache_dir``, or the one of training, or ``fallback_cache_dir``
    (:func:`prior_cache_for`).

    Raises:
        MissingInputError: no folder, no weights or no card (says which training writes one).
        InputError: a card of unknown kind or lacking fields.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise InputError(folder, "is not a model folder (the folder a training wrote model.pt and model_card.json to)")
    # the card is checked (schema, own digest) before any value is used; its binding to model.pt after the weights
    # were loaded, so that a truncated or mismatched model.pt is reported by the loader's more precise message
    card = read_card(folder, (), "any training config of the bundle", check_weights=False)
    kind = card_kind(card, card_path(folder))
    device = torch.device(device)
    prior_cache_dir = prior_cache_for(card, prior_cache_dir, fallback_cache_dir)
    if kind == "segmentation":
        model: BatchModel = SegmentationModel(folder, card, device, prior_cache_dir)
    elif kind == "classification":
        model = ClassificationModel(folder, card, device, prior_cache_dir)
    else:
        model = SamMixModel(folder, card, device, sam_checkpoint)
    verify_weights(card, card_path(folder))
    return model
