"""Slice items and targets of the WeakMedSAM classifier: slice labels in, parent and child targets out.

Everything here reads the datalist's ``slice_labels`` summaries (written by ``scripts/prepare_datalist.py``) and the
cached SAM features; no label voxel is read. The classifier's target of a slice is one float vector
``[parent (C) | child (C * K + 1)]`` under ``"target"``, the form :class:`bundle.networks.parent_child.ParentChildLoss`
takes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bundle.data.slice_dataset import slice_items
from bundle.data.tasks import ClassificationTask, get_task

__all__ = ["TARGET_KEY", "class_groups", "parent_labels", "weak_slice_items", "with_targets"]

TARGET_KEY = "target"
"""Key of the classifier's ``[C + C * K + 1]`` target vector in slice items and samples."""


def class_groups(task: str | ClassificationTask) -> dict[str, tuple[int, ...]]:
    """``{class name: label values}`` of the classes the weak pipeline segments (the positive classes of the task).

    A binary task has one class (its positive name, e.g. ``tumour``); a multi-label task one per class.
    """
    task = get_task(task)
    names = task.class_names[1:] if not task.multi_label else task.class_names
    return {name: tuple(int(v) for v in values) for name, values in zip(names, task.values)}


def parent_labels(items: Sequence[Mapping], task: str | ClassificationTask) -> np.ndarray:
    """``[N, C]`` float32 0/1 parent labels of slice items (``C = 1`` for a binary task)."""
    task = get_task(task)
    if not items:
        return np.zeros((0, len(class_groups(task))), np.float32)
    labels = [np.asarray(item["class_label"], np.float32).reshape(-1) for item in items]
    return np.stack(labels).astype(np.float32)


def weak_slice_items(entries: Sequence[Mapping], task: str | ClassificationTask, where: str = "datalist") -> list[dict]:
    """One item per axial slice of every entry with its slice label (``class_label``); the ``label`` path is dropped.

    The segmentation file's path is removed from the items so nothing downstream of them can read it.
    """
    items = slice_items(entries, task, where=where)
    return [{k: v for k, v in item.items() if k != "label"} for item in items]


def with_targets(items: Sequence[Mapping], task: str | ClassificationTask, child_targets: np.ndarray) -> list[dict]:
    """Items with ``target = [parent | child]`` attached (``child_targets`` ``[N, C * K + 1]`` in item order)."""
    parents = parent_labels(items, task)
    child_targets = np.asarray(child_targets, np.float32)
    if len(child_targets) != len(items):
        raise ValueError(f"{len(child_targets)} child targets for {len(items)} slice items")
    return [{**item, TARGET_KEY: np.concatenate([p, c]).astype(np.float32)}
            for item, p, c in zip(items, parents, child_targets)]
