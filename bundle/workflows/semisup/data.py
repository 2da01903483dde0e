"""SAM-Mix's data: one organ as a binary slice task, its mask, the labelled slices drawn with a seed, slice datasets.

The organ is a set of label values of the dataset (LiTS liver = 1 and 2 merged, AbdomenCT-1K liver = 1, spleen = 3
...): :func:`organ_task` makes the binary slice task (organ present in the axial slice) that the classifier learns
from the datalist's slice labels, and :class:`OrganMaskd` turns the label volume into the organ's 0/1 mask that the
segmentation term and the evaluation use. Only ``N`` slices carry that mask during training
(:func:`draw_labelled_slices`: drawn with a seed from the training slices that hold the organ, recorded with the
model); every slice carries its class label (:func:`bundle.data.slice_dataset.slice_items` of the organ task).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from bundle.data.labels import DATASETS
from bundle.data.slice_dataset import CLASS_LABEL_KEY
from bundle.data.tasks import TASKS, ClassificationTask
from bundle.errors import InputError

__all__ = ["DEFAULT_ORGANS", "OrganMaskd", "organ_task", "labelled_count", "draw_labelled_slices", "labelled_subset"]

DEFAULT_ORGANS: Mapping[str, tuple[str, tuple[int, ...]]] = MappingProxyType(
    {name: (spec.organ, tuple(spec.regions[spec.organ])) for name, spec in DATASETS.items() if spec.organ})
"""The organ SAM-Mix segments by default in each dataset preset: (name, label values), the spec's ``organ`` region."""


def organ_task(dataset: str, organ: str | None = None, values: Sequence[int] | None = None) -> ClassificationTask:
    """The binary slice task "``organ`` in the slice" of a dataset.

    Args:
        dataset: the datalist's dataset (``lits``, ``abdomenct1k``, ``brats``, ...).
        organ: the organ's name (default: :data:`DEFAULT_ORGANS`).
        values: its label values (default: :data:`DEFAULT_ORGANS`); any values of the dataset's label set work
            (e.g. ``[3]`` for AbdomenCT-1K's spleen).

    Raises:
        ValueError: no default organ for the dataset and no ``values`` given.
    """
    default = DEFAULT_ORGANS.get(dataset)
    if values is None or not list(values):
        if default is None:
            raise ValueError(f"no default organ for dataset {dataset!r}: give organ_values (label values)")
        organ, values = organ or default[0], default[1]
    values = tuple(sorted({int(v) for v in values}))
    organ = organ or "organ_" + "_".join(str(v) for v in values)
    for task in TASKS.values():  # a registered task of the same meaning keeps its name
        if task.dataset == dataset and task.level == "slice" and not task.multi_label and task.values == (values,):
            return task
    return ClassificationTask(f"{dataset}_{organ}", dataset, "slice", (f"no_{organ}", organ), False, (values,),
                              description=f"{organ} (label values {list(values)}) in the slice")


class OrganMaskd(MapTransform):
    """The label volume -> the organ's ``0/1`` float mask (``1`` where the label is one of ``values``)."""

    def __init__(self, keys: KeysCollection, values: Sequence[int], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.values = torch.as_tensor([int(v) for v in values])

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            # MONAI keeps a MetaTensor's meta data (affine, file name) through torch operations
            d[key] = torch.isin(torch.as_tensor(label).round().long(), self.values).to(torch.float32)
        return d


def labelled_count(num_labelled, method: str = "sam_mix") -> int:
    """``num_labelled`` checked: a whole number (``int``, not ``bool``) of 0 or more, at least 1 for a method whose
    segmentation trains on the labelled slices (``sam_mix``, ``unet``); ``zero_shot`` uses none, so 0 is allowed.

    Rounding would be quiet: ``2.5`` would train on 2 slices under a name and a card that say 2.

    Raises:
        ValueError: naming the option, the value and what it must be.
    """
    if isinstance(num_labelled, bool) or not isinstance(num_labelled, (int, np.integer)):
        raise ValueError(f"num_labelled: {num_labelled!r} is not a whole number of labelled slices (0 or more)")
    if num_labelled < 0:
        raise ValueError(f"num_labelled: {num_labelled} is negative; give the number of labelled slices (0 or more)")
    if num_labelled == 0 and method != "zero_shot":
        raise ValueError(f"num_labelled: 0 labelled slices, but method {method!r} trains its segmentation on them: "
                         "give 1 or more (only zero_shot runs without)")
    return int(num_labelled)


def draw_labelled_slices(items: Sequence[Mapping], n: int, seed: int, where: str = "datalist") -> list[dict]:
    """The ``n`` slices whose masks are used for training, drawn with ``seed`` from the slices holding the organ.

    Returns:
        ``[{"case_id", "slice_index"}]`` sorted by case and slice (what the model card records); empty for ``n = 0``
        (the zero-shot baseline, which trains no segmentation).

    Raises:
        InputError: fewer positive training slices than ``n`` (naming the datalist).
    """
    if n < 0:
        raise ValueError(f"the number of labelled slices must be 0 or more, got {n}")
    if n == 0:
        return []
    positive = [i for i, item in enumerate(items) if int(item[CLASS_LABEL_KEY]) == 1]
    if len(positive) < n:
        raise InputError(where, f"{n} labelled slices asked for, but the training section has only {len(positive)} "
                                "slices holding the organ")
    chosen = np.random.default_rng(int(seed)).choice(positive, size=n, replace=False)
    drawn = [{"case_id": str(items[i]["case_id"]), "slice_index": int(items[i]["slice_index"])} for i in chosen]
    return sorted(drawn, key=lambda d: (d["case_id"], d["slice_index"]))


def labelled_subset(items: Sequence[Mapping], labelled: Sequence[Mapping]) -> list[dict]:
    """The items of the labelled slices, in the order of ``labelled``."""
    index = {(str(i["case_id"]), int(i["slice_index"])): i for i in items}
    missing = [d for d in labelled if (d["case_id"], d["slice_index"]) not in index]
    if missing:
        raise ValueError(f"labelled slices not among the training slices: {missing[:3]}")
    return [index[(d["case_id"], d["slice_index"])] for d in labelled]
