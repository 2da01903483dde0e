"""WeakMedSAM pseudo labels from random-walk maps (docs/methods.md §5, step 6), and their label values.

A slice's refined maps (:func:`bundle.priors.random_walk.random_walk`, on the affinity grid) are upsampled to the
slice, blurred, zeroed for the classes the classifier calls negative, then thresholded per class (binary) or turned
into one class map (multi-class). :func:`class_values_for_groups` and :func:`class_map_to_label` turn a class map
back into the label values of the dataset, whose classes may be groups of values (BraTS regions).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "class_map_to_label",
    "class_values_for_groups",
    "gaussian_blur",
    "gaussian_kernel",
    "pseudo_label_slice",
]


def _as_float_tensor(x, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}.")
    return t.float()


def _as_bool_vector(x, device: torch.device) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t.to(device=device, dtype=torch.bool).reshape(-1)


def gaussian_kernel(kernel_size: int = 21, sigma: float = 3.5) -> torch.Tensor:
    """Normalised 1D Gaussian ``exp(-x^2 / (2 sigma^2))`` sampled at ``x = -(k - 1) / 2, ..., (k - 1) / 2``.

    This is the kernel of OpenCV's ``getGaussianKernel`` and torchvision's ``gaussian_blur`` for ``sigma > 0``.

    Args:
        kernel_size: odd number of taps ``k`` (>= 1).
        sigma: standard deviation in pixels (> 0).

    Returns:
        float32 ``[k]`` summing to 1.

    Raises:
        ValueError: for an even or non-positive ``kernel_size`` or a non-positive ``sigma``.
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, numbers.Integral) or kernel_size < 1:
        raise ValueError(f"kernel_size must be an odd integer >= 1, got {kernel_size!r}.")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}.")
    if not isinstance(sigma, numbers.Real) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}.")
    x = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).float()


def _reflect_101_index(size: int, pad: int, device: torch.device) -> torch.Tensor:
    # mirror without repeating the edge pixel (dcb|abcd|cba), periodic with period 2 (size - 1), so any pad works,
    # as in OpenCV's borderInterpolate; torch's "reflect" pad is the same but needs pad < size
    idx = torch.arange(-pad, size + pad, device=device)
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= size, period - idx, idx)


def gaussian_blur(maps, kernel_size: int = 21, sigma: float = 3.5) -> torch.Tensor:
    """Separable Gaussian blur of every channel, with reflect-101 borders.

    The border is mirrored without repeating the edge pixel (OpenCV's default ``BORDER_REFLECT_101``, torch's
    ``"reflect"`` padding, which torchvision's ``gaussian_blur`` used by the WeakMedSAM authors applies), for any map
    size (also when the map is smaller than the kernel). The defaults are the authors' kernel 21 with torchvision's
    default ``sigma = 0.3 ((k - 1) / 2 - 1) + 0.8 = 3.5``.

    Args:
        maps: ``[C, H, W]`` maps (tensor or numpy array).
        kernel_size: odd kernel size.
        sigma: standard deviation in pixels.

    Returns:
        float32 ``[C, H, W]`` tensor, on the device of ``maps`` (CPU for numpy).

    Raises:
        ValueError: when ``maps`` is not 3D, or for an invalid kernel (see :func:`gaussian_kernel`).
    """
    x = _as_float_tensor(maps, "maps")
    if x.ndim != 3:
        raise ValueError(f"maps must be [C, H, W], got shape {tuple(x.shape)}.")
    kernel = gaussian_kernel(kernel_size, sigma).to(x.device)
    pad = kernel_size // 2
    c, h, w = x.shape
    x = x.index_select(1, _reflect_101_index(h, pad, x.device))
    x = F.conv2d(x.reshape(c, 1, h + 2 * pad, w), kernel.view(1, 1, -1, 1))
    x = x.index_select(3, _reflect_101_index(w, pad, x.device))
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return x.reshape(c, h, w)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (H, W) with positive sizes, got {size}.")
    return size


def pseudo_label_slice(
    refined,
    slice_positive,
    size: Sequence[int],
    threshold: float = 0.5,
    background_threshold: float = 0.5,
    kernel_size: int = 21,
    sigma: float = 3.5,
    multi_class: bool = False,
    frame: int = 0,
) -> torch.Tensor:
    """Pseudo label of one slice from its refined maps (WeakMedSAM step 6).

    The maps are upsampled bilinearly (``align_corners=False``) to ``size`` (or to ``frame x frame``), blurred
    (:func:`gaussian_blur`) and set to 0 for the classes the classifier calls negative, then:

    - binary (``multi_class=False``): class ``c``'s mask is ``map_c > threshold`` (classes may overlap, as BraTS
      regions do);
    - multi-class: each pixel takes ``1 + argmax_c map_c``, or 0 (background) where ``max_c map_c <=
      background_threshold``; a negative class (all 0) can win only where no class beats the background.

    Args:
        refined: ``[C, h, w]`` refined maps in ``[0, 1]`` on the affinity grid (tensor or numpy array).
        slice_positive: ``[C]`` bools, the classifier's per-class decision for the slice.
        size: ``(H, W)`` of the slice.
        threshold: per-class threshold of the binary masks.
        background_threshold: a pixel is background when no class map exceeds it (multi-class).
        kernel_size: odd size of the Gaussian kernel.
        sigma: standard deviation of the Gaussian in pixels (of the slice).
        multi_class: return one class map instead of per-class masks.
        frame: 0 (default): blur and threshold at the slice's size, so ``sigma`` is in the slice's pixels; ``N > 0``:
            in an ``N x N`` frame (the authors': 256, their slices' trimmed frame), the label then resized to ``size``
            by nearest neighbour, so the blur's reach is a fixed fraction of the slice whatever its resolution.

    Returns:
        ``multi_class=False``: uint8 ``[C, H, W]`` masks (0/1); ``multi_class=True``: int64 ``[H, W]`` class map
        (0 = background, ``c + 1`` = class ``c``). On the device of ``refined`` (CPU for numpy).

    Raises:
        ValueError: when ``refined`` is not 3D, ``slice_positive`` does not have ``C`` entries, ``size`` is not two
            positive sizes, a threshold is not finite, or the kernel is invalid.
    """
    maps = _as_float_tensor(refined, "refined")
    if maps.ndim != 3:
        raise ValueError(f"refined must be [C, h, w], got shape {tuple(maps.shape)}.")
    positive = _as_bool_vector(slice_positive, maps.device)
    if positive.numel() != maps.shape[0]:
        raise ValueError(f"slice_positive has {positive.numel()} entries, expected one per class ({maps.shape[0]}).")
    size = _check_size(size)
    for name, value in (("threshold", threshold), ("background_threshold", background_threshold)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}.")
    if isinstance(frame, bool) or int(frame) != frame or frame < 0:
        raise ValueError(f"frame must be 0 (the slice's size) or a positive size, got {frame!r}.")
    work = (int(frame), int(frame)) if frame else size
    maps = F.interpolate(maps[None], size=work, mode="bilinear", align_corners=False)[0]
    maps = gaussian_blur(maps, kernel_size, sigma)
    maps = maps * positive[:, None, None]
    if not multi_class:
        label = (maps > threshold).to(torch.uint8)
    else:
        best, index = maps.max(dim=0)
        label = torch.where(best > background_threshold, index + 1, torch.zeros_like(index))
    if work == tuple(size):
        return label
    resized = F.interpolate(label.reshape(-1, 1, *work).float(), size=size, mode="nearest")
    return resized.reshape(*label.shape[:-2], *size).to(label.dtype)


def class_values_for_groups(groups: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The label value to write for each class so that the label file reads back as that class.

    Class ``c`` is read from a label file as ``isin(label, groups[c])``. Writing class ``c``'s pixels with value
    ``x`` reads back as class ``c`` and as every class whose group contains ``x``; the value chosen is the smallest
    ``x`` of ``groups[c]`` whose only readers are the classes whose groups contain all of ``groups[c]`` (the class
    itself and its enclosing regions). For nested or disjoint groups this is the smallest value of ``groups[c]`` in
    no other group that is a strict subset of it: BraTS ``((1, 2, 4), (1, 4), (4,))`` (whole tumour, tumour core,
    enhancing tumour) gives ``(2, 1, 4)``, whole tumour alone ``((1, 2, 4),)`` gives ``(1,)``, AbdomenCT
    ``((1,), (2,), (3,), (4,))`` gives ``(1, 2, 3, 4)``. The pixels of a class map then read back as their class
    and its enclosing regions, and the class is recovered as the one with the smallest group among those read.

    Args:
        groups: per class, the label values (positive integers) that make it up.

    Returns:
        one label value per class.

    Raises:
        ValueError: when there are no classes, a group is empty, holds a value < 1 (0 is the background), two
            classes have the same group, or no value of a group satisfies the rule (e.g. ``((1, 2), (1,), (2,))``:
            the first class is covered by the other two).
    """
    sets = []
    for c, group in enumerate(groups):
        values = {int(x) for x in group}
        if not values:
            raise ValueError(f"group {c} is empty.")
        if min(values) < 1:
            raise ValueError(f"group {c} {tuple(group)} holds a value < 1; label 0 is the background.")
        if values in sets:
            raise ValueError(f"groups {sets.index(values)} and {c} have the same values {sorted(values)}.")
        sets.append(values)
    if not sets:
        raise ValueError("groups must name at least one class.")
    chosen = []
    for c, values in enumerate(sets):
        # values read by a class that does not enclose this one
        foreign = set().union(*(other for other in sets if not values <= other))
        candidates = sorted(values - foreign)
        if not candidates:
            raise ValueError(
                f"no label value identifies class {c} {sorted(values)}: each of its values also belongs to a "
                f"class that does not enclose it (groups {[sorted(s) for s in sets]})."
            )
        chosen.append(candidates[0])
    return tuple(chosen)


def class_map_to_label(class_map, values: Sequence[int]):
    """Write a class map with the label values of its classes.

    Args:
        class_map: integer ``[H, W]`` or ``[H, W, D]`` class map: 0 = background, ``c + 1`` = class ``c`` (tensor or
            numpy array).
        values: the label value of each class, e.g. from :func:`class_values_for_groups`.

    Returns:
        int64 label map of the same shape, of the same kind as ``class_map`` (on its device for a tensor).

    Raises:
        ValueError: when ``class_map`` is not 2D or 3D, not integer, or holds a value outside ``[0, len(values)]``.
    """
    is_tensor = isinstance(class_map, torch.Tensor)
    cm = class_map.detach() if is_tensor else torch.from_numpy(np.asarray(class_map))
    if cm.ndim not in (2, 3):
        raise ValueError(f"class_map must be [H, W] or [H, W, D], got shape {tuple(cm.shape)}.")
    if cm.is_floating_point() or cm.is_complex() or cm.dtype == torch.bool:
        raise ValueError(f"class_map must hold integers, got dtype {cm.dtype}.")
    cm = cm.long()
    if cm.numel() and (int(cm.min()) < 0 or int(cm.max()) > len(values)):
        raise ValueError(
            f"class_map values must lie in [0, {len(values)}] (0 and one per class), got "
            f"[{int(cm.min())}, {int(cm.max())}]."
        )
    lut = torch.tensor([0, *(int(v) for v in values)], dtype=torch.int64, device=cm.device)
    label = lut[cm]
    return label if is_tensor else label.numpy()
