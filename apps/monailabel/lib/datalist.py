"""From MONAI Label's datastore to the bundle's training config: case ids, the datalist of the final labels, the
config overrides that retrain the served model.

The training config (``configs/train_samaug_seg.json``) reads a Decathlon datalist and checks every case against it
(label values in its ``labels`` table, channel count from ``modalities``), so the train task writes the datastore's
labelled images as such a datalist rather than overriding ``train#dataset#data`` with bare entries: the checks, the
label set and the case ids (hence the prior cache entries) then stay exactly as in any other training of the bundle.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bundle.data.case_ids import case_id_from_files
from bundle.folders import CONFIGS_DIR
from bundle.inference.models import segment_names, segmentation_overrides
from bundle.inference.names import safe_stem

__all__ = ["case_id_for", "datastore_datalist", "label_table", "preset_file", "training_overrides"]

def case_id_for(image: str | os.PathLike) -> str:
    """The case id of a datastore image (its file name without suffix, or a DICOM series folder's name).

    Inference and training both name a case this way, so the SAM priors that one computes are the other's cache hit.
    """
    return safe_stem(case_id_from_files(os.fspath(image)), fallback="case")


def label_table(regions: Mapping[str, Sequence[int]], dataset_name: str | None = None) -> dict[str, str]:
    """The datalist ``labels`` table of a model's regions: ``{"0": "background", "1": "liver", "2": "tumour"}``."""
    names = segment_names(regions, dataset_name)
    return {"0": "background", **{str(value): name for value, name in sorted(names.items())}}


def datastore_datalist(entries: Sequence[Mapping[str, str]], regions: Mapping[str, Sequence[int]],
                       channel_names: Sequence[str], dataset_name: str | None = None, val_split: float = 0.2,
                       seed: int = 0) -> dict:
    """A Decathlon datalist of the datastore's labelled images (absolute paths, one ``case_id`` each).

    Args:
        entries: MONAI Label's ``datastore.datalist()``: ``[{"image": path, "label": path}, ...]``.
        regions: the model's regions (``{"liver": [1, 2], "tumour": [2]}``): the label set.
        channel_names: the model's image channels (``modalities``).
        dataset_name: the dataset, for its label names.
        val_split: fraction of the cases held out for validation, at least one when there are two or more; with 0
            (or a single labelled case) the training cases are the validation cases too.
        seed: seed of the shuffle that picks the validation cases.

    Raises:
        ValueError: no labelled image, or ``val_split`` outside ``[0, 1)``.
    """
    if not entries:
        raise ValueError("the datastore holds no final label yet: save at least one label before training")
    val_split = float(val_split)
    if not 0.0 <= val_split < 1.0:
        raise ValueError(f"val_split must be in [0, 1), got {val_split}")
    cases = sorted(({"case_id": case_id_for(e["image"]), "image": os.fspath(e["image"]),
                     "label": os.fspath(e["label"])} for e in entries), key=lambda c: c["case_id"])
    order = list(range(len(cases)))
    random.Random(seed).shuffle(order)
    n_val = 0 if len(cases) == 1 or not val_split else min(len(cases) - 1, max(1, round(len(cases) * val_split)))
    val = sorted(order[:n_val])
    training = [cases[i] for i in sorted(order[n_val:])]
    validation = [cases[i] for i in val] if val else list(training)
    return {
        "name": "MONAI Label datastore",
        "labels": label_table(regions, dataset_name),
        "modalities": list(channel_names),
        "training": training,
        "validation": validation,
    }


def preset_file(preset: str | None, card: Mapping[str, Any] | None) -> str | None:
    """The preset config to merge after the training config: ``preset`` (a name of ``configs/presets`` or a JSON
    file), else the preset named after the card's dataset when there is one, else none.

    Raises:
        FileNotFoundError: ``preset`` names neither.
    """
    if preset:
        path = Path(preset) if preset.endswith(".json") else CONFIGS_DIR / "presets" / f"{preset}.json"
        if not path.is_file():
            known = sorted(p.stem for p in (CONFIGS_DIR / "presets").glob("*.json"))
            raise FileNotFoundError(f"preset {preset!r}: no file {path} (presets: {known})")
        return str(path)
    dataset = (card or {}).get("dataset_name")
    path = CONFIGS_DIR / "presets" / f"{dataset}.json"
    return str(path) if dataset and path.is_file() else None


def training_overrides(card: Mapping[str, Any] | None, *, datalist: str, model_dir: str, run_dir: str,
                       prior_cache: str, max_epochs: int, val_interval: int, device: Any) -> dict:
    """Overrides of ``configs/sam_priors.json`` + ``configs/train_samaug_seg.json`` (+ preset) that train the model of
    ``card`` again (same channels, regions, prior mode, network, intensity and SAM prior configuration) on
    ``datalist``, writing ``model.pt`` + ``model_card.json`` into ``model_dir``.

    Without a card (no model yet) only the data, folders, epochs and device are set: the preset decides the rest.
    ``run_dir`` must be new for each training (the config resumes from ``<output_dir>/checkpoint_last.pt``).
    """
    overrides: dict[str, Any] = {
        "bundle_root": str(CONFIGS_DIR.parent),
        "datalist": datalist,
        "dataset_dir": os.path.dirname(datalist),
        "ckpt_dir": model_dir,
        "output_dir": run_dir,
        "prior_cache_dir": prior_cache,
        "max_epochs": int(max_epochs),
        "val_interval": int(val_interval),
        "device": device,
        "amp": getattr(device, "type", str(device)) == "cuda",
    }
    if card:
        overrides.update(segmentation_overrides(card))
        if card.get("dataset_name"):
            overrides["dataset_name"] = card["dataset_name"]
    return overrides
