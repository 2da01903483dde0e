"""Axial slices of cached volumes with slice-level class labels, class-balanced sampling, and volume-level items.

The 2D paths (SAMAug-C, WeakMedSAM, SAM-Mix) train on axial slices, but reading and pre-processing a volume once
per slice would cost the depth of the volume (155 for BraTS) times the I/O. So the volumes are loaded once by a
caching dataset (a MONAI ``CacheDataset`` of channel-first, RAS-oriented ``[C, H, W, D]`` volumes), and an
:class:`AxialSliceDataset` maps each slice item to its case's cached volume and cuts the slice out::

    entries (datalist) --slice_items--> one item per slice (case id, slice index, class label)
    CacheDataset(entries, load + orient) + items --AxialSliceDataset--> {"image": [C, H, W], "class_label", ...}

The class label sits under ``"class_label"`` (:data:`CLASS_LABEL_KEY`), not ``"label"``: a datalist's ``label`` is
the segmentation file, and its slice may be wanted next to the class label (SAM-Mix trains on both).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from monai.data import CacheDataset
from monai.utils import ensure_tuple

from bundle.data.case_check import RECORD_KEY
from bundle.data.case_ids import case_id_of
from bundle.data.deferred_cache import DeferredCacheDataset
from bundle.data.summaries import SUMMARY_KEY
from bundle.data.tasks import ClassificationTask, get_task

__all__ = ["CLASS_LABEL_KEY", "slice_items", "volume_items", "class_balanced_weights", "AxialSliceDataset",
           "cached_slices"]

CLASS_LABEL_KEY = "class_label"
"""Key of the class label in items and in the dictionaries of :class:`AxialSliceDataset`."""

# per-slice summaries vary in length between cases: kept in items they would break batch collation
_SUMMARY_KEYS = ("volume_labels", "slice_labels", "slice_foreground", SUMMARY_KEY, RECORD_KEY)


def _item_base(entry: Mapping) -> dict:
    base = {k: v for k, v in entry.items() if k not in _SUMMARY_KEYS}
    base["case_id"] = case_id_of(entry)  # the basename, also when MONAI joined the id to the data root
    return base


def slice_items(
    entries: Sequence[Mapping],
    task: str | ClassificationTask,
    *,
    central_fraction: float = 1.0,
    label_key: str = CLASS_LABEL_KEY,
    where: str = "datalist",
) -> list[dict]:
    """One item per axial slice of every entry, labelled by a slice-level task; no image is read.

    Args:
        entries: datalist entries (:mod:`bundle.data.datalist`), with ``slice_labels`` and ``num_slices``.
        task: a slice-level task or its name (:data:`bundle.data.tasks.TASKS`).
        central_fraction: keep only the central ``round(fraction * D)`` slices (at least one) of each case, as
            SAM-Mix's authors did with 0.3; 1.0 keeps every slice.
        label_key: key of the class label in each item.
        where: the datalist's name or path, for messages.

    Returns:
        items in entry order, then slice order: the entry's fields (``image`` / ``label`` paths, ``num_slices``,
        ``grade``, ...; not its label summaries and check record), ``case_id`` (the basename),
        ``slice_index`` (``int``, along the last axis after ``Orientation("RAS")``) and the class label: an ``int``
        for a binary task, a ``[K]`` float32 array for a multi-label task.

    Raises:
        ValueError: a volume-level task, or ``central_fraction`` outside (0, 1].
        InputError: an entry without the summaries the task reads (see
            :meth:`bundle.data.tasks.ClassificationTask.slice_labels`).
    """
    task = get_task(task)
    if task.level != "slice":
        raise ValueError(f"task {task.name!r} has volume-level labels; use volume_items().")
    if not 0.0 < central_fraction <= 1.0:
        raise ValueError(f"central_fraction must be in (0, 1], got {central_fraction}.")
    items = []
    for entry in entries:
        labels = task.slice_labels(entry, where)
        base = _item_base(entry)
        depth = len(labels)
        kept = min(depth, max(1, round(central_fraction * depth)))
        first = (depth - kept) // 2
        for d in range(first, first + kept):
            label = labels[d].copy() if task.multi_label else int(labels[d])
            items.append({**base, "slice_index": d, label_key: label})
    return items


def volume_items(
    entries: Sequence[Mapping],
    task: str | ClassificationTask,
    *,
    label_key: str = CLASS_LABEL_KEY,
    where: str = "datalist",
) -> list[dict]:
    """The entries with their volume-level class label attached, ready for a MONAI ``Dataset`` of whole volumes.

    Args:
        entries: datalist entries.
        task: a volume-level task or its name.
        label_key: key of the class label in each item.
        where: the datalist's name or path, for messages.

    Returns:
        one item per entry: its fields without the label summaries and check record (they differ in length between
        cases and would break batch collation), ``case_id`` (the basename) and the class label (``int`` or ``[K]``
        float32).

    Raises:
        ValueError: a slice-level task.
        InputError: an entry without what the task reads (e.g. no ``grade`` for ``brats_grade``); names the case.
    """
    task = get_task(task)
    if task.level != "volume":
        raise ValueError(f"task {task.name!r} has slice-level labels; use slice_items().")
    return [{**_item_base(entry), label_key: task.volume_label(entry, where)} for entry in entries]


def class_balanced_weights(
    items: Sequence[Mapping], task: str | ClassificationTask, label_key: str = CLASS_LABEL_KEY
) -> torch.Tensor:
    """Per-item sampling weights that give every class (group) the same expected share of the samples drawn.

    Most slices are negative (a tumour spans a minority of a volume's slices), so uniform sampling would train
    mostly on negatives.

    - binary / single-label: inverse class frequency, ``w_i = 1 / (n_{y_i} * G)`` for ``G`` classes present;
    - multi-label: each item belongs to one group, the *rarest* of its positive classes (fewest positive items;
      ties to the lower class index), and all-negative items form a group of their own; weights are inverse group
      size the same way. For nested classes (BraTS ET within TC within WT) an ET slice counts as ET, a slice with
      TC but no ET as TC, and so on, so the rare class is not drowned by the common one it always comes with.

    Args:
        items: items with class labels (:func:`slice_items` or :func:`volume_items`).
        task: the task of the labels.
        label_key: key of the class label.

    Returns:
        ``[N]`` float64 weights summing to 1, for ``torch.utils.data.WeightedRandomSampler(weights, num_samples)``.
        Each non-empty group's weights sum to ``1 / G``.

    Raises:
        ValueError: no items, or a label that does not fit the task.
    """
    task = get_task(task)
    if not items:
        raise ValueError("class_balanced_weights: no items.")
    if task.multi_label:
        labels = np.stack([np.asarray(item[label_key], np.float32) for item in items])
        if labels.shape[1:] != (task.num_outputs,):
            raise ValueError(f"task {task.name!r}: expected label vectors of length {task.num_outputs}, "
                             f"got shape {labels.shape[1:]}.")
        positive = labels > 0.5
        counts = positive.sum(axis=0)
        rarity = np.where(positive, counts[None, :], np.iinfo(np.int64).max)
        groups = np.where(positive.any(axis=1), np.argmin(rarity, axis=1) + 1, 0)
    else:
        groups = np.asarray([int(item[label_key]) for item in items], np.int64)
        if groups.min() < 0 or groups.max() >= task.num_outputs:
            raise ValueError(f"task {task.name!r}: class indices must be in [0, {task.num_outputs}), "
                             f"got {sorted(set(groups.tolist()))}.")
    sizes = np.bincount(groups)
    weights = 1.0 / (sizes[groups] * np.count_nonzero(sizes))
    return torch.as_tensor(weights, dtype=torch.float64)


def _volume_case_ids(volumes: Sequence) -> list[str]:
    data = getattr(volumes, "data", None)
    if isinstance(data, Sequence) and len(data) == len(volumes) and all(isinstance(d, Mapping) for d in data):
        return [case_id_of(d) for d in data]
    raise ValueError(
        "AxialSliceDataset: cannot tell the case of each volume without loading it; pass case_ids=[...] (one per "
        "volume), or wrap a MONAI dataset whose .data holds the datalist entries."
    )


def _slice_key(item: Mapping) -> tuple[str, int]:
    return str(item["case_id"]), int(item["slice_index"])


class AxialSliceDataset(torch.utils.data.Dataset):
    """Axial slices of cached volumes, one sample per slice item.

    The wrapped dataset loads and caches each volume once; this one only cuts slices out of it. Build that dataset
    with deterministic transforms only (load, ``EnsureChannelFirstd``, ``Orientationd(axcodes="RAS")``, intensity
    scaling): a MONAI ``CacheDataset`` then returns the cached dictionary itself, whereas random 3D transforms
    would deep-copy the whole volume at every slice access (with ``copy_cache=True``) and augment each slice of a
    volume differently. Put augmentation in ``transform`` instead, on the 2D slice.

    Args:
        volumes: a dataset of volume dictionaries (e.g. ``monai.data.CacheDataset``); ``volumes[i][key]`` is a
            channel-first ``[C, H, W, D]`` array, tensor or ``MetaTensor``, RAS-oriented as the datalist's slice
            labels are.
        items: slice items (:func:`slice_items`) with ``case_id``, ``slice_index`` and the class label.
        keys: the volume keys to slice (e.g. ``("image", "image_prior")``; ``"label"`` for the segmentation).
        transform: applied to each output dictionary, e.g. a MONAI ``Compose`` of 2D dictionary transforms (random
            augmentation); its random state is seeded per worker by ``monai.data.DataLoader``.
        case_ids: the case id of each volume, in order; None reads them from ``volumes.data`` (the entries a MONAI
            dataset was built from), so no volume is loaded to name it.
        label_key: key of the class label in items and in the output.

    Each sample is ``{key: [C, H, W] tensor per key (the volume's dtype), label_key: int64 scalar (binary) or [K] float32
    (multi-label), "case_id": str, "slice_index": int}``, before ``transform``.

    Raises:
        ValueError: case ids that cannot be found or that repeat, or items of cases with no volume.
    """

    def __init__(
        self,
        volumes: Sequence[Mapping],
        items: Sequence[Mapping],
        keys: str | Sequence[str] = "image",
        transform: Callable[[dict], dict] | None = None,
        case_ids: Sequence[str] | None = None,
        label_key: str = CLASS_LABEL_KEY,
    ):
        self.volumes = volumes
        self.items = list(items)
        self.keys = ensure_tuple(keys)
        self.transform = transform
        self.label_key = label_key
        ids = [str(c) for c in case_ids] if case_ids is not None else _volume_case_ids(volumes)
        if len(ids) != len(volumes):
            raise ValueError(f"AxialSliceDataset: {len(ids)} case ids for {len(volumes)} volumes.")
        self._volume_index: dict[str, int] = {}
        for index, case_id in enumerate(ids):
            if case_id in self._volume_index:
                raise ValueError(f"AxialSliceDataset: case id {case_id!r} names volumes {self._volume_index[case_id]} "
                                 f"and {index}.")
            self._volume_index[case_id] = index
        missing = sorted({str(item["case_id"]) for item in self.items} - set(self._volume_index))
        if missing:
            raise ValueError(f"AxialSliceDataset: no volume for {len(missing)} case(s) of the slice items: "
                             f"{missing[:5]}{' ...' if len(missing) > 5 else ''}.")

    def set_items(self, items: Sequence[Mapping]) -> AxialSliceDataset:
        """Replace the items by the same slices with other fields (WeakMedSAM's targets, known once the sub-class
        stage has run); returns the dataset.

        Raises:
            ValueError: ``items`` are not the same slices in the same order.
        """
        items = list(items)
        if [_slice_key(i) for i in items] != [_slice_key(i) for i in self.items]:
            raise ValueError(f"AxialSliceDataset: {len(items)} new items are not the dataset's {len(self.items)} "
                             "slices in order")
        self.items = items
        return self

    def fill(self) -> AxialSliceDataset:
        """Load the volumes now when the wrapped dataset defers them (a
        :class:`~bundle.data.deferred_cache.DeferredCacheDataset`); returns the dataset."""
        fill = getattr(self.volumes, "fill", None)
        if fill is not None:
            fill()
        return self

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        case_id, d = str(item["case_id"]), int(item["slice_index"])
        volume = self.volumes[self._volume_index[case_id]]
        if not isinstance(volume, Mapping):
            raise TypeError(f"AxialSliceDataset: volume of case {case_id} is a {type(volume).__name__}, not a dict.")
        out = {}
        for key in self.keys:
            if key not in volume:
                raise KeyError(f"AxialSliceDataset: volume of case {case_id} has no {key!r} (keys: {sorted(volume)}).")
            out[key] = self._slice(volume[key], d, case_id, key, item.get("num_slices"))
        out[self.label_key] = torch.as_tensor(item[self.label_key])
        out["case_id"], out["slice_index"] = case_id, d
        return self.transform(out) if self.transform is not None else out

    @staticmethod
    def _slice(array, d: int, case_id: str, key: str, num_slices: int | None) -> torch.Tensor:
        array = array.as_tensor() if hasattr(array, "as_tensor") else torch.as_tensor(array)
        if array.ndim != 4:
            raise ValueError(f"AxialSliceDataset: {key!r} of case {case_id} has shape {tuple(array.shape)}, "
                             "expected channel-first [C, H, W, D].")
        depth = array.shape[-1]
        if num_slices is not None and depth != num_slices:
            raise ValueError(
                f"AxialSliceDataset: {key!r} of case {case_id} has {depth} slices along its last axis, the datalist "
                f"says {num_slices}: load volumes with EnsureChannelFirstd + Orientationd(axcodes='RAS') as the slice "
                "labels were computed, or write the datalist again with scripts/prepare_datalist.py."
            )
        if not 0 <= d < depth:
            raise IndexError(f"AxialSliceDataset: slice {d} of case {case_id} is outside its {depth} slices.")
        # a copy of one slice: a view would keep the whole volume's storage alive, and a DataLoader worker would
        # send that whole storage through shared memory with each sample
        return array[..., d].clone(memory_format=torch.contiguous_format)


def cached_slices(entries: Sequence[Mapping], items: Sequence[Mapping], volume_transform, item_transform=None,
                  keys: str | Sequence[str] = "image", label_key: str = CLASS_LABEL_KEY, cache_rate: float = 1.0,
                  num_workers: int = 0, deferred: bool = False) -> AxialSliceDataset:
    """The :class:`AxialSliceDataset` of ``items`` over the entries' volumes, each volume loaded once by a MONAI
    ``CacheDataset`` with ``volume_transform`` (deterministic: load, orient, scale) and sliced afterwards.

    Args:
        entries: datalist entries with ``case_id`` and the ``keys`` (file paths).
        items: slice items of those cases.
        volume_transform: the volume transform (``keys`` in, ``[C, H, W, D]`` out).
        item_transform: per-slice transform (resize, augmentation).
        keys: what is loaded and sliced (``"image"``; ``("image", "label")`` with the segmentation).
        label_key: key of the class label (or target) in items and samples.
        cache_rate, num_workers: of the ``CacheDataset``.
        deferred: load the volumes when the first slice is read or the dataset's ``fill()`` is called
            (:class:`~bundle.data.deferred_cache.DeferredCacheDataset`), not now.
    """
    keys = ensure_tuple(keys)
    volumes = [{"case_id": str(e["case_id"]), **{k: e[k] for k in keys if k in e}} for e in entries]
    cached = (DeferredCacheDataset if deferred else CacheDataset)(volumes, volume_transform, cache_rate=cache_rate,
                                                                  num_workers=num_workers, progress=False)
    return AxialSliceDataset(cached, items, keys=keys, transform=item_transform,
                             case_ids=[v["case_id"] for v in volumes], label_key=label_key)
