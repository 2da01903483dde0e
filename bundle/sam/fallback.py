"""A weight-free mask generator: classical region proposals that stand in for SAM's automatic masks.

Selected by ``sam_model_type: fallback`` (fast tests, quick trials of a workflow). It implements the mask
generator protocol of docs/design.md and returns records with Meta's field names, types and threshold semantics, so
everything downstream (prior maps, caches) runs unchanged; the priors are of course not SAM's.

Proposals are connected components of intensity intervals between thresholds (multi-Otsu plus the valleys of the
histogram). The record scores mimic SAM's:

- ``stability_score``: SAM counts the pixels of a mask with logit > +1 over those with logit > -1. Here the "logit"
  of a candidate defined by an intensity interval ``[lo, hi)`` is the grey-level margin to the interval's ends, so
  the score is (#pixels of the component within ``[lo + delta, hi - delta)``) / (area of the connected component of
  ``[lo - delta, hi + delta)`` that contains it). Components with blurred edges, or that merge with their
  neighbours when the thresholds move, get low scores.
- ``predicted_iou``: a quality score in ``[0, 1]``: the contrast between the component's core (without its outer
  pixel layer) and a ring around it (beyond the first outside layer), ``d / (1 + d)`` with
  ``d = |mean_core - mean_ring| / (std_core + std_ring + 1)``, times a compactness factor. A clean compact region
  scores about 0.9, like a good SAM mask; elongated or low-contrast ones less.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.signal import find_peaks
from skimage.filters import threshold_multiotsu

__all__ = ["RegionProposalMasks", "box_nms"]

_WARNED = False
# ITU-R BT.709 luma, as skimage.color.rgb2gray; equal channels (replicated CT/MR slices) give the channel itself
_LUMA = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
# histogram resolution of the valley search; the threshold search uses ``nbins`` (its cost grows much faster)
_VALLEY_BINS = 128


def _warn_once() -> None:
    global _WARNED
    if not _WARNED:
        _WARNED = True
        warnings.warn(
            "priors#sam_model_type is 'fallback': classical region proposals (bundle.sam.fallback.RegionProposalMasks) "
            "stand in for SAM's automatic masks. These priors are not SAM priors; use a SAM model type (the "
            "default, lite_medsam, ships with the bundle's dependencies) to reproduce the methods.",
            stacklevel=3,
        )


def _dilate4(mask: np.ndarray) -> np.ndarray:
    """Cross-shaped binary dilation by array shifts (20x faster than ``ndi.binary_dilation`` on small crops)."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _erode4(mask: np.ndarray) -> np.ndarray:
    """Cross-shaped binary erosion by array shifts; outside the array counts as inside (no border erosion)."""
    out = mask.copy()
    out[1:] &= mask[:-1]
    out[:-1] &= mask[1:]
    out[:, 1:] &= mask[:, :-1]
    out[:, :-1] &= mask[:, 1:]
    return out


def box_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy box NMS with the contract of ``torchvision.ops.nms``, in numpy.

    For the few dozen boxes of one slice, torch's per-call overhead costs more than the NMS itself.

    Args:
        boxes: ``[N, 4]`` XYXY.
        scores: ``[N]``.
        iou_threshold: a box is dropped when its IoU with a kept, higher-scoring box is strictly greater.

    Returns:
        indices of the kept boxes, highest score first (ties in input order).
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[order]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    top_left = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    union = np.maximum(area[:, None] + area[None, :] - inter, np.finfo(np.float64).tiny)
    over = inter / union > iou_threshold
    keep = np.ones(len(order), dtype=bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1 :] &= ~over[i, i + 1 :]
    return order[keep].tolist()


class RegionProposalMasks:
    """Mask records from intensity intervals and their connected components, without SAM weights.

    For each slice: grayscale, Gaussian smoothing, ``classes - 1`` multi-Otsu thresholds plus the valleys of the
    intensity histogram; the bands between consecutive thresholds and the superlevel sets above each threshold are
    split into connected components, each a candidate mask. Candidates are filtered by size, by
    ``stability_score_thresh`` and ``pred_iou_thresh`` and de-duplicated by box NMS, with the same meaning as in
    SAM's automatic mask generator. Deterministic.

    Args:
        classes: number of multi-Otsu intensity classes (2 to 5). 3 separates background / soft tissue / bright
            structures of windowed CT. 5 is markedly slower (the threshold search grows as
            ``nbins ** (classes - 1)``).
        nbins: histogram bins between the slice's minimum and maximum for the multi-Otsu search.
        histogram_valleys: also threshold at the deepest minima of the smoothed log-histogram between intensity
            modes; separates organs a few grey levels apart that multi-Otsu, dominated by the large modes, merges.
        max_valleys: at most this many valley thresholds (the deepest).
        sigma: standard deviation (pixels) of the Gaussian smoothing applied before thresholding, which removes
            speckle components; 0 disables it.
        delta: intensity offset in grey levels (0-255 scale) of the stability score, the analogue of SAM's logit
            offset of 1.0; thresholds closer than ``delta`` are merged.
        min_area: smallest mask kept, as a fraction of the slice area.
        max_area: largest mask kept, as a fraction of the slice area.
        drop_background: drop components touching all four image borders (air, outside of the body or skull).
        connectivity: 1 for 4-connected, 2 for 8-connected components.
        pred_iou_thresh: keep a mask when its ``predicted_iou`` is strictly greater than this (as SAM). The default
            is lower than SAM's 0.88: these scores have their own scale (a clean compact region scores about 0.9).
        stability_score_thresh: keep a mask when its ``stability_score`` is at least this (as SAM; SAM's default
            0.95 keeps only sharp, isolated regions here).
        box_nms_thresh: IoU above which the box of a lower-``predicted_iou`` mask is suppressed by a kept one (as
            SAM); 1.0 disables NMS.
        compactness_weight: weight ``w`` in ``[0, 1]`` of compactness in ``predicted_iou``:
            ``contrast * (1 - w + w * compactness)``, compactness ``= min(1, 4 pi area / perimeter ** 2)``. Lower it
            to favour elongated structures (vessels).
        ring_width: width in pixels of the ring around a mask (beyond its first outside layer) against which its
            contrast is measured.

    Raises:
        ValueError: for a parameter outside its range.
    """

    def __init__(
        self,
        classes: int = 3,
        nbins: int = 64,
        histogram_valleys: bool = True,
        max_valleys: int = 4,
        sigma: float = 1.0,
        delta: float = 8.0,
        min_area: float = 0.001,
        max_area: float = 0.8,
        drop_background: bool = True,
        connectivity: int = 1,
        pred_iou_thresh: float = 0.5,
        stability_score_thresh: float = 0.8,
        box_nms_thresh: float = 0.7,
        compactness_weight: float = 0.5,
        ring_width: int = 3,
    ) -> None:
        if not 2 <= int(classes) <= 5:
            raise ValueError(f"classes must be between 2 and 5, got {classes}.")
        if int(nbins) < int(classes):
            raise ValueError(f"nbins must be at least classes ({classes}), got {nbins}.")
        if int(max_valleys) < 0:
            raise ValueError(f"max_valleys must be non-negative, got {max_valleys}.")
        if sigma < 0 or delta < 0:
            raise ValueError(f"sigma and delta must be non-negative, got sigma={sigma}, delta={delta}.")
        if not 0 <= min_area <= max_area <= 1:
            raise ValueError(f"need 0 <= min_area <= max_area <= 1, got min_area={min_area}, max_area={max_area}.")
        if connectivity not in (1, 2):
            raise ValueError(f"connectivity must be 1 or 2, got {connectivity}.")
        if not 0 <= compactness_weight <= 1:
            raise ValueError(f"compactness_weight must be in [0, 1], got {compactness_weight}.")
        if int(ring_width) < 1:
            raise ValueError(f"ring_width must be at least 1, got {ring_width}.")
        self.classes = int(classes)
        self.nbins = int(nbins)
        self.histogram_valleys = bool(histogram_valleys)
        self.max_valleys = int(max_valleys)
        self.sigma = float(sigma)
        self.delta = float(delta)
        self.min_area = float(min_area)
        self.max_area = float(max_area)
        self.drop_background = bool(drop_background)
        self.connectivity = int(connectivity)
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.box_nms_thresh = float(box_nms_thresh)
        self.compactness_weight = float(compactness_weight)
        self.ring_width = int(ring_width)
        self._structure = ndi.generate_binary_structure(2, self.connectivity)
        _warn_once()

    def signature(self) -> dict:
        """Everything that changes the output (JSON-serialisable; the prior cache key)."""
        return {
            "generator": "region_proposals",
            "version": 1,
            "classes": self.classes,
            "nbins": self.nbins,
            "histogram_valleys": self.histogram_valleys,
            "max_valleys": self.max_valleys,
            "sigma": self.sigma,
            "delta": self.delta,
            "min_area": self.min_area,
            "max_area": self.max_area,
            "drop_background": self.drop_background,
            "connectivity": self.connectivity,
            "pred_iou_thresh": self.pred_iou_thresh,
            "stability_score_thresh": self.stability_score_thresh,
            "box_nms_thresh": self.box_nms_thresh,
            "compactness_weight": self.compactness_weight,
            "ring_width": self.ring_width,
        }

    def generate_batch(self, images: Sequence[np.ndarray]) -> list[list[dict]]:
        """Mask records for each slice.

        Args:
            images: ``[H, W, 3]`` uint8 RGB slices.

        Returns:
            one list of records per slice with Meta's fields: ``segmentation`` (bool ``[H, W]``), ``area`` (int),
            ``bbox`` (XYWH floats; as in segment-anything, width = x_max - x_min of the mask's pixel indices),
            ``predicted_iou`` and ``stability_score`` (floats), ``point_coords`` (``[[x, y]]``, the mask's most
            interior pixel), ``crop_box`` (``[0, 0, W, H]``); highest ``predicted_iou`` first, ``[]`` for a constant
            slice.

        Raises:
            ValueError: for an image that is not ``[H, W, 3]`` uint8.
        """
        return [self.generate(image) for image in images]

    def generate(self, image: np.ndarray) -> list[dict]:
        """Mask records of one ``[H, W, 3]`` uint8 slice (see :meth:`generate_batch`)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an [H, W, 3] uint8 image, got shape {image.shape} and dtype {image.dtype}.")
        gray = image.astype(np.float32) @ _LUMA
        if self.sigma > 0:
            gray = ndi.gaussian_filter(gray, self.sigma)
        thresholds = self._thresholds(gray)
        if not thresholds:
            return []
        levels = [-np.inf, *thresholds, np.inf]
        # bands between consecutive thresholds, then superlevel sets (bright structures with inner detail); the top
        # band is already the last superlevel set
        intervals = list(zip(levels[:-1], levels[1:])) + [(t, np.inf) for t in levels[1:-2]]
        candidates: dict[tuple, dict] = {}
        for lo, hi in intervals:
            for candidate in self._interval_candidates(gray, lo, hi):
                # the same component can come from several intervals: keep its most stable version
                key = candidate["key"]
                if key not in candidates or candidate["stability_score"] > candidates[key]["stability_score"]:
                    candidates[key] = candidate
        candidates = list(candidates.values())
        if not candidates:
            return []
        # boxes as SAM's NMS sees them: XYXY with inclusive max pixel indices
        boxes = [[c["cols"].start, c["rows"].start, c["cols"].stop - 1, c["rows"].stop - 1] for c in candidates]
        keep = box_nms(np.array(boxes), np.array([c["predicted_iou"] for c in candidates]), self.box_nms_thresh)
        return [self._record(candidates[k], gray.shape) for k in keep]

    def _thresholds(self, gray: np.ndarray) -> list[float]:
        low, high = float(gray.min()), float(gray.max())
        if high - low < 1.0:  # less than one grey level: a blank slice
            return []
        # own histogram over the slice's range: threshold_multiotsu's search costs nbins ** (classes - 1)
        width = (high - low) / self.nbins
        counts = np.bincount(np.minimum(((gray - low) / width).astype(np.intp), self.nbins - 1).ravel(),
                             minlength=self.nbins)
        classes = min(self.classes, int(np.count_nonzero(counts)))
        if classes < 2:
            return []
        centers = low + (np.arange(self.nbins) + 0.5) * width
        thresholds = threshold_multiotsu(hist=(counts, centers), classes=classes).tolist()
        if self.histogram_valleys and self.max_valleys > 0:
            thresholds += self._valleys(gray, low, high)
        merged: list[float] = []
        for t in sorted(thresholds):
            if not merged or (t > merged[-1] and t - merged[-1] >= self.delta):
                merged.append(float(t))
        return merged

    def _valleys(self, gray: np.ndarray, low: float, high: float) -> list[float]:
        """Minima of the smoothed histogram between consecutive intensity modes, the ``max_valleys`` deepest."""
        width = (high - low) / _VALLEY_BINS
        index = np.minimum(((gray - low) / width).astype(np.intp), _VALLEY_BINS - 1)
        hist = ndi.gaussian_filter1d(np.bincount(index.ravel(), minlength=_VALLEY_BINS).astype(np.float64), 1.5)
        # log counts: a small organ's mode counts as much as the background's; a mode must be twice its valley
        log_hist = np.log1p(hist)
        modes, _ = find_peaks(np.concatenate([[-1.0], log_hist, [-1.0]]), prominence=math.log(2.0))
        modes -= 1
        valleys, depths = [], []
        for a, b in zip(modes[:-1], modes[1:]):
            v = a + int(np.argmin(log_hist[a : b + 1]))
            valleys.append(low + (v + 0.5) * width)
            depths.append(min(log_hist[a], log_hist[b]) - log_hist[v])
        deepest = np.argsort(-np.asarray(depths), kind="stable")[: self.max_valleys]
        return [valleys[i] for i in sorted(deepest.tolist())]

    def _interval_candidates(self, gray: np.ndarray, lo: float, hi: float) -> list[dict]:
        h, w = gray.shape
        labels, n = ndi.label((gray >= lo) & (gray < hi), structure=self._structure)
        if n == 0:
            return []
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        ok = (areas >= max(self.min_area * h * w, 1)) & (areas <= self.max_area * h * w)
        ok[0] = False
        if self.drop_background:
            on_all_borders = np.ones(n + 1, dtype=bool)
            for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
                on_all_borders &= np.bincount(edge, minlength=n + 1) > 0
            ok &= ~on_all_borders
        # stability (module docstring); the loose component is at least the component, so tight / area bounds it and
        # spares labelling the loose set when nothing can pass
        tight = (gray >= lo + self.delta) & (gray < hi - self.delta)
        tight_areas = np.bincount(labels[tight], minlength=n + 1)
        ok &= tight_areas / np.maximum(areas, 1) >= self.stability_score_thresh
        if not ok.any():
            return []
        loose_labels, _ = ndi.label((gray >= lo - self.delta) & (gray < hi + self.delta), structure=self._structure)
        loose_areas = np.bincount(loose_labels.ravel())
        boxes = ndi.find_objects(labels)
        candidates = []
        for k in np.flatnonzero(ok).tolist():
            rows, cols = boxes[k - 1]
            inside = labels[rows, cols] == k
            # the component lies inside one loose component: read its label at any pixel of the component
            first = np.unravel_index(int(np.argmax(inside)), inside.shape)
            stability = float(tight_areas[k] / loose_areas[loose_labels[rows, cols][first]])
            if stability < self.stability_score_thresh:
                continue
            iou = self._predicted_iou(gray, labels, k, rows, cols)
            if iou > self.pred_iou_thresh:
                candidates.append(
                    {
                        "key": (rows.start, rows.stop, cols.start, cols.stop, int(areas[k]), inside.tobytes()),
                        "inside": inside,
                        "rows": rows,
                        "cols": cols,
                        "area": int(areas[k]),
                        "predicted_iou": iou,
                        "stability_score": stability,
                    }
                )
        return candidates

    def _predicted_iou(self, gray: np.ndarray, labels: np.ndarray, k: int, rows: slice, cols: slice) -> float:
        """Contrast between the component and a ring around it, times a compactness factor, in ``[0, 1]``."""
        h, w = gray.shape
        pad = self.ring_width + 1
        y0, y1 = max(rows.start - pad, 0), min(rows.stop + pad, h)
        x0, x1 = max(cols.start - pad, 0), min(cols.stop + pad, w)
        inside = labels[y0:y1, x0:x1] == k
        # the smoothing blurs one pixel on either side of the outline: compare the core with the ring beyond that
        near = _dilate4(inside)
        grown = near
        for _ in range(self.ring_width):
            grown = _dilate4(grown)
        ring = grown & ~near
        core = _erode4(inside)
        patch = gray[y0:y1, x0:x1]
        values_in = patch[core] if core.any() else patch[inside]
        values_ring = patch[ring]
        if values_ring.size == 0:
            return 0.0
        d = abs(float(values_in.mean()) - float(values_ring.mean()))
        d /= float(values_in.std()) + float(values_ring.std()) + 1.0
        contrast = d / (1.0 + d)
        # crack length (pixel edges between inside and outside) x pi / 4 estimates the perimeter of a curved outline
        # (a disc: 8 r cracks -> 2 pi r); cracks along the image border are unknown and not counted
        cracks = np.count_nonzero(inside[:, 1:] != inside[:, :-1]) + np.count_nonzero(inside[1:] != inside[:-1])
        area = np.count_nonzero(inside)
        compactness = 1.0 if cracks == 0 else min(1.0, 4.0 * math.pi * area / (cracks * math.pi / 4) ** 2)
        return contrast * (1.0 - self.compactness_weight + self.compactness_weight * compactness)

    @staticmethod
    def _record(candidate: dict, shape: tuple[int, int]) -> dict:
        rows, cols, inside = candidate["rows"], candidate["cols"], candidate["inside"]
        segmentation = np.zeros(shape, dtype=bool)
        segmentation[rows, cols] = inside
        # most interior pixel (largest city-block distance to the outside), first in raster order
        depth = ndi.distance_transform_cdt(np.pad(inside, 1), metric="taxicab")[1:-1, 1:-1]
        py, px = np.unravel_index(int(np.argmax(depth)), depth.shape)
        h, w = shape
        return {
            "segmentation": segmentation,
            "area": candidate["area"],
            "bbox": [float(cols.start), float(rows.start), float(cols.stop - 1 - cols.start),
                     float(rows.stop - 1 - rows.start)],
            "predicted_iou": float(candidate["predicted_iou"]),
            "stability_score": float(candidate["stability_score"]),
            "point_coords": [[float(cols.start + px), float(rows.start + py)]],
            "crop_box": [0, 0, w, h],
        }
