"""Prompts from class activation maps and masks: tight boxes, the central fallback box, the dense embedding guidance.

SAM-Mix (METHODS.md §4) prompts SAM with what a slice classifier's Grad-CAM points at: the CAM is min-max scaled,
thresholded (0.4), and the tight box around the kept pixels becomes the box prompt; a slice whose CAM keeps nothing
gets the central box ``[W/4, H/4, 3W/4, 3H/4]``. The same binary CAM, averaged onto the image-embedding grid, is added
to SAM's image embedding (:func:`embedding_guidance`).

Boxes are ``XYXY`` in pixels of the slice, ``x`` along the last (width) axis, on pixel edges: pixel ``i`` spans
``[i, i + 1)`` (the frame SAM scales prompts in), so a mask covering columns 3..7 gives ``x0 = 3, x1 = 8``. With
inclusive indices (``x1 = 7``) the box would cut a pixel off the far side, which on a 64-pixel slice resized to
SAM's 256 input is 4 input pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["central_boxes", "mask_boxes", "cam_boxes", "embedding_guidance"]


def central_boxes(batch: int, height: int, width: int, device=None) -> torch.Tensor:
    """``[batch, 4]`` copies of the central box ``[W/4, H/4, 3W/4, 3H/4]`` (the fallback of an empty CAM)."""
    box = torch.tensor([width / 4, height / 4, 3 * width / 4, 3 * height / 4], dtype=torch.float32, device=device)
    return box.expand(batch, 4).clone()


def mask_boxes(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tight boxes of binary masks.

    Args:
        masks: ``[B, 1, H, W]`` (or ``[B, H, W]``) binary masks.

    Returns:
        ``(boxes [B, 4] float32 XYXY, empty [B] bool)``; an empty mask gets the central box and ``empty = True``.
    """
    if masks.ndim == 4:
        if masks.shape[1] != 1:
            raise ValueError(f"expected one mask per slice [B, 1, H, W], got {tuple(masks.shape)}")
        masks = masks[:, 0]
    if masks.ndim != 3:
        raise ValueError(f"expected masks [B, H, W] or [B, 1, H, W], got {tuple(masks.shape)}")
    masks = masks.bool()
    batch, height, width = masks.shape
    rows, cols = masks.any(dim=2), masks.any(dim=1)  # [B, H], [B, W]
    empty = ~rows.any(dim=1)
    y_index = torch.arange(height, device=masks.device).expand(batch, height)
    x_index = torch.arange(width, device=masks.device).expand(batch, width)
    big = max(height, width) + 1
    y0 = torch.where(rows, y_index, big).amin(dim=1)
    y1 = torch.where(rows, y_index, -1).amax(dim=1)
    x0 = torch.where(cols, x_index, big).amin(dim=1)
    x1 = torch.where(cols, x_index, -1).amax(dim=1)
    boxes = torch.stack([x0, y0, x1 + 1, y1 + 1], dim=1).float()  # far edges of the last pixels
    fallback = central_boxes(batch, height, width, masks.device)
    return torch.where(empty[:, None], fallback, boxes), empty


def cam_boxes(cams: torch.Tensor, threshold: float = 0.4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Box prompts from min-max scaled CAMs.

    Args:
        cams: ``[B, 1, H, W]`` class activation maps in ``[0, 1]`` (min-max scaled per slice, as
            :func:`bundle.networks.grad_cam.grad_cam` returns them).
        threshold: a pixel belongs to the CAM mask when its value is ``>= threshold`` (0.4 in SAM-Mix).

    Returns:
        ``(boxes [B, 4], cam_masks [B, 1, H, W] float 0/1, empty [B] bool)``: empty CAMs (all below the threshold,
        or flat maps, which Grad-CAM returns as all zero) get the central box.
    """
    if cams.ndim != 4 or cams.shape[1] != 1:
        raise ValueError(f"expected CAMs [B, 1, H, W], got {tuple(cams.shape)}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"the CAM threshold must be in (0, 1], got {threshold}")
    masks = (cams >= threshold).float()
    boxes, empty = mask_boxes(masks)
    return boxes, masks, empty


def embedding_guidance(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Binary masks in the encoder's input frame averaged onto the image-embedding grid: ``[B, 1, h, w]``.

    Each embedding cell gets the fraction of its input pixels inside the mask (area averaging), the dense guidance
    SAM-Mix adds to every channel of the image embedding.
    """
    return F.adaptive_avg_pool2d(masks.float(), tuple(grid))
