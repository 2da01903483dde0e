"""Distances as the WeakMedSAM and SAM-Mix authors' code computes them, reported *next to* the bundle's own metrics.

The bundle's metrics (:mod:`bundle.workflows.common.seg_metrics`) are boundary-based, in native pixels or mm. The
published numbers of two methods were computed otherwise (``docs/methods.md``, METHODS.md §4 and §5), so a
comparison with them needs the same computation; these functions give it, and every key they produce starts with
``authors_`` so that nobody mistakes them for the standard ones.

- **WeakMedSAM** (``eval.py`` of ``wanghr64/WeakMedSAM``): each axial slice is *trimmed* to the bounding box of the
  pixels whose intensity differs from the slice's top-left (background) pixel, resized to 256 x 256 (nearest for
  masks), and scored there. Their surface-distance routine receives ``[1, H, W]`` arrays and erodes them with a 3D
  cross and a zero border, which removes every pixel, so the "surface" is the whole mask: HD95 and ASSD are
  *region-based* (distances between all foreground pixels of the two masks). Only slices where both masks are
  non-empty count, and the values are pooled over all test slices (a mean over slices, not over cases).
- **SAM-Mix** (ADA-SAM's code, the authors' closest public code): the maximum (100th percentile) Hausdorff distance
  in pixels with both masks at SAM's 1024 x 1024 frame, between all foreground pixels, infinite when the prediction
  is empty and the truth is not, pooled over slices (one infinite slice makes the pooled mean infinite).

Region-based distances (with ``d(x, S)`` the Euclidean distance from pixel ``x`` to the nearest pixel of ``S``):
``d_PG = {d(p, G) : p in P}``, ``d_GP = {d(g, P) : g in G}``; HD95 is the 95th percentile of ``d_PG ∪ d_GP`` and ASSD
``(mean d_PG + mean d_GP) / 2`` (the medpy reductions the authors call), the maximum HD ``max(d_PG ∪ d_GP)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "WEAK_FRAME",
    "SAM_FRAME",
    "WEAK_AUTHORS_METRICS",
    "SAM_MIX_AUTHORS_METRICS",
    "AUTHORS_METRIC_DEFINITIONS",
    "AUTHORS_POOLING",
    "region_distances",
    "max_hausdorff",
    "trim_box",
    "resize_nearest",
    "weak_authors_metrics",
    "sam_mix_authors_slice",
]

WEAK_FRAME = 256
SAM_FRAME = 1024

WEAK_AUTHORS_METRICS = ("authors_assd", "authors_hd95", "authors_slices")
SAM_MIX_AUTHORS_METRICS = ("authors_hd_px1024", "authors_slices", "authors_empty_pred_slices")

AUTHORS_METRIC_DEFINITIONS = {
    "authors_assd": "WeakMedSAM authors' convention: region-based ASSD (between all foreground pixels, as their "
    "eval.py computes it) per axial slice trimmed to the image's non-background box and resized to 256 x 256, on "
    "slices where both masks are non-empty; summary mean pooled over all slices",
    "authors_hd95": "WeakMedSAM authors' convention: region-based HD95 in pixels of the 256 x 256 trimmed frame, "
    "same slices and pooling as authors_assd",
    "authors_slices": "number of slices the authors_* distances of the case were computed on (the pooling weight)",
    "authors_hd_px1024": "SAM-Mix authors' convention (ADA-SAM code): maximum Hausdorff distance in pixels between "
    "all foreground pixels, both masks resized to 1024 x 1024, infinite when the prediction is empty; summary mean "
    "pooled over slices (null in JSON when infinite: see authors_empty_pred_slices)",
    "authors_empty_pred_slices": "number of scored slices whose prediction was empty (each makes authors_hd_px1024 "
    "infinite)",
}

#: metric -> the per-case metric holding its pooling weight: the summary mean of the metric is the mean over slices
AUTHORS_POOLING = {"authors_assd": "authors_slices", "authors_hd95": "authors_slices",
                   "authors_hd_px1024": "authors_slices"}


def _pair(pred, label) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred).astype(bool), np.asarray(label).astype(bool)
    if p.ndim != 2 or p.shape != g.shape:
        raise ValueError(f"expected two 2D masks of one shape, got {p.shape} and {g.shape}")
    return p, g


def _directed(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances from every foreground pixel of each mask to the nearest foreground pixel of the other."""
    # the union's box holds every pixel of both sets, so cropping to it changes no distance and keeps the
    # transforms small at 1024 x 1024
    union = p | g
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    box = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
    p, g = p[box], g[box]
    # the EDT of the complement gives each pixel's distance to the nearest foreground pixel (0 on the mask itself)
    return ndimage.distance_transform_edt(~g)[p], ndimage.distance_transform_edt(~p)[g]


def region_distances(pred, label) -> tuple[float, float]:
    """Region-based HD95 and ASSD in pixels between two 2D masks; ``(nan, nan)`` if either is empty.

    Returns:
        ``(hd95, assd)``.
    """
    p, g = _pair(pred, label)
    if not (p.any() and g.any()):
        return float("nan"), float("nan")
    d_pg, d_gp = _directed(p, g)
    return float(np.percentile(np.concatenate([d_pg, d_gp]), 95)), float(0.5 * (d_pg.mean() + d_gp.mean()))


def max_hausdorff(pred, label) -> float:
    """Region-based maximum Hausdorff distance in pixels; inf for an empty prediction, NaN for an empty truth."""
    p, g = _pair(pred, label)
    if not g.any():
        return float("nan")
    if not p.any():
        return float("inf")
    d_pg, d_gp = _directed(p, g)
    return float(max(d_pg.max(), d_gp.max()))


def trim_box(image) -> tuple[slice, slice]:
    """The authors' trim of one slice: the box of the pixels that differ from the top-left pixel in any channel.

    Args:
        image: ``[H, W]`` or ``[C, H, W]``.

    Returns:
        the ``(rows, cols)`` slices; the whole slice when every pixel equals the top-left one.
    """
    img = np.asarray(image)
    img = img[None] if img.ndim == 2 else img
    if img.ndim != 3:
        raise ValueError(f"expected an [H, W] or [C, H, W] slice, got shape {img.shape}")
    differs = (img != img[:, :1, :1]).any(axis=0)
    if not differs.any():
        return slice(None), slice(None)
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def resize_nearest(mask, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2D mask to ``size x size``, sampling pixel centres (PIL's NEAREST rule)."""
    m = np.asarray(mask)
    rows = np.minimum(((np.arange(size) + 0.5) * m.shape[0] / size).astype(int), m.shape[0] - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * m.shape[1] / size).astype(int), m.shape[1] - 1)
    return m[np.ix_(rows, cols)]


def weak_authors_metrics(pred, label, image=None, class_names: Sequence[str] | None = None,
                         size: int = WEAK_FRAME) -> dict[str, dict[str, float]]:
    """The WeakMedSAM authors' slice distances of one ``[C, H, W, D]`` case, per region channel.

    Args:
        pred: binary prediction ``[C, H, W, D]``, D the axial axis.
        label: binary ground truth, same shape.
        image: the image on the same grid, ``[C', H, W, D]``, for the trim; ``None`` scores the untrimmed slice.
        class_names: names of the C channels; default ``class0, ...``.
        size: the square frame the trimmed slice is resized to.

    Returns:
        ``{class: {"authors_assd", "authors_hd95", "authors_slices"}}``: the means over the case's scored slices
        (NaN when none) and their number, so that a summary can pool over slices.
    """
    p, g = np.asarray(pred).astype(bool), np.asarray(label).astype(bool)
    if p.shape != g.shape or p.ndim != 4:
        raise ValueError(f"pred and label must be [C, H, W, D] of one shape, got {p.shape} and {g.shape}")
    if image is not None:
        image = np.asarray(image)
        if image.ndim != 4 or image.shape[1:] != p.shape[1:]:
            raise ValueError(f"the image for the authors' trim must be [C, H, W, D] on the label's grid "
                             f"{p.shape[1:]}, got {image.shape}")
    names = list(class_names) if class_names is not None else [f"class{c}" for c in range(p.shape[0])]
    if len(names) != p.shape[0]:
        raise ValueError(f"class_names has {len(names)} entries but the masks have {p.shape[0]} channels")
    out = {}
    for c, name in enumerate(names):
        values = []
        for d in np.flatnonzero(p[c].any(axis=(0, 1)) & g[c].any(axis=(0, 1))):
            box = trim_box(image[..., d]) if image is not None else (slice(None), slice(None))
            ps, gs = resize_nearest(p[c][box + (d,)], size), resize_nearest(g[c][box + (d,)], size)
            if ps.any() and gs.any():  # a mask can vanish in the resize; the authors score the resized arrays
                values.append(region_distances(ps, gs))
        arr = np.asarray(values, float).reshape(-1, 2)
        out[name] = {"authors_assd": float(arr[:, 1].mean()) if len(arr) else float("nan"),
                     "authors_hd95": float(arr[:, 0].mean()) if len(arr) else float("nan"),
                     "authors_slices": float(len(arr))}
    return out


def sam_mix_authors_slice(pred, label, size: int = SAM_FRAME) -> float:
    """ADA-SAM's slice HD: :func:`max_hausdorff` with both 2D masks resized (nearest) to ``size x size``."""
    p, g = _pair(pred, label)
    return max_hausdorff(resize_nearest(p, size), resize_nearest(g, size))
