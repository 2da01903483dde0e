"""Automatic masks for box-trained medical SAMs (LiteMedSAM, MedSAM): a multi-scale grid of box prompts.

MedSAM and LiteMedSAM were fine-tuned with box prompts only. A point prompt gives them nothing useful (on a phantom
CT slice a point at the liver's centre gave Dice 0), and their IoU head was never trained (it predicts about 0.27
for every mask), so Meta's point-grid generator, which filters on predicted IoU, finds nothing with them. This is the
bundle's extension for them (no paper describes it; see ``docs/methods.md`` §1):

- prompts: square boxes of several sizes tiled over the slice's foreground bounding box, each kept when enough of it
  is foreground (a box over air or outside the skull prompts nothing worth segmenting);
- one mask per box (SAM's single-mask output, the one these models were trained to produce), optionally refined:
  these models segment best from a box that fits the object, which a grid box rarely does, so each mask's tight
  box is given back as the prompt (``refine_rounds`` times; measured in ``docs/prior_quality.md``);
- quality: stability score only (the predicted IoU is recorded but, untrained, never used); box NMS ranks by
  stability score;
- everything else as :class:`~bundle.sam.automatic.SamAutomaticMasks`: decoding batched across slices, filtering at
  low resolution, exact greedy NMS, the same record fields (``point_coords`` holds the box centre, ``box_prompt``
  the box).
"""

from __future__ import annotations

import numpy as np
import torch

from bundle.sam.automatic import PromptGridMasks
from bundle.sam.engine import SamEngine, SliceEmbeddings

__all__ = ["SamBoxGridMasks", "box_grid", "foreground_box"]


def foreground_box(foreground: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` bounds of the ``True`` pixels of an ``[H, W]`` mask, ends exclusive; ``None`` if empty."""
    rows, cols = np.flatnonzero(foreground.any(axis=1)), np.flatnonzero(foreground.any(axis=0))
    if len(rows) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _starts(low: int, high: int, side: float, step: float) -> np.ndarray:
    """Evenly spaced starts of boxes of ``side`` covering ``[low, high)`` with a stride of at most ``step``."""
    span = high - low - side
    if span <= 0:
        return np.array([float(low)])
    return np.linspace(low, high - side, int(np.ceil(span / step - 1e-9)) + 1)


def box_grid(region: tuple[int, int, int, int], box_sizes, box_stride: float) -> np.ndarray:
    """Square boxes of several sizes tiled over a region.

    Args:
        region: ``(x0, y0, x1, y1)``, ends exclusive (pixel edges).
        box_sizes: box sides as fractions of the region's longer side; a side longer than the region's extent along
            an axis is cut to that extent.
        box_stride: distance between neighbouring boxes as a fraction of their side (0.5: half overlap).

    Returns:
        ``[N, 4]`` float XYXY boxes in pixel-edge coordinates (what SAM's box prompt takes), without duplicates.
    """
    x0, y0, x1, y1 = region
    longer = max(x1 - x0, y1 - y0)
    boxes = []
    for size in box_sizes:
        side = float(size) * longer
        side_x, side_y = min(side, x1 - x0), min(side, y1 - y0)
        xs = _starts(x0, x1, side_x, box_stride * side_x)
        ys = _starts(y0, y1, side_y, box_stride * side_y)
        gx, gy = np.meshgrid(xs, ys)
        boxes.append(np.stack([gx.ravel(), gy.ravel(), gx.ravel() + side_x, gy.ravel() + side_y], axis=1))
    return np.unique(np.round(np.concatenate(boxes), 3), axis=0)


class SamBoxGridMasks(PromptGridMasks):
    """Automatic masks from a multi-scale grid of box prompts over each slice's foreground.

    Args:
        engine: the :class:`~bundle.sam.engine.SamEngine` holding a box-trained SAM.
        box_sizes: box sides as fractions of the foreground bounding box's longer side (1.0: the whole foreground).
        box_stride: distance between neighbouring boxes of one size, as a fraction of their side.
        min_box_foreground: a box is prompted only when at least this fraction of its pixels is foreground.
        foreground_level: a pixel is foreground when one of its channels exceeds this uint8 level (13 = 5 % of the
            range, as :class:`~bundle.sam.slices.SliceWindow` counts non-empty slices).
        refine_rounds: times each mask's tight bounding box is decoded again as the prompt (each round costs one more
            decoder pass per box).
        points_per_batch: prompts decoded together (they may come from several slices); memory grows linearly.
        stability_score_thresh: keep masks whose stability score is at least this.
        stability_score_offset: logit offset of the stability score.
        box_nms_thresh: IoU above which the less stable of two mask boxes is dropped.
        stability_band: see :class:`~bundle.sam.automatic.PromptGridMasks`. The default, 1.0, scores every
            candidate at full resolution: here the stability score also ranks the masks for NMS, and a
            low-resolution score changed the kept set against segment-anything's own pipeline (one mask in 87 in
            ``scripts/bench_lite_medsam.py``); upsampling a single mask per box costs little next to its decoding.
    """

    generator_name = "sam_box_grid_masks"
    rank_by = "stability_score"

    def __init__(
        self,
        engine: SamEngine,
        box_sizes=(0.5, 0.25),
        box_stride: float = 0.5,
        min_box_foreground: float = 0.5,
        foreground_level: int = 13,
        refine_rounds: int = 1,
        points_per_batch: int = 64,
        stability_score_thresh: float = 0.7,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.5,
        stability_band: float = 1.0,
    ) -> None:
        super().__init__(engine, points_per_batch, stability_score_thresh, stability_score_offset, box_nms_thresh,
                         stability_band)
        self.box_sizes = tuple(float(s) for s in box_sizes)
        if not self.box_sizes or not all(0.0 < s <= 1.0 for s in self.box_sizes):
            raise ValueError(f"box_sizes must be fractions in (0, 1], got {list(box_sizes)}")
        if not 0.0 < box_stride <= 1.0:
            raise ValueError(f"box_stride must be in (0, 1], got {box_stride}")
        if not 0.0 <= min_box_foreground <= 1.0:
            raise ValueError(f"min_box_foreground must be in [0, 1], got {min_box_foreground}")
        if refine_rounds < 0:
            raise ValueError(f"refine_rounds must be >= 0, got {refine_rounds}")
        self.box_stride = float(box_stride)
        self.min_box_foreground = float(min_box_foreground)
        self.foreground_level = int(foreground_level)
        self.refine_rounds = int(refine_rounds)

    def signature(self) -> dict:
        return {
            **super().signature(),
            "box_sizes": list(self.box_sizes),
            "box_stride": self.box_stride,
            "min_box_foreground": self.min_box_foreground,
            "foreground_level": self.foreground_level,
            "refine_rounds": self.refine_rounds,
        }

    def slice_boxes(self, image: np.ndarray) -> np.ndarray:
        """``[N, 4]`` XYXY box prompts of one ``[H, W, 3]`` uint8 slice (none for an empty slice)."""
        foreground = image.max(axis=-1) > self.foreground_level
        region = foreground_box(foreground)
        if region is None:
            return np.zeros((0, 4))
        boxes = box_grid(region, self.box_sizes, self.box_stride)
        # foreground fraction of each box from an integral image (pixels whose centre lies inside the box)
        integral = np.pad(foreground.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        x0, y0 = np.ceil(boxes[:, 0] - 0.5).astype(int), np.ceil(boxes[:, 1] - 0.5).astype(int)
        x1, y1 = np.ceil(boxes[:, 2] - 0.5).astype(int), np.ceil(boxes[:, 3] - 0.5).astype(int)
        inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
        area = np.maximum((x1 - x0) * (y1 - y0), 1)
        return boxes[inside / area >= self.min_box_foreground]

    def _prompts(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        per_slice = [self.slice_boxes(im) for im in images]
        idx = np.repeat(np.arange(len(images)), [len(b) for b in per_slice])
        return idx, np.concatenate(per_slice) if per_slice else np.zeros((0, 4))

    def _decode(self, emb: SliceEmbeddings, b_idx: torch.Tensor, boxes: torch.Tensor):
        decoded = self.engine.decode_tokens(emb, b_idx, boxes=boxes)
        return self.engine.mask_logits(decoded, multimask_output=False)[:, 0], decoded.iou[:, 0]  # [n, 4h, 4w], [n]

    def _candidates(self, emb: SliceEmbeddings, b_idx: torch.Tensor, b_boxes: torch.Tensor):
        logits, iou = self._decode(emb, b_idx, b_boxes)
        boxes = b_boxes.to(logits.device)
        for _ in range(self.refine_rounds):
            masks = self._valid_part(logits, emb) > self.engine.model.mask_threshold
            found = masks.flatten(1).any(dim=1)
            if not bool(found.any()):
                break
            tight = self._low_res_boxes(masks, emb, tuple(logits.shape[-2:]))
            tight[:, 2:] += 1.0  # inclusive last pixel -> pixel edge, as box prompts are given
            boxes = torch.where(found[:, None], tight, boxes)
            logits, iou = self._decode(emb, b_idx, boxes)
        return logits, iou, b_idx.to(logits.device), boxes

    def _prompt_fields(self, prompt: list) -> dict:
        x0, y0, x1, y1 = prompt
        return {"point_coords": [[(x0 + x1) / 2.0, (y0 + y1) / 2.0]], "box_prompt": [x0, y0, x1, y1]}
