"""Automatic masks with the semantics of Meta's ``SamAutomaticMaskGenerator``, at a fraction of its cost.

Same prompts (a ``points_per_side`` grid of single foreground points at cell centres, three masks per point), same
parameters with the same meaning (METHODS.md §1): keep a mask when ``predicted_iou > pred_iou_thresh`` and
``stability_score >= stability_score_thresh`` (stability = area at logit > +offset / area at logit > -offset),
box NMS at ``box_nms_thresh`` ranked by predicted IoU, records with Meta's fields.

What differs is where the work happens. Meta upsamples every candidate mask to the full slice before filtering and
keeps run-length encodings; here candidates are filtered by predicted IoU before any mask is computed, stability
scores and NMS boxes come from the low-resolution logits (SAM's own 4x-downsampled output), and only the masks that
survive NMS are upsampled with SAM's ``postprocess_masks``. Their stability score is then recomputed at full
resolution and the threshold applied again, so every returned record satisfies the thresholds exactly as Meta
defines them. Prompts of several slices share one decoder batch.

Only the single-crop mode (``crop_n_layers=0``, Meta's default) is implemented; ``min_mask_region_area`` is not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from bundle.sam.engine import SamEngine, SliceEmbeddings
from bundle.sam.torchvision_compat import batched_nms as _batched_nms_fallback
from bundle.sam.torchvision_compat import torchvision_available

__all__ = ["SamAutomaticMasks", "point_grid", "stability_score", "masks_to_boxes"]


def _nms(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> torch.Tensor:
    cats = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
    if torchvision_available():
        from torchvision.ops import batched_nms

        return batched_nms(boxes.float(), scores.float(), cats, iou_threshold=thresh)
    return _batched_nms_fallback(boxes, scores, cats, iou_threshold=thresh)


def point_grid(points_per_side: int) -> np.ndarray:
    """``[n*n, 2]`` (x, y) cell centres of an n x n grid on the unit square, row by row."""
    centres = (np.arange(points_per_side, dtype=np.float64) + 0.5) / points_per_side
    xs, ys = np.meshgrid(centres, centres)
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def stability_score(logits: torch.Tensor, mask_threshold: float, offset: float) -> torch.Tensor:
    """Area where logits exceed ``threshold + offset`` over the area where they exceed ``threshold - offset``."""
    high = (logits > mask_threshold + offset).flatten(-2).sum(-1, dtype=torch.int64)
    low = (logits > mask_threshold - offset).flatten(-2).sum(-1, dtype=torch.int64)
    return torch.where(low > 0, high.float() / low.clamp(min=1).float(), torch.ones_like(high, dtype=torch.float))


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` bool -> ``[N, 4]`` XYXY boxes with inclusive max indices (Meta's convention; 0s if empty)."""
    if masks.shape[0] == 0:
        return torch.zeros(0, 4, device=masks.device)
    h, w = masks.shape[-2:]
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    ar_w, ar_h = torch.arange(w, device=masks.device), torch.arange(h, device=masks.device)
    x0 = torch.where(cols, ar_w, w).min(dim=1).values
    x1 = torch.where(cols, ar_w, -1).max(dim=1).values
    y0 = torch.where(rows, ar_h, h).min(dim=1).values
    y1 = torch.where(rows, ar_h, -1).max(dim=1).values
    boxes = torch.stack([x0, y0, x1, y1], dim=1)
    return torch.where((x1 >= x0)[:, None], boxes, torch.zeros_like(boxes)).float()


@dataclass
class _Candidates:
    """Candidate masks of one slice, accumulated over prompt batches."""

    logits: list = field(default_factory=list)  # low-resolution logits, float16 to halve memory
    iou: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    points: list = field(default_factory=list)
    pending: int = 0  # prompts of this slice not decoded yet


class SamAutomaticMasks:
    """Automatic SAM masks for batches of slices (mask generator protocol of ``docs/design.md``).

    Args:
        engine: the :class:`~bundle.sam.engine.SamEngine` holding the model.
        points_per_side: the grid of single-point prompts is ``points_per_side x points_per_side``.
        points_per_batch: prompts decoded together (they may come from several slices); memory grows linearly.
        pred_iou_thresh: keep masks whose predicted IoU is strictly above this (Meta default 0.88; SAMAug 0.5).
        stability_score_thresh: keep masks whose stability score is at least this (default 0.95).
        stability_score_offset: logit offset of the stability score (default 1.0).
        box_nms_thresh: IoU above which the lower-scoring of two mask boxes is dropped (default 0.7; SAMAug 0.5).
        skip_background_points: optional speed-up, off by default (it changes the prompt set): grid points whose
            pixel is at or below ``background_level`` in all three channels are not decoded.
        background_level: uint8 level used by ``skip_background_points``.
    """

    def __init__(
        self,
        engine: SamEngine,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        skip_background_points: bool = False,
        background_level: int = 0,
    ) -> None:
        if points_per_side < 1 or points_per_batch < 1:
            raise ValueError("points_per_side and points_per_batch must be >= 1")
        self.engine = engine
        self.points_per_side = int(points_per_side)
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.box_nms_thresh = float(box_nms_thresh)
        self.skip_background_points = bool(skip_background_points)
        self.background_level = int(background_level)
        self.grid = point_grid(self.points_per_side)

    def signature(self) -> dict:
        return {
            "generator": "sam_automatic_masks",
            **self.engine.signature(),
            "points_per_side": self.points_per_side,
            "pred_iou_thresh": self.pred_iou_thresh,
            "stability_score_thresh": self.stability_score_thresh,
            "stability_score_offset": self.stability_score_offset,
            "box_nms_thresh": self.box_nms_thresh,
            "skip_background_points": self.skip_background_points,
            "background_level": self.background_level,
        }

    def _prompts(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slice index and (x, y) pixel coordinates of every prompt, slice-major."""
        h, w = images.shape[1:3]
        pts = self.grid * np.array([[w, h]])
        idx = np.repeat(np.arange(len(images)), len(pts))
        coords = np.tile(pts, (len(images), 1))
        if self.skip_background_points:
            px = np.minimum(coords.astype(int), [w - 1, h - 1])
            fg = images[idx, px[:, 1], px[:, 0]].max(axis=1) > self.background_level
            idx, coords = idx[fg], coords[fg]
        return idx, coords

    def generate_batch(self, images) -> list[list[dict]]:
        """Mask records for each ``[H, W, 3]`` uint8 slice (slices of one call must share their size)."""
        images = np.asarray(images) if not isinstance(images, np.ndarray) else images
        if len(images) == 0:
            return []
        if images.ndim != 4:
            sizes = {tuple(np.asarray(im).shape) for im in images}
            raise ValueError(f"slices of one batch must share their size, got {sorted(sizes)}")
        emb = self.engine.embed(images)
        return self.generate_from_embeddings(emb, images)

    def generate_from_embeddings(self, emb: SliceEmbeddings, images: np.ndarray) -> list[list[dict]]:
        """Mask records from already computed embeddings (the same embeddings can serve other prompts)."""
        idx, coords = self._prompts(images)
        n_slices = len(emb)
        cands = [_Candidates() for _ in range(n_slices)]
        for s in range(n_slices):
            cands[s].pending = int((idx == s).sum())
        results: list = [None] * n_slices
        for s in range(n_slices):
            if cands[s].pending == 0:
                results[s] = []
        for start in range(0, len(idx), self.points_per_batch):
            b_idx = torch.as_tensor(idx[start : start + self.points_per_batch])
            b_pts = torch.as_tensor(coords[start : start + self.points_per_batch], dtype=torch.float32)
            self._decode_batch(emb, b_idx, b_pts, cands)
            for s in torch.unique(b_idx).tolist():
                cands[s].pending -= int((b_idx == s).sum())
                if cands[s].pending == 0:
                    results[s] = self._finish_slice(cands[s], emb)
                    cands[s] = _Candidates()  # free the candidates' logits
        return results

    def _decode_batch(self, emb: SliceEmbeddings, b_idx, b_pts, cands) -> None:
        eng = self.engine
        decoded = eng.decode_tokens(
            emb, b_idx, point_coords=b_pts[:, None, :], point_labels=torch.ones(len(b_idx), 1, dtype=torch.int)
        )
        iou = decoded.iou[:, 1:]  # the three multimask outputs
        keep = iou > self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else torch.ones_like(iou, dtype=torch.bool)
        prompt_sel = keep.any(dim=1)
        if not bool(prompt_sel.any()):
            return
        logits = eng.mask_logits(decoded, prompt_sel.to(decoded.iou.device))  # [n, 3, 4h, 4w]
        keep = keep[prompt_sel]
        cand_logits = logits[keep]  # [k, 4h, 4w]
        cand_iou = iou[prompt_sel][keep]
        cand_slice = b_idx.to(keep.device)[prompt_sel].repeat_interleave(keep.sum(dim=1))
        cand_pts = b_pts.to(keep.device)[prompt_sel].repeat_interleave(keep.sum(dim=1), dim=0)
        # the low-resolution frame covers the padded input; only its top-left part holds the slice
        in_h, in_w = emb.input_size
        low_h, low_w = cand_logits.shape[-2:]
        valid_h = min(low_h, -(-in_h * low_h // eng.image_size))
        valid_w = min(low_w, -(-in_w * low_w // eng.image_size))
        valid = cand_logits[:, :valid_h, :valid_w]
        thr = eng.model.mask_threshold
        # empty masks are dropped: Meta's generator returns them with an undefined (0/0) stability score and a
        # zero box that never takes part in NMS; they add nothing to any prior
        ok = (valid > thr).flatten(1).any(dim=1)
        if self.stability_score_thresh > 0.0:
            ok &= stability_score(valid, thr, self.stability_score_offset) >= self.stability_score_thresh
        cand_logits, cand_iou, cand_slice, cand_pts, valid = (
            cand_logits[ok], cand_iou[ok], cand_slice[ok], cand_pts[ok], valid[ok]
        )
        boxes = self._low_res_boxes(valid > thr, emb, (low_h, low_w))
        for s in torch.unique(cand_slice).tolist():
            sel = cand_slice == s
            c = cands[s]
            c.logits.append(cand_logits[sel].to(torch.float16))
            c.iou.append(cand_iou[sel])
            c.boxes.append(boxes[sel])
            c.points.append(cand_pts[sel])

    def _low_res_boxes(self, masks: torch.Tensor, emb: SliceEmbeddings, low_shape: tuple) -> torch.Tensor:
        """XYXY boxes in original-slice pixels from low-resolution masks (for NMS only)."""
        boxes = masks_to_boxes(masks)
        h, w = emb.original_size
        in_h, in_w = emb.input_size
        # one low-resolution pixel spans (image_size / low) input pixels = that times (orig / input) slice pixels
        sx = self.engine.image_size / low_shape[1] * w / in_w
        sy = self.engine.image_size / low_shape[0] * h / in_h
        scale = torch.tensor([sx, sy, sx, sy], device=boxes.device)
        lo = boxes * scale
        lo[:, 2:] = (boxes[:, 2:] + 1) * scale[2:] - 1
        lo[:, 0::2] = lo[:, 0::2].clamp(0, w - 1)
        lo[:, 1::2] = lo[:, 1::2].clamp(0, h - 1)
        return lo

    def _finish_slice(self, c: _Candidates, emb: SliceEmbeddings) -> list[dict]:
        if not c.iou:
            return []
        iou, boxes, points = torch.cat(c.iou), torch.cat(c.boxes), torch.cat(c.points)
        keep = _nms(boxes, iou, self.box_nms_thresh)
        logits = torch.cat(c.logits)[keep]
        iou, points = iou[keep], points[keep]
        thr = self.engine.model.mask_threshold
        masks, stabs = [], []
        for start in range(0, len(logits), 32):  # bounded memory for large slices
            full = self.engine.upscale(logits[start : start + 32, None].float(), emb)[:, 0]  # [k, H, W]
            stabs.append(stability_score(full, thr, self.stability_score_offset))
            masks.append(full > thr)
        masks, stab = torch.cat(masks), torch.cat(stabs)
        ok = masks.flatten(1).any(dim=1)
        if self.stability_score_thresh > 0.0:
            ok &= stab >= self.stability_score_thresh
        masks, iou, points, stab = masks[ok], iou[ok], points[ok], stab[ok]
        boxes = masks_to_boxes(masks)
        h, w = emb.original_size
        masks_np, boxes_np = masks.cpu().numpy(), boxes.cpu().numpy()
        areas = masks.flatten(1).sum(1).cpu().numpy()
        records = []
        for i in range(len(masks_np)):
            x0, y0, x1, y1 = boxes_np[i].tolist()
            records.append(
                {
                    "segmentation": masks_np[i],
                    "area": int(areas[i]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "predicted_iou": float(iou[i]),
                    "point_coords": [points[i].tolist()],
                    "stability_score": float(stab[i]),
                    "crop_box": [0, 0, w, h],
                }
            )
        return records
