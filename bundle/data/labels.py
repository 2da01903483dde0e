"""Label sets, label names, segmentation regions and modality orders of the datasets the bundle reads.

Every other module asks this one what a label value means, which values a label file may hold and in which order
the modalities of a multi-modal case are stacked. The BraTS modality order is fixed to ``flair, t1, t1ce, t2`` for
every release; the 2023+ file names ``t2f, t1n, t1c, t2w`` map onto that same order, so a network trained on one
release reads the other without re-ordering channels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from monai.utils import look_up_option

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

BRATS_MODALITIES = ("flair", "t1", "t1ce", "t2")
"""Channel order of every BraTS case in this bundle."""

BRATS_CHANNEL_NAMES = ("FLAIR", "T1", "T1ce", "T2")
"""The names of those channels in the workflows' configs and model cards."""

BRATS2023_MODALITY_NAMES = MappingProxyType({"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2"})
"""BraTS 2023+ file suffix -> the modality (and so the channel) it stands for."""


@dataclass(frozen=True)
class DatasetSpec:
    """What the label values and image channels of one dataset mean.

    Args:
        name: dataset key (``"brats"``, ``"brats2023"``, ``"lits"``, ``"abdomenct1k"``, ``"msd"``).
        labels: label value -> label name, background (0) included.
        modalities: channel names in the order images are stacked (``("CT",)`` for single-channel CT).
        regions: evaluation region name -> the label values it unites (e.g. BraTS whole tumour = ``(1, 2, 4)``).
        file_modalities: file-name token -> modality, for releases whose file names differ from ``modalities``.
        description: one line for humans.
        channel_names: the image channel names of the workflows and model cards (``FLAIR``, ``T1`` ...), when they
            are not ``modalities`` themselves.
        weak_task: the slice task WeakMedSAM trains on by default (a name of :data:`bundle.data.tasks.TASKS`).
        organ: the region SAM-Mix segments by default (a key of ``regions``).
    """

    name: str
    labels: Mapping[int, str]
    modalities: tuple[str, ...]
    regions: Mapping[str, tuple[int, ...]]
    file_modalities: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    channel_names: tuple[str, ...] = ()
    weak_task: str = ""
    organ: str = ""

    def __post_init__(self):
        if 0 not in self.labels:
            raise ValueError(f"dataset {self.name!r}: the label set must contain background 0: {dict(self.labels)}.")
        for region, values in self.regions.items():
            unknown = sorted(set(values) - set(self.labels))
            if unknown:
                raise ValueError(f"dataset {self.name!r}: region {region!r} uses unknown label values {unknown}.")
        if self.organ and self.organ not in self.regions:
            raise ValueError(f"dataset {self.name!r}: organ {self.organ!r} is none of its regions {list(self.regions)}.")
        if self.channel_names and len(self.channel_names) != len(self.modalities):
            raise ValueError(f"dataset {self.name!r}: {len(self.channel_names)} channel names for "
                             f"{len(self.modalities)} modalities.")

    @property
    def label_values(self) -> tuple[int, ...]:
        """All label values, background included, ascending."""
        return tuple(sorted(self.labels))

    @property
    def foreground_values(self) -> tuple[int, ...]:
        """Label values other than background, ascending."""
        return tuple(v for v in self.label_values if v != 0)

    def labels_json(self) -> dict[str, str]:
        """``{"0": "background", ...}``: the label table as Decathlon-style JSON keys."""
        return {str(v): self.labels[v] for v in self.label_values}

    @property
    def image_channel_names(self) -> tuple[str, ...]:
        """The image channel names of the workflows (``image_channel_names`` of the configs and model cards)."""
        return self.channel_names or self.modalities

    def region(self, name: str) -> tuple[int, ...]:
        """Label values of one region; unknown names raise with the closest valid one."""
        return look_up_option(name, self.regions)


_BRATS_NAMES_2021 = {
    0: "background",
    1: "necrotic and non-enhancing tumour core (NCR/NET)",
    2: "peritumoral edema (ED)",
    4: "enhancing tumour (ET)",
}
_BRATS_NAMES_2023 = {
    0: "background",
    1: "necrotic tumour core (NCR)",
    2: "peritumoral edema / surrounding non-enhancing FLAIR hyperintensity (ED/SNFH)",
    3: "enhancing tumour (ET)",
}

DATASETS: Mapping[str, DatasetSpec] = MappingProxyType(
    {
        "brats": DatasetSpec(
            name="brats",
            labels=_BRATS_NAMES_2021,
            modalities=BRATS_MODALITIES,
            regions={"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
            file_modalities={m: m for m in BRATS_MODALITIES},
            description="BraTS 2019-2021 brain tumour MRI (4 modalities, ET = 4)",
            channel_names=BRATS_CHANNEL_NAMES,
            weak_task="brats_wt",
        ),
        "brats2023": DatasetSpec(
            name="brats2023",
            labels=_BRATS_NAMES_2023,
            modalities=BRATS_MODALITIES,
            regions={"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
            file_modalities=dict(BRATS2023_MODALITY_NAMES),
            description="BraTS 2023+ brain tumour MRI (t2f/t1n/t1c/t2w files, ET = 3)",
            channel_names=BRATS_CHANNEL_NAMES,
        ),
        "lits": DatasetSpec(
            name="lits",
            labels={0: "background", 1: "liver", 2: "tumour"},
            modalities=("CT",),
            # the tumour lies inside the liver, so "liver" is the organ with its lesions (docs/methods.md §4, SAM-Mix)
            regions={"liver": (1, 2), "tumour": (2,)},
            description="LiTS liver and liver tumour CT",
            weak_task="lits_liver",
            organ="liver",
        ),
        "abdomenct1k": DatasetSpec(
            name="abdomenct1k",
            labels={0: "background", 1: "liver", 2: "kidney", 3: "spleen", 4: "pancreas"},
            modalities=("CT",),
            regions={"liver": (1,), "kidney": (2,), "spleen": (3,), "pancreas": (4,)},
            description="AbdomenCT-1K abdominal organ CT",
            weak_task="abdomenct_organs",
            organ="liver",
        ),
    }
)

DATASET_NAMES = ("brats", "lits", "abdomenct1k", "msd")
"""Dataset names the layout finder and the command-line tools accept."""

# release aliases resolve to the spec whose label numbering that release uses
_ALIASES = {"brats2019": "brats", "brats2020": "brats", "brats2021": "brats", "brats2024": "brats2023"}


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


def _read_json(dataset_json: str | os.PathLike | Mapping) -> tuple[dict, str]:
    if isinstance(dataset_json, Mapping):
        return dict(dataset_json), "dataset.json"
    path = os.fspath(dataset_json)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), path
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the MSD dataset description ({err}).") from err


def msd_spec(dataset_json: str | os.PathLike | Mapping) -> DatasetSpec:
    """Build the spec of a Medical Segmentation Decathlon task from its ``dataset.json``.

    Accepts the MSD form (``"labels": {"0": "background", "1": "liver"}``, ``"modality": {"0": "CT"}``) and the
    nnU-Net v2 form (``"labels": {"background": 0, "liver": 1}``, ``"channel_names": {"0": "CT"}``).

    Raises:
        ValueError: the file cannot be read, or has no usable ``labels`` table; the message names the file.
    """
    info, where = _read_json(dataset_json)
    raw = info.get("labels")
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"{where}: no 'labels' table (expected e.g. {{\"0\": \"background\", \"1\": \"liver\"}}).")
    try:
        if all(str(k).strip().lstrip("-").isdigit() for k in raw):
            labels = {int(k): str(v) for k, v in raw.items()}
        else:  # nnU-Net v2: name -> value
            labels = {int(v): str(k) for k, v in raw.items()}
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: 'labels' must map integer values to names, got {raw}.") from err
    channels = info.get("modality", info.get("channel_names", {"0": "image"}))
    if isinstance(channels, Mapping):
        modalities = tuple(str(channels[k]) for k in sorted(channels, key=lambda k: int(k)))
    else:
        modalities = (str(channels),)
    name = str(info.get("name", "msd"))
    regions = {labels[v]: (v,) for v in sorted(labels) if v != 0}
    return DatasetSpec(
        name="msd", labels=labels, modalities=modalities, regions=regions, description=f"MSD task {name}"
    )
