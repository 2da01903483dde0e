"""Prior maps of one 2D slice from its SAM mask records (docs/methods.md §2 SAMAug, §3 SAMAug-C).

A mask record is a dict with Meta's field names (docs/design.md); only ``segmentation`` (bool ``[H, W]``) and the
score fields are read here. These functions run on every axial slice of every volume: the masks of a slice are
stacked once into ``[N, H, W]`` and the boundaries of all of them are found together, with array shifts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from monai.utils import look_up_option

__all__ = [
    "SCORE_KEYS",
    "COMBINE_MODES",
    "stack_segmentations",
    "thick_boundary",
    "samaug_prior_maps",
    "samaugc_prior_map",
]

SCORE_KEYS = ("stability_score", "predicted_iou")
COMBINE_MODES = ("sum", "max")
# size of the per-block XOR temporaries of thick_boundary (see there)
_BLOCK_BYTES = 1 << 20


def _check_shape(shape: Sequence[int]) -> tuple[int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) with positive sizes, got {shape}.")
    return shape


def stack_segmentations(masks: Sequence[dict], shape: Sequence[int]) -> np.ndarray:
    """Stack the ``segmentation`` of every record into one boolean array.

    Args:
        masks: mask records of one slice; each needs a ``segmentation`` of shape ``shape``.
        shape: ``(H, W)`` of the slice.

    Returns:
        bool ``[N, H, W]`` (``[0, H, W]`` for an empty list).

    Raises:
        ValueError: when ``shape`` is not 2D or a segmentation does not have shape ``shape``.
    """
    shape = _check_shape(shape)
    stack = np.empty((len(masks), *shape), dtype=bool)
    for k, record in enumerate(masks):
        seg = np.asarray(record["segmentation"])
        if seg.shape != shape:
            raise ValueError(f"mask {k} has segmentation shape {seg.shape}, expected the slice shape {shape}.")
        stack[k] = seg  # non-bool (0/1) masks are cast here
    return stack


def thick_boundary(segmentations: np.ndarray) -> np.ndarray:
    """Union of the "thick" 4-connected boundaries of binary masks.

    The thick boundary of one mask is where its cross-shaped (4-connected) dilation and erosion differ: a pixel is
    on it when one of its in-image 4-neighbours has the other value, which gives a 2-pixel ring, one pixel inside
    and one outside. Neighbours outside the image are ignored, which is what the reflecting border of
    ``skimage.segmentation.find_boundaries(mask, connectivity=1, mode="thick")`` amounts to, so the result equals
    OR-ing that function over the masks.

    Implementation: a pixel pair (p, q) of 4-neighbours is a boundary pair of *some* mask iff the membership bits
    of p and q differ in any mask, so an XOR of the shifted stack, reduced over masks with a bitwise OR, marks the
    pairs of all masks at once. The stack is processed in blocks of about 1 MiB: one XOR over the whole stack
    allocates two stack-sized temporaries, whose page faults made it 5x slower than the blocks (50 masks of
    256 x 256: 1.5 ms with blocks, 7 ms in one piece, 3 ms for a loop of per-mask shifts, 150 ms for
    ``find_boundaries`` per mask).

    Args:
        segmentations: bool ``[N, H, W]`` (or a single ``[H, W]`` mask).

    Returns:
        bool ``[H, W]``; all False for ``N = 0``.
    """
    seg = np.asarray(segmentations, dtype=bool)
    if seg.ndim == 2:
        seg = seg[None]
    if seg.ndim != 3:
        raise ValueError(f"segmentations must be [N, H, W] or [H, W], got shape {seg.shape}.")
    n, h, w = seg.shape
    out = np.zeros((h, w), dtype=bool)
    if n == 0:
        return out
    bits = seg.view(np.uint8)
    horizontal = np.zeros((h, w - 1), dtype=np.uint8)
    vertical = np.zeros((h - 1, w), dtype=np.uint8)
    block = max(1, min(n, _BLOCK_BYTES // (h * w)))
    diff_h = np.empty((block, h, w - 1), dtype=np.uint8)
    diff_v = np.empty((block, h - 1, w), dtype=np.uint8)
    for start in range(0, n, block):
        part = bits[start : start + block]
        m = part.shape[0]
        np.bitwise_xor(part[:, :, 1:], part[:, :, :-1], out=diff_h[:m])
        horizontal |= np.bitwise_or.reduce(diff_h[:m], axis=0)
        np.bitwise_xor(part[:, 1:], part[:, :-1], out=diff_v[:m])
        vertical |= np.bitwise_or.reduce(diff_v[:m], axis=0)
    # both pixels of a differing pair lie on the thick boundary
    horizontal, vertical = horizontal.view(bool), vertical.view(bool)
    out[:, 1:] |= horizontal
    out[:, :-1] |= horizontal
    out[1:] |= vertical
    out[:-1] |= vertical
    return out


def _weighted_sum(stack: np.ndarray, weights: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    # a masked add per mask beats a float32 matmul over the stack, which needs a float copy of it (about 2x for 50
    # masks of 256 x 256), and keeps the summation order of the records
    out = np.zeros(shape, dtype=np.float32)
    for seg, w in zip(stack, weights):
        np.add(out, w, out=out, where=seg)
    return out


def _scores(masks: Sequence[dict], key: str) -> np.ndarray:
    return np.asarray([float(record[key]) for record in masks], dtype=np.float32)


def samaug_prior_maps(masks: Sequence[dict], shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """SAMAug segmentation and boundary priors of one slice (docs/methods.md §2).

    ``S(p) = sum_k stability_score_k * [p in mask_k]`` (overlapping masks add up, not normalised) and
    ``B(p) = 1`` where p lies on the thick boundary (:func:`thick_boundary`) of any mask.

    Args:
        masks: mask records of the slice (``segmentation`` bool ``[H, W]`` and ``stability_score``); may be empty.
        shape: ``(H, W)`` of the slice.

    Returns:
        ``(seg_prior, boundary_prior)``, both float32 ``[H, W]``; zeros for an empty list.

    Raises:
        ValueError: when a segmentation's shape differs from ``shape``.
    """
    stack = stack_segmentations(masks, shape)
    seg_prior = _weighted_sum(stack, _scores(masks, "stability_score"), stack.shape[1:])
    boundary_prior = thick_boundary(stack).astype(np.float32)
    return seg_prior, boundary_prior


def samaugc_prior_map(
    masks: Sequence[dict], shape: Sequence[int], score: str = "stability_score", combine: str = "sum"
) -> np.ndarray:
    """SAMAug-C prior map ``P`` of one slice (docs/methods.md §3).

    Each mask contributes a map equal to its score inside the mask and 0 outside; the maps are combined by sum or
    maximum and min-max normalised to ``[0, 1]``.

    Args:
        masks: mask records of the slice (``segmentation`` bool ``[H, W]`` and the ``score`` field); may be empty.
        shape: ``(H, W)`` of the slice.
        score: record field used as the mask's value: ``"stability_score"`` or ``"predicted_iou"``.
        combine: ``"sum"`` (overlaps add up) or ``"max"`` (the best mask covering the pixel).

    Returns:
        float32 ``[H, W]`` in ``[0, 1]``; zeros when the combined map is constant (no masks, or one value everywhere).

    Raises:
        ValueError: for an unknown ``score`` / ``combine`` (naming the closest valid option) or a segmentation whose
            shape differs from ``shape``.
    """
    score = look_up_option(score, SCORE_KEYS)
    combine = look_up_option(combine, COMBINE_MODES)
    stack = stack_segmentations(masks, shape)
    values = _scores(masks, score)
    if combine == "sum":
        prior = _weighted_sum(stack, values, stack.shape[1:])
    else:
        prior = np.zeros(stack.shape[1:], dtype=np.float32)
        for seg, value in zip(stack, values):
            np.maximum(prior, value, out=prior, where=seg)
    low, high = float(prior.min()), float(prior.max())
    if high <= low:
        return np.zeros_like(prior)
    prior -= low
    prior /= high - low
    return prior
