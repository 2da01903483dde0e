"""Classification tasks read off datalist entries: slice-level and volume-level labels without opening an image.

SAMAug-C trains classifiers on CT/MRI, and WeakMedSAM and SAM-Mix train on the same slice labels. A datalist
entry (:mod:`bundle.data.datalist`) already says which label values each axial slice holds (``slice_labels``),
which values the volume holds (``volume_labels``) and, for the BraTS 2019 layout, the case's ``grade``; a task
only says how to turn that into a class label:

Each dataset module (:mod:`bundle.data.datasets`) lists its tasks; this module is their registry. The built-in ones:

- slice level (one label per axial slice, along the last axis after ``Orientation("RAS")``):
  ``brats_wt`` (whole tumour: any of 1, 2, 4), ``brats_regions`` (multi-label WT {1, 2, 4}, TC {1, 4}, ET {4}),
  ``lits_tumour`` (value 2), ``lits_liver`` (1 or 2), ``abdomenct_organs`` (multi-label liver 1, kidney 2, spleen 3,
  pancreas 4), ``msd_spleen_spleen`` (value 1);
- volume level: ``brats_grade`` (BraTS 2019 LGG 0 / HGG 1, from the case's folder), ``lits_tumour_volume``.

Binary and single-label tasks give an integer class index (cross-entropy over ``len(class_names)`` logits, 2 for a
binary task); multi-label tasks give a float32 0/1 vector with one entry per class (BCE with logits). The label
values are those of the BraTS 2019-2021 numbering; a BraTS 2023 datalist (ET = 3) is refused by
:meth:`ClassificationTask.check_datalist` rather than silently read with the wrong values.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from monai.utils import look_up_option

from bundle.data.classification_task import LEVELS, SOURCES, ClassificationTask
from bundle.data.datasets import MODULES

__all__ = ["LEVELS", "SOURCES", "ClassificationTask", "TASKS", "TASK_NAMES", "get_task"]

TASKS: Mapping[str, ClassificationTask] = MappingProxyType(
    {task.name: task for module in MODULES.values() for task in module.tasks})
"""Task name -> :class:`ClassificationTask`, of every dataset module."""

TASK_NAMES = tuple(TASKS)


def get_task(task: str | ClassificationTask) -> ClassificationTask:
    """The :class:`ClassificationTask` of a name (a task passes through).

    Raises:
        ValueError: unknown name, with the closest valid one.
    """
    if isinstance(task, ClassificationTask):
        return task
    return look_up_option(task.strip().lower() if isinstance(task, str) else task, TASKS)
