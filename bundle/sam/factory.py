"""The SAM engine of a model type, built without building SAM, and the prompt mode a model was trained on.

The engine holds the model's :class:`~bundle.sam.loading.SamInfo` (type, checkpoint and adapter sha256,
preprocessing) and loads the model on first use, so a run whose priors are all cached (the prior cache is keyed on
its signature) never pays for SAM. :class:`bundle.priors.settings.PriorSettings` chooses the mask generator over it.
"""

from __future__ import annotations

import logging

import torch
from monai.utils import look_up_option

__all__ = ["PROMPT_MODES", "FALLBACK", "make_engine", "resolve_prompt_mode"]

logger = logging.getLogger(__name__)

PROMPT_MODES = ("auto", "points", "boxes")
#: ``sam_model_type`` that selects the weight-free region-proposal generator
FALLBACK = "fallback"


def resolve_prompt_mode(prompt_mode: str, model_prompts: str) -> str:
    """``points`` or ``boxes``: ``auto`` follows what the model was trained on (its card's ``prompts``)."""
    mode = look_up_option(prompt_mode, PROMPT_MODES)
    return model_prompts if mode == "auto" else mode


def make_engine(model_type: str = "lite_medsam", checkpoint: str | None = None,
                device: str | torch.device | None = None, batch_size: int = 4, autocast: str = "auto",
                adapter: str | None = None):
    """The :class:`~bundle.sam.engine.SamEngine` of a SAM type (and adapter), loading the model on first use.

    Args:
        model_type: a SAM type of :data:`bundle.sam.loading.SAM_MODELS` (``fallback`` is not a SAM: no engine).
        checkpoint: SAM weights; ``None`` or ``""``: the weights an installed package ships (LiteMedSAM).
        device: where SAM runs (default: CUDA when available).
        batch_size: slices per image-encoder batch.
        autocast: ``none`` / ``bf16`` / ``fp16`` / ``auto`` (see :func:`bundle.sam.engine.resolve_autocast`).
        adapter: a SAM adapter file trained on the checkpoint (:mod:`bundle.sam.adapter`), applied when the model
            loads; ``None`` or ``""``: none.

    Raises:
        FileNotFoundError: the model type needs a checkpoint and none exists where it was given, or the adapter
            does not exist.
        ValueError: ``model_type`` is ``fallback``, or the adapter does not fit the model.
    """
    if model_type == FALLBACK:
        raise ValueError("priors#sam_model_type 'fallback' is not a SAM: this stage needs SAM image embeddings and "
                         "prompts (use 'lite_medsam', whose weights ship with the bundle's dependencies)")
    from bundle.sam.engine import SamEngine
    from bundle.sam.loading import sam_info

    info = sam_info(model_type, checkpoint or None, adapter or None)
    if info.checkpoint is None:
        raise FileNotFoundError(
            f"SAM {info.model_type} needs a checkpoint (priors#sam_checkpoint): random weights make no priors; see "
            "large_files.yml for the published checkpoints, use priors#sam_model_type 'lite_medsam' (weights ship with "
            "the bundle's dependencies) or 'fallback' (no SAM)"
        )
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return SamEngine(info, batch_size=batch_size, autocast=autocast, device=device)
