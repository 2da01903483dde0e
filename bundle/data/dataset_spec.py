"""What a dataset's label values and image channels mean: :class:`DatasetSpec`, one per dataset module
(:mod:`bundle.data.datasets`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from monai.utils import look_up_option

__all__ = ["DatasetSpec"]


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
            raise ValueError(f"dataset {self.name!r}: organ {self.organ!r} is none of its regions "
                             f"{list(self.regions)}.")
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
