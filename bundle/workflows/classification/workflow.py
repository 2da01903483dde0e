"""Small helpers the SAMAug-C classification configs call, so that the JSON files hold wiring and flags, not logic.

``configs/train_samaug_cls.json``, ``configs/evaluate_cls.json`` and ``configs/inference_cls.json`` switch on:

- ``task`` (:data:`bundle.data.tasks.TASKS`): its level picks the network's spatial dims (:func:`spatial_dims_of`:
  slice tasks train a 2D network on axial slices, volume tasks a 3D network on whole volumes);
- ``cls_branches`` (``dual`` / ``raw`` / ``augmented``) and ``aug_as_samples``: which images the network sees and
  whether SAM is needed at all (:func:`uses_priors`: the raw baseline builds no SAM);
- ``cls_aug_mode`` (``emphasis_min`` / ``emphasis`` / ``add`` / ``samaug``): which prior kinds are computed
  (:func:`prior_kinds_for`).

Each helper validates its flag with ``look_up_option``, so a typo fails at parse time with the closest valid name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from monai.data import CacheDataset
from monai.transforms import Compose
from monai.utils import look_up_option

from bundle.data.case_ids import case_id_of
from bundle.data.datalist_io import load_checked_section, read_datalist
from bundle.data.deferred_cache import DeferredCacheDataset
from bundle.data.slice_dataset import AxialSliceDataset, class_balanced_weights, slice_items, volume_items
from bundle.data.tasks import ClassificationTask, get_task
from bundle.networks.dual_branch import BRANCH_MODES, BRANCH_NAMES
from bundle.priors.cls_augment import required_priors

__all__ = [
    "spatial_dims_of",
    "prior_kinds_for",
    "uses_priors",
    "volume_keys",
    "class_items",
    "volume_entries",
    "ClassificationData",
    "train_sampler",
    "fusion_setting",
]


def spatial_dims_of(task: str | ClassificationTask) -> int:
    """2 for a slice-level task (a 2D network over axial slices), 3 for a volume-level task."""
    return 2 if get_task(task).level == "slice" else 3


def prior_kinds_for(cls_aug_mode: str) -> list[str]:
    """The prior kinds an augmentation mode reads: ``["samaugc_prior"]`` (the emphases, add) or SAMAug's two kinds."""
    return list(required_priors(cls_aug_mode))


def uses_priors(cls_branches: str, aug_as_samples: bool = False) -> bool:
    """False only for the raw baseline without augmented samples: then no prior, generator or SAM is built."""
    branches = look_up_option(cls_branches, BRANCH_MODES)
    return "augmented" in BRANCH_NAMES[branches] or bool(aug_as_samples)


def volume_keys(cls_branches: str, aug_as_samples: bool = False, prior_key: str = "image_prior") -> list[str]:
    """Keys of the cached volumes that the slices are cut from: the image, and its prior when priors are used."""
    return ["image", prior_key] if uses_priors(cls_branches, aug_as_samples) else ["image"]


def class_items(entries: Sequence[Mapping], task: str | ClassificationTask, where: str = "datalist",
                view: str | None = None, aug_as_samples: bool = False) -> list[dict]:
    """One item per slice (slice task) or per volume (volume task), with the class label under ``class_label``.

    With ``aug_as_samples`` every item appears twice, once with ``view="raw"`` and once with ``view="augmented"``
    (the augmented image as an extra training sample, docs/methods.md §3); otherwise each item gets ``view`` (when given).
    """
    task = get_task(task)
    maker = slice_items if task.level == "slice" else volume_items
    items = maker(entries, task, where=where)
    if aug_as_samples:
        return [{**item, "view": v} for item in items for v in ("raw", "augmented")]
    return [{**item, "view": view} for item in items] if view is not None else items


def volume_entries(datalist: str | os.PathLike, section: str, data_root: str | os.PathLike,
                   task: str | ClassificationTask, with_label: bool = True) -> list[dict]:
    """The checked entries of one datalist section (every case's files checked first), after the task's check.

    Raises:
        MissingInputError, InputError: the datalist or a case's files fail the checks, the datalist is not of the
            task's dataset / lacks a label value the task reads (naming the datalist), or a label file changed since
            its summaries were written (naming the file, :mod:`bundle.data.summaries`).
    """
    task = get_task(task)
    task.check_datalist(read_datalist(os.fspath(datalist)), os.fspath(datalist))
    # a task reading the label summaries needs them computed from the label files as they are now
    return load_checked_section(datalist, section, data_root,
                                required=("image", "label") if with_label else ("image",),
                                label_key="label", summaries=with_label and task.source == "labels")


class ClassificationData:
    """The dataset of one split: volumes loaded once (deterministic transforms, cached), then slices or volumes.

    Slice tasks: a ``CacheDataset`` of the split's volumes (load, orient, normalise, cached priors) wrapped in an
    :class:`~bundle.data.slice_dataset.AxialSliceDataset` whose ``transform`` (resize, augmentation, the network
    input) runs per 2D slice. Volume tasks: one ``CacheDataset`` of volume items whose transform is
    ``volume_transform`` then ``item_transform`` (MONAI caches up to the first random transform).

    Args:
        datalist: the datalist file.
        section: ``training`` / ``validation`` / ``testing``.
        data_root: folder the datalist's relative paths are relative to.
        task: task name.
        volume_transform: deterministic transforms of a whole volume (``Compose``).
        item_transform: transforms of one sample (a ``[C, H, W]`` slice or a ``[C, H, W, D]`` volume).
        keys: keys of the volumes to slice (slice tasks).
        aug_as_samples: add every item's augmented view as an extra sample.
        view: the view of every item otherwise (``raw`` / ``augmented``), None for the dual network.
        cache_rate: ``CacheDataset`` cache rate.
        num_workers: ``CacheDataset`` workers.

    Attributes:
        items: the sample items (``case_id``, ``slice_index`` for slices, ``class_label``, ``view``).
        dataset: the torch dataset.
    """

    def __init__(self, datalist, section: str, data_root, task: str, volume_transform, item_transform,
                 keys: Sequence[str] = ("image",), aug_as_samples: bool = False, view: str | None = None,
                 cache_rate: float = 1.0, num_workers: int = 0) -> None:
        self.task = get_task(task)
        entries = volume_entries(datalist, section, data_root, self.task)
        self.items = class_items(entries, self.task, os.fspath(datalist), view, aug_as_samples)
        if self.task.level == "slice":
            volumes = [{k: e[k] for k in ("case_id", "image") if k in e} for e in entries]
            for v, e in zip(volumes, entries):
                v["case_id"] = case_id_of(e)
            self._cached = DeferredCacheDataset(volumes, volume_transform, cache_rate=cache_rate,
                                                num_workers=num_workers, progress=False)
            self.dataset = _SliceViewDataset(self._cached, self.items, keys, item_transform)
        else:
            transform = _chain(volume_transform, item_transform)
            self._cached = self.dataset = DeferredCacheDataset(self.items, transform, cache_rate=cache_rate,
                                                               num_workers=num_workers, progress=False)

    def fill(self) -> ClassificationData:
        """Load (and compute the priors of) the cached volumes now; building the dataset computes nothing
        (:class:`~bundle.data.deferred_cache.DeferredCacheDataset`)."""
        self._cached.fill()
        return self

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]


class _SliceViewDataset(AxialSliceDataset):
    """:class:`AxialSliceDataset` that also passes each item's ``view`` on to the transform."""

    def __getitem__(self, index: int) -> dict:
        transform, self.transform = self.transform, None
        try:
            out = super().__getitem__(index)
        finally:
            self.transform = transform
        if self.items[index].get("view") is not None:
            out["view"] = self.items[index]["view"]
        return self.transform(out) if self.transform is not None else out


def _chain(first, second) -> Compose:
    """One ``Compose`` of both transform lists: ``CacheDataset`` caches up to the first random transform."""
    return Compose([*getattr(first, "transforms", [first]), *getattr(second, "transforms", [second])])


def train_sampler(dataset: ClassificationData, class_balance: bool, seed: int = 0):
    """A ``WeightedRandomSampler`` drawing every class equally often (``class_balance``), else None (shuffle).

    One epoch draws ``len(dataset)`` samples with replacement, weights from
    :func:`bundle.data.slice_dataset.class_balanced_weights`.
    """
    if not class_balance:
        return None
    weights = class_balanced_weights(dataset.items, dataset.task)
    generator = torch.Generator().manual_seed(int(seed))
    return torch.utils.data.WeightedRandomSampler(weights, len(weights), replacement=True, generator=generator)


def fusion_setting(fusion_weight: str | float) -> str | float:
    """``"auto"`` (choose ``w`` on the validation split at each validation) or a fixed weight in ``[0, 1]``."""
    if isinstance(fusion_weight, str):
        return look_up_option(fusion_weight, ("auto",))
    if not 0.0 <= float(fusion_weight) <= 1.0:
        raise ValueError(f"fusion_weight must be 'auto' or in [0, 1], got {fusion_weight}.")
    return float(fusion_weight)


def sample_roi(roi_size: Sequence[int], spatial_dims: int) -> list[int]:
    """The size samples are resized to: ``roi_size[:2]`` for slices, ``roi_size`` (``[H, W, D]``) for volumes."""
    roi = [int(s) for s in roi_size]
    if len(roi) != 3 or min(roi) < 1:
        raise ValueError(f"roi_size must be three positive sizes [H, W, D], got {list(roi_size)}.")
    return roi[:2] if int(spatial_dims) == 2 else roi


def prior_note(use_priors: bool, generator=None) -> dict:
    """What made the priors of a run (TensorBoard text, report tags); says plainly when the fallback stood in."""
    if not use_priors:
        return {"generator": None, "is_sam": False, "note": "raw baseline: no SAM priors are computed or used"}
    signature = generator.signature()
    is_sam = "sam" in signature
    note = (f"SAM automatic masks from {signature['sam']['model_type']}" if is_sam else
            f"weight-free fallback generator {signature.get('generator')!r}: NOT SAM priors")
    return {"generator": signature.get("generator"), "is_sam": is_sam, "note": note}


class InferenceData:
    """Unlabelled samples of inference: every axial slice of each input (slice task) or each volume (volume task).

    The volumes are loaded once (``volume_transform``, cached); the slice count comes from the loaded volume.

    Args:
        entries: :func:`bundle.workflows.common.inputs.inference_cases`.
        level: ``slice`` or ``volume`` (the task's).
        volume_transform, item_transform, keys: as in :class:`ClassificationData`.
    """

    def __init__(self, entries: Sequence[Mapping], level: str, volume_transform, item_transform,
                 keys: Sequence[str] = ("image",)) -> None:
        entries = [{**e, "case_id": e.get("case_id") or case_id_of(e)} for e in entries]
        if look_up_option(level, ("slice", "volume")) == "slice":
            volumes = CacheDataset(entries, volume_transform, cache_rate=1.0, progress=False)
            self.items = [{"case_id": e["case_id"], "slice_index": d}
                          for i, e in enumerate(entries) for d in range(volumes[i]["image"].shape[-1])]
            for item in self.items:
                item["class_label"] = -1  # AxialSliceDataset carries a label; inference has none
            self.dataset = _SliceViewDataset(volumes, self.items, keys, item_transform)
        else:
            self.items = [dict(e) for e in entries]
            self.dataset = CacheDataset(self.items, _chain(volume_transform, item_transform), progress=False)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]


def drop_lone_sample(dataset_size: int, batch_size: int) -> bool:
    """``drop_last`` of the training loader: True only when the last batch would hold one sample, which batch norm
    cannot normalise at the 1 x 1 feature map of a small input; a set smaller than a batch is never dropped."""
    return int(dataset_size) > int(batch_size) and int(dataset_size) % int(batch_size) == 1
