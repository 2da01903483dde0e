"""AbdomenCT-1K: abdominal organ CT (liver, kidney, spleen, pancreas)."""

from __future__ import annotations

import re

from bundle.data.classification_task import ClassificationTask
from bundle.data.dataset_spec import DatasetSpec
from bundle.data.dataset_module import DatasetModule
from bundle.data.layout_scan import DatasetScan, scan_by_number

ABDOMENCT1K = DatasetSpec(
    name="abdomenct1k",
    labels={0: "background", 1: "liver", 2: "kidney", 3: "spleen", 4: "pancreas"},
    modalities=("CT",),
    regions={"liver": (1,), "kidney": (2,), "spleen": (3,), "pancreas": (4,)},
    description="AbdomenCT-1K abdominal organ CT",
    weak_task="abdomenct_organs",
    organ="liver",
)
ACT1K_IMAGE = re.compile(r"^Case_(\d+)_0000\.nii(?:\.gz)?$", re.IGNORECASE)
ACT1K_MASK = re.compile(r"^Case_(\d+)\.nii(?:\.gz)?$", re.IGNORECASE)


def scan(root: str) -> DatasetScan:
    """The cases of an AbdomenCT-1K folder.

    Masks are paired by number wherever they sit: ``Mask/`` under the root, a sibling ``Mask/`` folder of an image
    folder, or next to the images (the released archives have been repacked in all three ways).
    """
    return scan_by_number(root, "abdomenct1k", ABDOMENCT1K, ACT1K_IMAGE, ACT1K_MASK,
                          "Case_XXXXX_0000.nii[.gz] or Case_XXXXX.nii[.gz]", case_id=lambda n: f"Case_{n:05d}",
                          image_name=lambda n: f"Case_{n:05d}_0000.nii[.gz]",
                          label_name=lambda n: f"Mask/Case_{n:05d}.nii[.gz]")


DATASET = DatasetModule(
    name="abdomenct1k",
    specs=(ABDOMENCT1K,),
    layouts={"abdomenct1k": "Case_XXXXX_0000.nii[.gz] + Mask/Case_XXXXX.nii[.gz] (or next to the image)"},
    scan=scan,
    tasks=(
        ClassificationTask("abdomenct_organs", "abdomenct1k", "slice", ("liver", "kidney", "spleen", "pancreas"),
                           True, ((1,), (2,), (3,), (4,)), description="AbdomenCT-1K: each organ in the slice"),
    ),
    order=2,
)
