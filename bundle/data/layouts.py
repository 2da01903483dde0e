"""Finding the cases of a dataset folder, by the scanner of the dataset's module (:mod:`bundle.data.datasets`): BraTS
2019 / 2020-2021 / 2023+, LiTS, AbdomenCT-1K, MSD (any task, or one with a module of its own such as MSD Spleen).

Files are paired by the case id (or case number) parsed from their names, never by listing order: folder listings
come back in arbitrary order, and sorting names as strings puts ``volume-10`` before ``volume-2``. Every
inconsistency (an image without a label, a label without an image, a missing BraTS modality, a duplicate case id)
is collected as a human-readable problem naming the files, so that one run reports all of them at once.

A case is ``{"case_id": str, "image": str | list[str], "label": str | None}`` with absolute paths; ``image`` is a
list in :data:`bundle.data.labels.BRATS_MODALITIES` order for BraTS and a single path otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from types import MappingProxyType

from monai.utils import look_up_option

from bundle.data.datasets import MODULES
from bundle.data.labels import DATASET_NAMES
from bundle.data.layout_scan import DatasetLayoutError, DatasetScan, natural_key

__all__ = ["DatasetLayoutError", "DatasetScan", "LAYOUTS", "scan_dataset", "discover_cases", "natural_key"]

LAYOUTS: Mapping[str, Mapping[str, str]] = MappingProxyType({name: m.layouts for name, m in MODULES.items()})
"""Dataset -> layout name -> the file pattern looked for (quoted in error messages)."""


def discover_cases(dataset: str, root: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Find the cases of a dataset folder.

    Args:
        dataset: a dataset module's name (:data:`~bundle.data.labels.DATASET_NAMES`: ``brats``, ``lits``,
            ``abdomenct1k``, ``msd``, ``msd_spleen``, ...).
        root: the dataset root folder.

    Returns:
        ``(cases, problems)``: complete cases ``{"case_id", "image", "label"}`` with absolute paths, and one
        human-readable string per problem found (each names the files or the case concerned).

    Raises:
        DatasetLayoutError: the root does not exist, or no case of any known layout was found under it.
    """
    scan = scan_dataset(dataset, root)
    return scan.cases, scan.problems


def scan_dataset(dataset: str, root: str | os.PathLike) -> DatasetScan:
    """Like :func:`discover_cases`, also returning the detected layout and the label spec that applies to it."""
    dataset = look_up_option(dataset.strip().lower() if isinstance(dataset, str) else dataset, DATASET_NAMES)
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise DatasetLayoutError(f"{root}: dataset root does not exist or is not a folder.")
    scan = MODULES[dataset].scan(root)
    if not scan.cases and not scan.problems:
        looked_for = "; ".join(f"{name}: {pattern}" for name, pattern in LAYOUTS[dataset].items())
        raise DatasetLayoutError(f"{root}: no {dataset} cases found. Layouts looked for: {looked_for}.")
    scan.cases.sort(key=lambda c: natural_key(c["case_id"]))
    return scan
