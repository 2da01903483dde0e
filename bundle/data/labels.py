"""Label sets, label names, segmentation regions and modality orders of the datasets the bundle reads: a view of the
dataset modules (:mod:`bundle.data.datasets`).

Every other module asks this one what a label value means, which values a label file may hold and in which order
the modalities of a multi-modal case are stacked (the BraTS order and file names: :mod:`bundle.data.datasets.brats`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType

from monai.utils import look_up_option

from bundle.data.dataset_spec import DatasetSpec
from bundle.data.datasets import MODULES
from bundle.data.datasets.brats import BRATS2023_MODALITY_NAMES, BRATS_CHANNEL_NAMES, BRATS_MODALITIES
from bundle.data.datasets.msd import msd_spec

__all__ = [
    "DatasetSpec",
    "DATASETS",
    "DATASET_NAMES",
    "BRATS_MODALITIES",
    "BRATS2023_MODALITY_NAMES",
    "BRATS_CHANNEL_NAMES",
    "channel_names",
    "get_dataset_spec",
    "msd_spec",
    "region_values",
]

DATASETS: Mapping[str, DatasetSpec] = MappingProxyType(
    {spec.name: spec for module in MODULES.values() for spec in module.specs})
"""Spec name -> :class:`DatasetSpec` of every dataset module (BraTS 2023+ as ``brats2023``)."""

DATASET_NAMES = tuple(MODULES)
"""Dataset names the layout finder and the command-line tools accept."""

# release aliases resolve to the spec whose label numbering that release uses
_ALIASES = {alias: name for module in MODULES.values() for alias, name in module.aliases.items()}


def get_dataset_spec(name: str, dataset_json: str | os.PathLike | Mapping | None = None) -> DatasetSpec:
    """The :class:`DatasetSpec` of a dataset.

    Args:
        name: ``"brats"`` (2019-2021 numbering), ``"brats2023"``, a release alias such as ``"brats2019"``,
            ``"lits"``, ``"abdomenct1k"`` or ``"msd"``.
        dataset_json: for ``"msd"`` only: the task's ``dataset.json`` (path or parsed dictionary).

    Raises:
        ValueError: unknown name (with the closest valid one), or ``"msd"`` without ``dataset_json``.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key == "msd":
        if dataset_json is None:
            raise ValueError("dataset 'msd': the label set comes from the task's dataset.json; pass dataset_json.")
        return msd_spec(dataset_json)
    key = _ALIASES.get(key, key)
    return look_up_option(key, {**DATASETS, "msd": None})


def _config_spec(dataset_name: str) -> DatasetSpec:
    try:
        return get_dataset_spec(dataset_name)
    except ValueError:
        known = ", ".join(DATASETS)
        raise ValueError(f"dataset_name {dataset_name!r} is none of the datasets the bundle knows ({known}): give "
                         "image_channel_names and regions yourself (a preset of your own, docs/presets.md)") from None


def channel_names(dataset_name: str) -> list[str]:
    """The configs' default ``image_channel_names`` of a dataset (``["FLAIR", "T1", "T1ce", "T2"]`` for BraTS)."""
    return list(_config_spec(dataset_name).image_channel_names)


def region_values(dataset_name: str) -> dict[str, list[int]]:
    """The configs' default ``regions`` of a dataset: region name -> label values, as plain lists."""
    return {name: list(values) for name, values in _config_spec(dataset_name).regions.items()}
