"""Choose the mask generator from configuration: SAM's automatic masks (point or box grid), or the weight-free fallback.

The generator is built without building SAM: its engine holds the model's :class:`~bundle.sam.loading.SamInfo`
(type, checkpoint and adapter sha256, preprocessing) and loads the model on first use, so a run whose priors are all
cached (the prior cache is keyed on :meth:`signature`) never pays for SAM.
"""

from __future__ import annotations

import logging
from typing import Mapping

import torch
from monai.utils import look_up_option

__all__ = ["PROMPT_MODES", "FALLBACK", "make_engine", "make_mask_generator", "resolve_prompt_mode"]

logger = logging.getLogger(__name__)

PROMPT_MODES = ("auto", "points", "boxes")
#: ``sam_model_type`` that selects the weight-free region-proposal generator
FALLBACK = "fallback"


def resolve_prompt_mode(prompt_mode: str, model_prompts: str) -> str:
    """``points`` or ``boxes``: ``auto`` follows what the model was trained on (its card's ``prompts``)."""
    mode = look_up_option(prompt_mode, PROMPT_MODES)
    return model_prompts if mode == "auto" else mode


def make_mask_generator(
    model_type: str = "lite_medsam",
    checkpoint: str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 4,
    autocast: str = "auto",
    prompt_mode: str = "auto",
    amg: Mapping | None = None,
    box_grid: Mapping | None = None,
    fallback: Mapping | None = None,
    adapter: str | None = None,
):
    """Build the mask generator that feeds every prior.

    Args:
        model_type: a SAM type of :data:`bundle.sam.loading.SAM_MODELS` (``lite_medsam``, ``vit_b``, ...) or
            ``fallback`` for the weight-free region-proposal generator
            (:class:`bundle.sam.fallback.RegionProposalMasks`; its priors are not SAM priors, and it says so).
        checkpoint: SAM weights; ``None`` or ``""``: the weights an installed package ships (LiteMedSAM). The other
            types need a checkpoint (see ``large_files.yml``).
        device: where SAM runs (default: CUDA when available).
        batch_size: slices per image-encoder batch.
        autocast: ``none`` / ``bf16`` / ``fp16`` / ``auto`` (see :func:`bundle.sam.engine.resolve_autocast`).
        prompt_mode: ``points`` (Meta's point grid, :class:`bundle.sam.automatic.SamAutomaticMasks`), ``boxes`` (a
            box grid, :class:`bundle.sam.box_grid.SamBoxGridMasks`) or ``auto`` (boxes for box-trained models such
            as LiteMedSAM and MedSAM, points for SAM ViT-B/L/H).
        amg: arguments of :class:`~bundle.sam.automatic.SamAutomaticMasks` (points_per_side, thresholds ...).
        box_grid: arguments of :class:`~bundle.sam.box_grid.SamBoxGridMasks` (box_sizes, box_stride ...).
        fallback: arguments of :class:`~bundle.sam.fallback.RegionProposalMasks`.
        adapter: a SAM adapter file trained on the checkpoint (:mod:`bundle.sam.adapter`: LoRA, prompt encoder and
            mask decoder of a fine-tuning run), applied when the model loads; ``None`` or ``""``: none. Its sha256
            joins the prior cache's key.

    Raises:
        FileNotFoundError: the model type needs a checkpoint and none exists where it was given, or the adapter
            does not exist.
        ValueError: the adapter does not fit the model (another type or checkpoint), or one is given with
            ``fallback``.
    """
    if model_type == FALLBACK:
        if adapter:
            raise ValueError(f"sam_model_type 'fallback' is not a SAM: it cannot use the SAM adapter {adapter} "
                             "(set sam_adapter to null, or a SAM model type)")
        from bundle.sam.fallback import RegionProposalMasks

        return RegionProposalMasks(**dict(fallback or {}))
    engine = make_engine(model_type, checkpoint, device, batch_size, autocast, adapter)
    if resolve_prompt_mode(prompt_mode, engine.info.prompts) == "boxes":
        from bundle.sam.box_grid import SamBoxGridMasks

        return SamBoxGridMasks(engine, **dict(box_grid or {}))
    from bundle.sam.automatic import SamAutomaticMasks

    return SamAutomaticMasks(engine, **dict(amg or {}))


def make_engine(model_type: str = "lite_medsam", checkpoint: str | None = None,
                device: str | torch.device | None = None, batch_size: int = 4, autocast: str = "auto",
                adapter: str | None = None):
    """The :class:`~bundle.sam.engine.SamEngine` of a SAM type (and adapter), loading the model on first use.

    Args: as :func:`make_mask_generator` (``fallback`` is not a SAM and has no engine).

    Raises:
        FileNotFoundError: the model type needs a checkpoint and none exists where it was given, or the adapter
            does not exist.
        ValueError: ``model_type`` is ``fallback``, or the adapter does not fit the model.
    """
    if model_type == FALLBACK:
        raise ValueError("sam_model_type 'fallback' is not a SAM: this stage needs SAM image embeddings and prompts "
                         "(use 'lite_medsam', whose weights ship with the bundle's dependencies)")
    from bundle.sam.engine import SamEngine
    from bundle.sam.loading import sam_info

    info = sam_info(model_type, checkpoint or None, adapter or None)
    if info.checkpoint is None:
        raise FileNotFoundError(
            f"SAM {info.model_type} needs a checkpoint (sam_checkpoint): random weights make no priors; see "
            "large_files.yml for the published checkpoints, use sam_model_type 'lite_medsam' (weights ship with "
            "the bundle's dependencies) or 'fallback' (no SAM)"
        )
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return SamEngine(info, batch_size=batch_size, autocast=autocast, device=device)
