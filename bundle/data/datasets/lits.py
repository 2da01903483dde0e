"""LiTS: liver and liver tumour CT (``volume-N`` / ``segmentation-N`` files anywhere under the root)."""

from __future__ import annotations

import re

from bundle.data.classification_task import binary_task
from bundle.data.dataset_spec import DatasetSpec
from bundle.data.dataset_module import DatasetModule
from bundle.data.layout_scan import DatasetScan, scan_by_number

LITS = DatasetSpec(
    name="lits",
    labels={0: "background", 1: "liver", 2: "tumour"},
    modalities=("CT",),
    # the tumour lies inside the liver, so "liver" is the organ with its lesions (docs/methods.md §4, SAM-Mix)
    regions={"liver": (1, 2), "tumour": (2,)},
    description="LiTS liver and liver tumour CT",
    weak_task="lits_liver",
    organ="liver",
)
LITS_VOLUME = re.compile(r"^volume-(\d+)\.nii(?:\.gz)?$", re.IGNORECASE)
LITS_SEGMENTATION = re.compile(r"^segmentation-(\d+)\.nii(?:\.gz)?$", re.IGNORECASE)


def scan(root: str) -> DatasetScan:
    """The cases of a LiTS folder, paired by number wherever the files sit."""
    return scan_by_number(root, "lits", LITS, LITS_VOLUME, LITS_SEGMENTATION,
                          "volume-N.nii[.gz] or segmentation-N.nii[.gz]", case_id=lambda n: f"lits_{n:03d}",
                          image_name=lambda n: f"volume-{n}.nii[.gz]",
                          label_name=lambda n: f"segmentation-{n}.nii[.gz]")


DATASET = DatasetModule(
    name="lits",
    specs=(LITS,),
    layouts={"lits": "[any/sub/folder/]volume-N.nii[.gz] + [any/sub/folder/]segmentation-N.nii[.gz]"},
    scan=scan,
    tasks=(
        binary_task("lits_tumour", "lits", "slice", (2,), "tumour", "LiTS: liver tumour (2) in the slice"),
        binary_task("lits_liver", "lits", "slice", (1, 2), "liver",
                    "LiTS: liver, tumour included (1 or 2), in the slice"),
        binary_task("lits_tumour_volume", "lits", "volume", (2,), "tumour", "LiTS: liver tumour (2) in the volume"),
    ),
    order=1,
)
