"""Choose the mask generator from configuration: SAM's automatic masks with a checkpoint, the fallback without."""

from __future__ import annotations

import logging
from typing import Mapping

import torch

__all__ = ["make_mask_generator"]

logger = logging.getLogger(__name__)


def make_mask_generator(
    model_type: str = "vit_b",
    checkpoint: str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 4,
    autocast: str = "auto",
    amg: Mapping | None = None,
    fallback: Mapping | None = None,
):
    """Build the mask generator that feeds every prior.

    Args:
        model_type: SAM architecture (see :data:`bundle.sam.SAM_CONFIGS`).
        checkpoint: SAM weights; ``None`` or ``""`` selects the weight-free region-proposal fallback
            (:class:`bundle.sam.fallback.RegionProposalMasks`), which warns once and is recorded in cache manifests.
        device: where SAM runs (default: CUDA when available).
        batch_size: slices per image-encoder batch.
        autocast: ``none`` / ``bf16`` / ``fp16`` / ``auto`` (see :class:`bundle.sam.SamEngine`).
        amg: arguments of :class:`bundle.sam.automatic.SamAutomaticMasks` (points_per_side, thresholds ...).
        fallback: arguments of :class:`bundle.sam.fallback.RegionProposalMasks`.
    """
    if not checkpoint:
        from bundle.sam.fallback import RegionProposalMasks

        return RegionProposalMasks(**dict(fallback or {}))
    from bundle.sam.automatic import SamAutomaticMasks
    from bundle.sam.engine import SamEngine
    from bundle.sam.loading import load_sam

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_sam(model_type, checkpoint, device=device)
    return SamAutomaticMasks(SamEngine(model, batch_size=batch_size, autocast=autocast), **dict(amg or {}))
