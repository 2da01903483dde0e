"""A classification task read off datalist entries (:class:`ClassificationTask`): slice-level and volume-level labels
without opening an image. Each dataset module (:mod:`bundle.data.datasets`) lists its tasks; :mod:`bundle.data.tasks`
is the registry of all of them.

A datalist entry (:mod:`bundle.data.datalist`) already says which label values each axial slice holds
(``slice_labels``), which values the volume holds (``volume_labels``) and, for the BraTS 2019 layout, the case's
``grade``; a task only says how to turn that into a class label. Binary and single-label tasks give an integer class
index (cross-entropy over ``len(class_names)`` logits, 2 for a binary task); multi-label tasks give a float32 0/1
vector with one entry per class (BCE with logits).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from monai.utils import look_up_option

from bundle.data.case_ids import case_id_of
from bundle.errors import InputError

__all__ = ["GRADES", "LEVELS", "SOURCES", "ClassificationTask", "binary_task"]

LEVELS = ("slice", "volume")
"""What one class label describes: one axial slice, or the whole volume."""

SOURCES = ("labels", "grade")
"""Where a task reads its labels: the entry's label-value summaries, or the case's BraTS 2019 ``grade``."""

GRADES = ("LGG", "HGG")
_REWRITE = "write the datalist again with scripts/prepare_datalist.py"


@dataclass(frozen=True)
class ClassificationTask:
    """A classification task whose labels come from a datalist entry alone.

    Args:
        name: registry key, e.g. ``"brats_wt"``.
        dataset: the dataset preset the task belongs to (``"brats"``, ``"lits"``, ``"abdomenct1k"``); it must match
            a datalist's ``dataset`` (see :meth:`check_datalist`).
        level: ``"slice"`` (one label per axial slice) or ``"volume"`` (one per case).
        class_names: one name per network output: ``(negative, positive)`` for a binary task, one per class for
            a multi-label task.
        multi_label: True: a 0/1 vector per sample (BCE); False: one class index per sample (cross-entropy).
        values: for ``source="labels"``: the label values of each positive class. A binary task has one group
            (class 1 = any of its values present, class 0 otherwise); a multi-label task one group per class.
        source: ``"labels"`` (``slice_labels`` / ``volume_labels``) or ``"grade"`` (the entry's ``grade``,
            ``LGG`` = 0, ``HGG`` = 1; volume level only).
        description: one line for humans.

    Raises:
        ValueError: unknown ``level`` / ``source`` (with the closest valid name), or groups and class names that do
            not fit together.
    """

    name: str
    dataset: str
    level: str
    class_names: tuple[str, ...]
    multi_label: bool = False
    values: tuple[tuple[int, ...], ...] = ()
    source: str = "labels"
    description: str = ""

    def __post_init__(self):
        look_up_option(self.level, LEVELS)
        look_up_option(self.source, SOURCES)
        if self.source == "grade" and (self.level != "volume" or self.multi_label or self.class_names != GRADES):
            raise ValueError(f"task {self.name!r}: a grade task is a volume-level binary task with classes {GRADES}.")
        if self.source == "labels":
            groups = len(self.class_names) if self.multi_label else 1
            if len(self.values) != groups or not all(self.values):
                raise ValueError(f"task {self.name!r}: expected {groups} non-empty group(s) of label values, "
                                 f"got {self.values}.")
            if not self.multi_label and len(self.class_names) != 2:
                raise ValueError(f"task {self.name!r}: a binary task has 2 class names, got {self.class_names}.")

    @property
    def num_outputs(self) -> int:
        """Logits a network needs: 2 for a binary task (cross-entropy), one per class for a multi-label task."""
        return len(self.class_names)

    @property
    def needed_values(self) -> tuple[int, ...]:
        """Every label value the task reads, ascending (empty for a grade task)."""
        return tuple(sorted({v for group in self.values for v in group}))

    def check_datalist(self, datalist: Mapping, where: str = "datalist") -> None:
        """Check that a parsed datalist is of this task's dataset and has every label value the task reads.

        Args:
            datalist: the parsed datalist (top-level ``dataset`` and ``labels`` are checked when present).
            where: the datalist's name or path, for the message.

        Raises:
            InputError: another dataset, a label table without a value the task needs (e.g. BraTS 2023, whose
                enhancing tumour is 3, for a task defined on the 2019-2021 numbering with ET = 4), or a grade task on
                a layout other than BraTS 2019.
        """
        dataset = datalist.get("dataset")
        if dataset is not None and dataset != self.dataset:
            raise InputError(where, f"task {self.name!r} is for {self.dataset!r} datalists, this one is {dataset!r}")
        layout = datalist.get("layout")
        if self.source == "grade" and layout is not None and layout != "brats2019":
            raise InputError(where, f"task {self.name!r} reads the HGG / LGG folders of the BraTS 2019 layout; this "
                                    f"datalist's layout is {layout!r}, which records no grade")
        table = datalist.get("labels")
        if isinstance(table, Mapping) and self.needed_values:
            missing = [v for v in self.needed_values if str(v) not in table]
            if missing:
                shown = f" (layout {layout!r})" if layout is not None else ""
                raise InputError(where, f"task {self.name!r} reads label value(s) {missing}, not in this datalist's "
                                        f"label set {sorted(int(k) for k in table)}{shown}")

    def slice_labels(self, entry: Mapping, where: str = "datalist") -> np.ndarray:
        """The labels of every axial slice of one datalist entry.

        Args:
            entry: a datalist entry with ``num_slices`` and ``slice_labels``.
            where: the datalist's name or path, for messages.

        Returns:
            ``[D]`` int64 class indices (binary task) or ``[D, K]`` float32 0/1 (multi-label, K classes).

        Raises:
            ValueError: a volume-level task.
            InputError: the entry lacks ``slice_labels`` / ``num_slices``, a row for a value the task reads (a datalist
                written before that value was summarised), or a row has the wrong length; names the case.
        """
        if self.level != "slice":
            raise ValueError(f"task {self.name!r} has volume-level labels; use volume_label().")
        case = _case(entry)
        rows, num_slices = entry.get("slice_labels"), entry.get("num_slices")
        if not isinstance(rows, Mapping) or not isinstance(num_slices, int):
            raise InputError(where, f"case {case}: entry has no 'slice_labels' / 'num_slices' summary; {_REWRITE}")
        missing = [v for v in self.needed_values if str(v) not in rows]
        if missing:
            raise InputError(where, f"case {case}: 'slice_labels' has no row for label value(s) {missing}, needed by "
                                    f"task {self.name!r} (rows: {sorted(rows)}); the datalist is stale: {_REWRITE}")
        present = {}
        for v in self.needed_values:
            row = np.asarray(rows[str(v)], dtype=bool)
            if row.shape != (num_slices,):
                raise InputError(where, f"case {case}: 'slice_labels' row {v} has {row.size} values for {num_slices} "
                                        f"slices; {_REWRITE}")
            present[v] = row
        groups = np.stack([np.logical_or.reduce([present[v] for v in g]) for g in self.values], axis=-1)  # [D, G]
        return groups.astype(np.float32) if self.multi_label else groups[:, 0].astype(np.int64)

    def volume_label(self, entry: Mapping, where: str = "datalist") -> int | np.ndarray:
        """The label of one datalist entry as a whole.

        Returns:
            an ``int`` class index (binary task) or a ``[K]`` float32 0/1 vector (multi-label).

        Raises:
            ValueError: a slice-level task.
            InputError: the entry lacks ``volume_labels``, or (grade task) a ``grade`` of ``LGG`` / ``HGG``;
                names the case.
        """
        if self.level != "volume":
            raise ValueError(f"task {self.name!r} has slice-level labels; use slice_labels().")
        case = _case(entry)
        if self.source == "grade":
            grade = entry.get("grade")
            # load_decathlon_datalist joins the data root to "HGG" (a folder there): the basename is the grade
            grade = os.path.basename(os.path.normpath(grade)) if isinstance(grade, str) and grade else grade
            if grade not in GRADES:
                found = "no 'grade'" if grade is None else f"grade {grade!r}"
                raise InputError(where, f"case {case}: {found} in the datalist entry; task {self.name!r} needs the "
                                        "BraTS 2019 layout ({HGG,LGG}/<case>/...). A datalist of that layout written "
                                        f"before grades were recorded: {_REWRITE}")
            return GRADES.index(grade)
        values = entry.get("volume_labels")
        if not isinstance(values, (list, tuple)):
            raise InputError(where, f"case {case}: entry has no 'volume_labels' summary; {_REWRITE}")
        present = {int(v) for v in values}
        groups = [bool(present.intersection(g)) for g in self.values]
        return np.asarray(groups, np.float32) if self.multi_label else int(groups[0])


def _case(entry: Mapping) -> str:
    try:
        return case_id_of(entry)
    except (ValueError, TypeError):
        return "<unnamed>"


def binary_task(name: str, dataset: str, level: str, values, positive: str, description: str) -> ClassificationTask:
    """A binary task: ``positive`` (any of ``values``) present, or not."""
    return ClassificationTask(name, dataset, level, (f"no_{positive}", positive), False, (values,), "labels",
                              description)
