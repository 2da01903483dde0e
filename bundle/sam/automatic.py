"""Automatic masks with the semantics of Meta's ``SamAutomaticMaskGenerator``, at a fraction of its cost.

Same prompts (a ``points_per_side`` grid of single foreground points at cell centres, three masks per point), same
parameters with the same meaning (docs/methods.md §1): keep a mask when ``predicted_iou > pred_iou_thresh`` and
``stability_score >= stability_score_thresh`` (stability = area at logit > +offset / area at logit > -offset),
box NMS at ``box_nms_thresh`` ranked by predicted IoU, records with Meta's fields.

What differs is where the work happens. Meta upsamples every candidate mask to the full slice before filtering and
keeps run-length encodings; here candidates are filtered by predicted IoU before any mask is computed, stability
scores and NMS boxes come from the low-resolution logits (SAM's own 4x-downsampled output), and only the masks that
survive NMS are upsampled with SAM's ``postprocess_masks``. Their stability score is then recomputed at full
resolution and the threshold applied again, so every returned record satisfies the thresholds exactly as Meta
defines them. Prompts of several slices share one decoder batch.

Only the single-crop mode (``crop_n_layers=0``, Meta's default) is implemented; ``min_mask_region_area`` is not.

:class:`PromptGridMasks` holds everything but the prompts (batched decoding across slices, low-resolution stability
filtering, exact greedy NMS, records); :class:`SamAutomaticMasks` adds Meta's point grid and predicted-IoU filter, and
:class:`bundle.sam.box_grid.SamBoxGridMasks` a box grid for box-trained medical SAMs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from bundle.sam.engine import SamEngine, SliceEmbeddings

__all__ = ["PromptGridMasks", "SamAutomaticMasks", "point_grid", "stability_score", "masks_to_boxes",
           "exact_greedy_nms"]


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
    rank: list = field(default_factory=list)  # the score box NMS ranks by
    boxes: list = field(default_factory=list)
    prompts: list = field(default_factory=list)
    pending: int = 0  # prompts of this slice not decoded yet


class PromptGridMasks:
    """What every automatic-mask generator on a :class:`SamEngine` shares: prompts decoded in batches across slices,
    candidates filtered by stability score at low resolution, greedy box NMS, records with Meta's fields.

    Subclasses say which prompts a slice gets (:meth:`_prompts`) and how a batch of them becomes candidate masks
    (:meth:`_candidates`); ``rank_by`` names the score NMS ranks by.

    Args:
        engine: the :class:`~bundle.sam.engine.SamEngine` holding the model.
        points_per_batch: prompts decoded together (they may come from several slices); memory grows linearly.
        stability_score_thresh: keep masks whose stability score is at least this.
        stability_score_offset: logit offset of the stability score.
        box_nms_thresh: IoU above which the lower-ranked of two mask boxes is dropped.
        stability_band: candidates whose low-resolution stability score is within this distance of
            ``stability_score_thresh`` are re-scored at full resolution before the threshold is applied.
    """

    generator_name = ""
    rank_by = "predicted_iou"

    def __init__(
        self,
        engine: SamEngine,
        points_per_batch: int = 64,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        stability_band: float = 0.05,
    ) -> None:
        if points_per_batch < 1:
            raise ValueError("points_per_batch must be >= 1")
        self.engine = engine
        self.points_per_batch = int(points_per_batch)
        self.stability_score_thresh = float(stability_score_thresh)
        self.stability_score_offset = float(stability_score_offset)
        self.box_nms_thresh = float(box_nms_thresh)
        self.stability_band = float(stability_band)

    def signature(self) -> dict:
        """Everything that changes the masks (the prior cache's key); never builds the model."""
        return {
            "generator": self.generator_name,
            **self.engine.signature(),
            "stability_score_thresh": self.stability_score_thresh,
            "stability_score_offset": self.stability_score_offset,
            "box_nms_thresh": self.box_nms_thresh,
            "stability_band": self.stability_band,
        }

    # ---- what subclasses define ---------------------------------------------------------------------------------
    def _prompts(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slice index ``[N]`` and prompt coordinates ``[N, k]`` (pixels of the slice) of every prompt, slice-major."""
        raise NotImplementedError

    def _candidates(self, emb: SliceEmbeddings, b_idx: torch.Tensor, b_prompts: torch.Tensor):
        """Candidate masks of one prompt batch: ``(logits [k, 4h, 4w], predicted_iou [k], slice [k], prompt [k, :])``."""
        raise NotImplementedError

    def _prompt_fields(self, prompt: list) -> dict:
        """Record fields describing the prompt of a mask."""
        raise NotImplementedError

    # ---- shared pipeline -----------------------------------------------------------------------------------------
    def generate_batch(self, images) -> list[list[dict]]:
        """Mask records for each ``[H, W, 3]`` uint8 slice (slices of one call must share their size)."""
        if not isinstance(images, np.ndarray):
            sizes = sorted({tuple(np.shape(im)) for im in images})
            if len(sizes) > 1:
                raise ValueError(f"slices of one batch must share their size, got {sizes}")
            images = np.asarray(images)
        if len(images) == 0:
            return []
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected a batch of [H, W, 3] uint8 slices, got an array of shape {images.shape}")
        idx, prompts = self._prompts(images)
        if len(idx) == 0:  # no slice has a prompt (all background): nothing to encode
            return [[] for _ in images]
        emb = self.engine.embed(images)
        return self._generate(emb, idx, prompts)

    def generate_from_embeddings(self, emb: SliceEmbeddings, images: np.ndarray) -> list[list[dict]]:
        """Mask records from already computed embeddings (the same embeddings can serve other prompts)."""
        return self._generate(emb, *self._prompts(images))

    def _generate(self, emb: SliceEmbeddings, idx: np.ndarray, prompts: np.ndarray) -> list[list[dict]]:
        n_slices = len(emb)
        cands = [_Candidates() for _ in range(n_slices)]
        for s in range(n_slices):
            cands[s].pending = int((idx == s).sum())
        results: list = [[] if cands[s].pending == 0 else None for s in range(n_slices)]
        for start in range(0, len(idx), self.points_per_batch):
            b_idx = torch.as_tensor(idx[start : start + self.points_per_batch])
            b_prompts = torch.as_tensor(prompts[start : start + self.points_per_batch], dtype=torch.float32)
            self._decode_batch(emb, b_idx, b_prompts, cands)
            for s in torch.unique(b_idx).tolist():
                cands[s].pending -= int((b_idx == s).sum())
                if cands[s].pending == 0:
                    results[s] = self._finish_slice(cands[s], emb)
                    cands[s] = _Candidates()  # free the candidates' logits
        return results

    def _decode_batch(self, emb: SliceEmbeddings, b_idx, b_prompts, cands) -> None:
        cand_logits, cand_iou, cand_slice, cand_prompts = self._candidates(emb, b_idx, b_prompts)
        if len(cand_logits) == 0:
            return
        low_h, low_w = cand_logits.shape[-2:]
        valid = self._valid_part(cand_logits, emb)
        thr = self.engine.model.mask_threshold
        # empty masks are dropped: Meta's generator returns them with an undefined (0/0) stability score and a
        # zero box that never takes part in NMS; they add nothing to any prior
        ok = (valid > thr).flatten(1).any(dim=1)
        stab = stability_score(valid, thr, self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            # low-resolution stability decides clear cases; near the threshold the full-resolution score decides
            near = ok & ((stab - self.stability_score_thresh).abs() < self.stability_band)
            if bool(near.any()):
                stab[near] = self._full_resolution(cand_logits[near], emb)[1]
            ok &= stab >= self.stability_score_thresh
        rank = cand_iou if self.rank_by == "predicted_iou" else stab
        cand_logits, cand_iou, rank, cand_slice, cand_prompts, valid = (
            cand_logits[ok], cand_iou[ok], rank[ok], cand_slice[ok], cand_prompts[ok], valid[ok]
        )
        boxes = self._low_res_boxes(valid > thr, emb, (low_h, low_w))
        for s in torch.unique(cand_slice).tolist():
            sel = cand_slice == s
            c = cands[s]
            c.logits.append(cand_logits[sel].to(torch.float16))
            c.iou.append(cand_iou[sel])
            c.rank.append(rank[sel])
            c.boxes.append(boxes[sel])
            c.prompts.append(cand_prompts[sel])

    def _valid_part(self, low_res: torch.Tensor, emb: SliceEmbeddings) -> torch.Tensor:
        """The part of ``[k, 4h, 4w]`` low-resolution logits that holds the slice (the rest covers the padding)."""
        in_h, in_w = emb.input_size
        low_h, low_w = low_res.shape[-2:]
        size = self.engine.image_size
        return low_res[:, : min(low_h, -(-in_h * low_h // size)), : min(low_w, -(-in_w * low_w // size))]

    def _full_resolution(self, low_res: torch.Tensor, emb: SliceEmbeddings, chunk: int = 32):
        """Masks, stability scores and boxes of low-resolution logits upsampled by SAM (in chunks: bounded memory)."""
        thr = self.engine.model.mask_threshold
        masks, stabs = [], []
        for start in range(0, len(low_res), chunk):
            full = self.engine.upscale(low_res[start : start + chunk, None].float(), emb)[:, 0]  # [k, H, W]
            stabs.append(stability_score(full, thr, self.stability_score_offset))
            masks.append(full > thr)
        if not masks:
            empty = torch.zeros(0, *emb.original_size, dtype=torch.bool, device=low_res.device)
            return empty, torch.zeros(0, device=low_res.device), torch.zeros(0, 4, device=low_res.device)
        masks = torch.cat(masks)
        return masks, torch.cat(stabs), masks_to_boxes(masks)

    def _low_res_scale(self, emb: SliceEmbeddings, low_shape: tuple) -> tuple[float, float]:
        """Slice pixels per low-resolution pixel along x and y."""
        h, w = emb.original_size
        in_h, in_w = emb.input_size
        size = self.engine.image_size
        return size / low_shape[1] * w / in_w, size / low_shape[0] * h / in_h

    def _box_error(self, emb: SliceEmbeddings, low_shape: tuple) -> float:
        """Bound on |low-resolution box - full-resolution box| per coordinate, in slice pixels.

        A bilinearly upsampled logit is a convex combination of its four low-resolution neighbours, so the
        full-resolution mask edge lies within half a low-resolution pixel (``s`` slice pixels) of where the
        low-resolution edge maps to; half a slice pixel covers pixel-centre rounding and half a pixel the
        second step of SAM's two-step resize.
        """
        return max(self._low_res_scale(emb, low_shape)) / 2.0 + 1.0

    def _low_res_boxes(self, masks: torch.Tensor, emb: SliceEmbeddings, low_shape: tuple) -> torch.Tensor:
        """XYXY boxes in original-slice pixels from low-resolution masks (for NMS only)."""
        boxes = masks_to_boxes(masks)
        h, w = emb.original_size
        sx, sy = self._low_res_scale(emb, low_shape)
        scale = torch.tensor([sx, sy, sx, sy], device=boxes.device)
        lo = boxes * scale
        lo[:, 2:] = (boxes[:, 2:] + 1) * scale[2:] - 1
        lo[:, 0::2] = lo[:, 0::2].clamp(0, w - 1)
        lo[:, 1::2] = lo[:, 1::2].clamp(0, h - 1)
        return lo

    def _finish_slice(self, c: _Candidates, emb: SliceEmbeddings) -> list[dict]:
        if not c.iou:
            return []
        iou, rank, boxes, prompts = torch.cat(c.iou), torch.cat(c.rank), torch.cat(c.boxes), torch.cat(c.prompts)
        logits = torch.cat(c.logits)
        # greedy NMS on low-resolution boxes; a comparison the box error could flip is redone with exact boxes
        error = self._box_error(emb, tuple(logits.shape[-2:]))
        keep = exact_greedy_nms(boxes, rank, self.box_nms_thresh, error,
                                lambda idx: self._full_resolution(logits[idx], emb)[2], emb.original_size)
        masks, stab, boxes = self._full_resolution(logits[keep], emb)
        iou, prompts = iou[keep], prompts[keep]
        ok = masks.flatten(1).any(dim=1)
        if self.stability_score_thresh > 0.0:
            ok &= stab >= self.stability_score_thresh
        masks, iou, prompts, stab, boxes = masks[ok], iou[ok], prompts[ok], stab[ok], boxes[ok]
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
                    **self._prompt_fields(prompts[i].tolist()),
                    "stability_score": float(stab[i]),
                    "crop_box": [0, 0, w, h],
                }
            )
        return records


class SamAutomaticMasks(PromptGridMasks):
    """Automatic SAM masks from a point grid, with the semantics of Meta's ``SamAutomaticMaskGenerator``.

    For SAMs trained with point prompts (ViT-B/L/H). Box-trained medical SAMs ignore points and have an untrained
    IoU head: use :class:`bundle.sam.box_grid.SamBoxGridMasks` for them.

    Args:
        engine: the :class:`~bundle.sam.engine.SamEngine` holding the model.
        points_per_side: the grid of single-point prompts is ``points_per_side x points_per_side``.
        points_per_batch: prompts decoded together (they may come from several slices); memory grows linearly.
        pred_iou_thresh: keep masks whose predicted IoU is strictly above this (Meta default 0.88; SAMAug 0.5).
        stability_score_thresh: keep masks whose stability score is at least this (default 0.95).
        stability_score_offset: logit offset of the stability score (default 1.0).
        box_nms_thresh: IoU above which the lower-scoring of two mask boxes is dropped (default 0.7; SAMAug 0.5);
            masks are ranked by predicted IoU, as Meta's generator does.
        skip_background_points: optional speed-up, off by default (it changes the prompt set): grid points whose
            pixel is at or below ``background_level`` in all three channels are not decoded.
        background_level: uint8 level used by ``skip_background_points``.
        stability_band: candidates whose low-resolution stability score is within this distance of
            ``stability_score_thresh`` are re-scored at full resolution before the threshold is applied.
    """

    generator_name = "sam_automatic_masks"
    rank_by = "predicted_iou"

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
        stability_band: float = 0.05,
    ) -> None:
        super().__init__(engine, points_per_batch, stability_score_thresh, stability_score_offset, box_nms_thresh,
                         stability_band)
        if points_per_side < 1:
            raise ValueError("points_per_side must be >= 1")
        self.points_per_side = int(points_per_side)
        self.pred_iou_thresh = float(pred_iou_thresh)
        self.skip_background_points = bool(skip_background_points)
        self.background_level = int(background_level)
        self.grid = point_grid(self.points_per_side)

    def signature(self) -> dict:
        return {
            **super().signature(),
            "points_per_side": self.points_per_side,
            "pred_iou_thresh": self.pred_iou_thresh,
            "skip_background_points": self.skip_background_points,
            "background_level": self.background_level,
        }

    def _prompts(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = images.shape[1:3]
        pts = self.grid * np.array([[w, h]])
        idx = np.repeat(np.arange(len(images)), len(pts))
        coords = np.tile(pts, (len(images), 1))
        if self.skip_background_points:
            px = np.minimum(coords.astype(int), [w - 1, h - 1])
            fg = images[idx, px[:, 1], px[:, 0]].max(axis=1) > self.background_level
            idx, coords = idx[fg], coords[fg]
        return idx, coords

    def _candidates(self, emb: SliceEmbeddings, b_idx: torch.Tensor, b_pts: torch.Tensor):
        eng = self.engine
        decoded = eng.decode_tokens(
            emb, b_idx, point_coords=b_pts[:, None, :], point_labels=torch.ones(len(b_idx), 1, dtype=torch.int)
        )
        iou = decoded.iou[:, 1:]  # the three multimask outputs
        keep = iou > self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else torch.ones_like(iou, dtype=torch.bool)
        prompt_sel = keep.any(dim=1)
        if not bool(prompt_sel.any()):
            return torch.zeros(0, 1, 1), iou[:0, 0], b_idx[:0], b_pts[:0]
        logits = eng.mask_logits(decoded, prompt_sel.to(decoded.iou.device))  # [n, 3, 4h, 4w]
        keep = keep[prompt_sel]
        per_prompt = keep.sum(dim=1)
        return (logits[keep], iou[prompt_sel][keep], b_idx.to(keep.device)[prompt_sel].repeat_interleave(per_prompt),
                b_pts.to(keep.device)[prompt_sel].repeat_interleave(per_prompt, dim=0))

    def _prompt_fields(self, prompt: list) -> dict:
        return {"point_coords": [prompt]}


def _iou_bounds(box: np.ndarray, err: float, others: np.ndarray, others_err: np.ndarray, limit=None):
    """Lower and upper bounds of the IoU of ``box`` with each of ``others`` when each coordinate is off by its error.

    Boxes are XYXY with areas ``(x1 - x0) * (y1 - y0)``, as torchvision's NMS computes them.
    """
    def inter(a, b):
        w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
        h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
        return np.clip(w, 0, None) * np.clip(h, 0, None)

    def area(a):
        return np.clip(a[..., 2] - a[..., 0], 0, None) * np.clip(a[..., 3] - a[..., 1], 0, None)

    grow = np.array([-1.0, -1.0, 1.0, 1.0])
    big_a, big_b = box + err * grow, others + others_err[:, None] * grow
    if limit is not None:  # boxes of masks inside the image
        big_a = np.concatenate([np.maximum(big_a[:2], limit[:2]), np.minimum(big_a[2:], limit[2:])])
        big_b = np.concatenate([np.maximum(big_b[:, :2], limit[:2]), np.minimum(big_b[:, 2:], limit[2:])], axis=1)
    small_a, small_b = box - err * grow, others - others_err[:, None] * grow
    small_a[2:] = np.maximum(small_a[2:], small_a[:2])
    small_b[:, 2:] = np.maximum(small_b[:, 2:], small_b[:, :2])
    inter_hi, inter_lo = inter(big_a, big_b), inter(small_a, small_b)
    union_lo = np.maximum(area(small_a) + area(small_b) - inter_hi, np.maximum(area(small_a), area(small_b)))
    union_hi = area(big_a) + area(big_b) - inter_lo
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = np.where(union_hi > 0, inter_lo / union_hi, 0.0)
        hi = np.where(union_lo > 0, inter_hi / union_lo, np.where(inter_hi > 0, np.inf, 0.0))
    return lo, hi


def exact_greedy_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    thresh: float,
    error: float,
    exact_boxes,
    image_size: tuple | None = None,
    lookahead: int = 15,
) -> torch.Tensor:
    """Greedy box NMS (drop a box whose IoU with a kept, higher-scoring box exceeds ``thresh``) on approximate boxes.

    Every box starts as an approximation, off by at most ``error`` per coordinate. Each comparison the greedy pass
    makes is decided from IoU bounds when they are on one side of ``thresh``; otherwise both boxes are replaced by
    their exact values (``exact_boxes(indices) -> [k, 4]``) and the comparison is redone. The result equals NMS on
    exact boxes, while only boxes in borderline comparisons with kept boxes are ever made exact.

    Args:
        image_size: ``(H, W)``; exact boxes never leave the image, so the bounds are clipped to it.
        lookahead: when boxes must be made exact, the next ``lookahead`` approximate boxes in score order are made
            exact in the same call (one batched upsampling instead of many small ones; borderline comparisons
            come in runs of similar masks).

    Returns:
        indices of kept boxes, highest score first.
    """
    n = len(boxes)
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(scores.detach().cpu(), descending=True, stable=True)
    if thresh >= 1.0:  # no IoU exceeds 1: nothing can be suppressed
        return order
    order = order.numpy()
    b = boxes.detach().cpu().double().numpy().copy()
    err = np.full(n, float(error))
    limit = None if image_size is None else np.array([0, 0, image_size[1] - 1, image_size[0] - 1], dtype=float)
    kept: list = []
    for pos, i in enumerate(order):
        if kept:
            k = np.asarray(kept)
            lo, hi = _iou_bounds(b[i], err[i], b[k], err[k], limit)
            if (lo > thresh).any():
                continue
            unsure = hi > thresh
            if unsure.any():
                todo = [j for j in [i, *k[unsure].tolist()] if err[j] > 0]
                if todo:
                    ahead = order[pos + 1 :]
                    todo += ahead[err[ahead] > 0][:lookahead].tolist()
                    b[todo] = exact_boxes(torch.as_tensor(todo)).detach().cpu().double().numpy()
                    err[todo] = 0.0
                lo, _ = _iou_bounds(b[i], 0.0, b[k], np.zeros(len(k)), limit)
                if (lo > thresh).any():
                    continue
        kept.append(int(i))
    return torch.as_tensor(kept, dtype=torch.long)
