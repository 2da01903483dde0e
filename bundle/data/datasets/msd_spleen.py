"""MSD Task09 Spleen: spleen CT in the Medical Segmentation Decathlon layout (the worked example of a new dataset in
``docs/design.md``: this module and ``configs/presets/msd_spleen.json`` are all it took)."""

from __future__ import annotations

from bundle.data.classification_task import binary_task
from bundle.data.dataset_spec import DatasetSpec
from bundle.data.dataset_module import DatasetModule
from bundle.data.datasets.msd import LAYOUTS, scan_msd
from bundle.data.layout_scan import DatasetScan

SPLEEN = DatasetSpec(
    name="msd_spleen",
    labels={0: "background", 1: "spleen"},
    modalities=("CT",),
    regions={"spleen": (1,)},
    description="MSD Task09 Spleen CT",
    weak_task="msd_spleen_spleen",
    organ="spleen",
)


def scan(root: str) -> DatasetScan:
    """The cases of a Task09_Spleen folder (its ``dataset.json`` must have the spleen's labels)."""
    return scan_msd(root, "msd_spleen", SPLEEN)


DATASET = DatasetModule(
    name="msd_spleen",
    specs=(SPLEEN,),
    layouts=LAYOUTS,
    scan=scan,
    tasks=(binary_task("msd_spleen_spleen", "msd_spleen", "slice", (1,), "spleen", "MSD Spleen: spleen in the slice"),),
    phantom={
        "anatomy": "ct",
        "layout": "msd",
        "labels": {"spleen": 1},
        "case_prefix": "spleen",
        "dataset_json": {"name": "Spleen", "description": "Spleen segmentation (phantom)", "modality": {"0": "CT"},
                         "labels": {"0": "background", "1": "spleen"}},
    },
)
