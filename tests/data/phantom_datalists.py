"""Helpers of the task and slice-dataset tests: tiny phantom datasets in real layouts with their datalists."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bundle.data.datalist import build_datalist, write_datalist
from bundle.testing.phantom_writers import make_phantoms

#: phantom layout -> (dataset name of build_datalist, number of cases)
TASK_PHANTOMS = {
    "brats2019": ("brats", 3),
    "brats2021": ("brats", 2),
    "lits": ("lits", 4),
    "abdomenct1k": ("abdomenct1k", 3),
}


@dataclass(frozen=True)
class PhantomDatalist:
    """A phantom dataset on disk and its datalist as read back from the JSON file (training holds every case)."""

    root: Path
    path: Path
    datalist: dict

    @property
    def entries(self) -> list[dict]:
        return self.datalist["training"]


def ras_label_volume(path: str | Path) -> np.ndarray:
    """A label file as ``[X, Y, Z]`` int64 in the closest RAS orientation, read with nibabel alone (not MONAI)."""
    return np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj).astype(np.int64)


def make_phantom_datalist(layout: str, root: Path) -> PhantomDatalist:
    """Write size-24 phantoms of ``layout`` under ``root / "data"`` and their datalist (every case in training)."""
    dataset, cases = TASK_PHANTOMS[layout]
    make_phantoms(layout, root / "data", cases=cases, size=24, seed=0)
    datalist = build_datalist(dataset, root / "data", 0.0, 0.0, progress=False)
    path = Path(write_datalist(datalist, root / "datalist.json"))
    return PhantomDatalist(root / "data", path, json.loads(path.read_text()))
