"""SAMAug inference: which network input to run (``infer_mode``) and how the evaluator batches image and prior.

docs/methods.md §2, ``infer_mode``:

- ``aug_only``: the network on the prior-augmented input.
- ``raw``: the network on the raw input (priors zero, same layout), e.g. to measure what the priors add.
- ``entropy_select``: run both and keep, per sample, the logits whose sigmoid probabilities have the lower mean
  binary entropy (``entropy="binary"``), the higher mean ``|p - 0.5|`` (``entropy="margin"``), or the higher mean
  ``|q - 0.5|`` of ``q`` the per-image min-max of ``p`` (``entropy="margin_minmax"``, exactly the authors' rule:
  their test script min-max scales each sigmoid map before the margin). A sample is an image for 2D batches and a
  volume for 3D batches; ``selection="slice"`` selects per axial slice (last spatial axis) instead, the authors'
  per-image rule for a 2D network run slice by slice on a volume.

The evaluator's batch is ``torch.cat([image, prior], dim=1)`` (:class:`SamAugPrepareBatch`) so that any MONAI
inferer (``SimpleInferer``, ``SlidingWindowInferer``, ``SliceInferer``) can be wrapped: the wrapped inferer only
ever sees the final network input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from monai.inferers import Inferer
from monai.utils import CommonKeys, look_up_option

from bundle.workflows.common import options
from bundle.workflows.segmentation.inputs import PRIOR_MODES, build_network_input, raw_network_input, split_image_prior

__all__ = ["INFER_MODES", "ENTROPY_MODES", "SamAugInferer", "SamAugPrepareBatch", "selection_score"]

INFER_MODES = options.INFER_MODES  # recorded in model cards: the names live in common/options.py
ENTROPY_MODES = options.ENTROPY_MODES
SELECTION_UNITS = ("sample", "slice")


def selection_score(logits: torch.Tensor, entropy: str = "binary", selection: str = "sample") -> torch.Tensor:
    """Confidence score of logits ``[B, C, *spatial]``: higher is more confident.

    Args:
        logits: network output before the sigmoid.
        entropy: ``binary``: minus the mean binary entropy of ``p = sigmoid(logits)``; ``margin``: mean
            ``|p - 0.5|``; ``margin_minmax``: mean ``|q - 0.5|`` with ``q = (p - min p) / (max p - min p + 1e-8)``,
            the minimum and maximum taken per output channel over the scored unit (the sample, or the slice), as
            the authors' code does per image. Min-max moves the threshold 0.5 to the middle of the map's range, so
            a confident but one-sided map (all ``p`` near 1) scores low; the two margins agree on most pairs, not
            all (``docs/methods.md`` §2).
        selection: ``sample`` -> one score per sample ``[B]``; ``slice`` -> one per sample and slice along the last
            spatial axis ``[B, D]``.

    Returns:
        the score tensor (float32).
    """
    entropy = look_up_option(entropy, ENTROPY_MODES)
    selection = look_up_option(selection, SELECTION_UNITS)
    logits = logits.float()
    if entropy == "binary":
        p = torch.sigmoid(logits)
        # H(p) = -p log p - (1 - p) log(1 - p), with log-sigmoid for stability at large |logits|
        per_voxel = p * torch.nn.functional.logsigmoid(logits) + (1 - p) * torch.nn.functional.logsigmoid(-logits)
    elif entropy == "margin":
        per_voxel = (torch.sigmoid(logits) - 0.5).abs()
    else:
        per_voxel = (_minmax_per_unit(torch.sigmoid(logits), selection) - 0.5).abs()
    if selection == "slice":
        if logits.ndim < 4:
            raise ValueError(f"selection='slice' needs at least two spatial dims, got shape {tuple(logits.shape)}.")
        return per_voxel.movedim(-1, 1).flatten(2).mean(dim=2)
    return per_voxel.flatten(1).mean(dim=1)


def _minmax_per_unit(p: torch.Tensor, selection: str) -> torch.Tensor:
    """``(p - min) / (max - min + 1e-8)`` per sample and channel, and per axial slice with ``selection="slice"``
    (the authors' per-image scaling, with their epsilon)."""
    if selection == "slice":
        if p.ndim < 4:
            raise ValueError(f"selection='slice' needs at least two spatial dims, got shape {tuple(p.shape)}.")
        dims = tuple(range(2, p.ndim - 1))  # the in-slice axes; the last axis indexes the slices
    else:
        dims = tuple(range(2, p.ndim))
    low, high = p.amin(dim=dims, keepdim=True), p.amax(dim=dims, keepdim=True)
    return (p - low) / (high - low + 1e-8)


class SamAugInferer(Inferer):
    """Run a wrapped inferer on the SAMAug network input built from ``torch.cat([image, prior], dim=1)``.

    Args:
        inferer: the MONAI inferer that runs the network on a network input (``SimpleInferer``,
            ``SlidingWindowInferer``, ``SliceInferer`` for a 2D network on volumes, ...).
        prior_mode: one of ``"add"``, ``"channels"``, ``"concat"``, ``"none"``.
        infer_mode: one of :data:`INFER_MODES`; with ``prior_mode="none"`` only ``raw`` / ``aug_only`` (identical).
        image_channels: channels of the image part of the inputs; the prior part follows.
        prior_scale: the segmentation prior is divided by it (as in training).
        entropy: ``binary``, ``margin`` or ``margin_minmax``, the ``entropy_select`` criterion (see
            :func:`selection_score`).
        prior_channels: channels of the prior part.
        selection: ``sample`` (per image in 2D, per volume in 3D) or ``slice`` (per axial slice).

    Attributes:
        last_selection: after an ``entropy_select`` call, a bool tensor (``[B]`` or ``[B, D]``), True where the
            augmented prediction was kept.
    """

    def __init__(
        self,
        inferer: Inferer | Callable,
        prior_mode: str,
        infer_mode: str = "aug_only",
        image_channels: int = 1,
        prior_scale: float = 1.0,
        entropy: str = "binary",
        prior_channels: int = 2,
        selection: str = "sample",
    ) -> None:
        self.inferer = inferer
        self.prior_mode = look_up_option(prior_mode, PRIOR_MODES)
        self.infer_mode = look_up_option(infer_mode, INFER_MODES)
        if self.prior_mode == "none" and self.infer_mode == "entropy_select":
            raise ValueError(
                "infer_mode='entropy_select' compares the raw and the prior-augmented prediction, but "
                "prior_mode='none' has no prior: use infer_mode='raw' (or 'aug_only', identical)."
            )
        if int(image_channels) < 1:
            raise ValueError(f"image_channels must be >= 1, got {image_channels}.")
        if not prior_scale > 0:
            raise ValueError(f"prior_scale must be > 0, got {prior_scale}.")
        self.image_channels = int(image_channels)
        self.prior_channels = int(prior_channels)
        self.prior_scale = float(prior_scale)
        self.entropy = look_up_option(entropy, ENTROPY_MODES)
        self.selection = look_up_option(selection, SELECTION_UNITS)
        self.last_selection: torch.Tensor | None = None

    def __call__(self, inputs: torch.Tensor, network: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Predict logits for ``inputs`` ``[B, image_channels (+ prior_channels), *spatial]``.

        In ``raw`` mode the prior part may be left out.
        """
        image, prior = split_image_prior(inputs, self.prior_mode, self.image_channels, self.prior_channels)
        if self.prior_mode == "none":
            return self.inferer(image, network, *args, **kwargs)
        raw = raw_network_input(image, self.prior_mode, self.prior_channels)
        if self.infer_mode == "raw":
            return self.inferer(raw, network, *args, **kwargs)
        if prior is None:
            raise ValueError(
                f"infer_mode={self.infer_mode!r} needs the prior: inputs have only the {self.image_channels} image "
                f"channels, expected {self.image_channels + self.prior_channels} (image then prior). Prepare the "
                "batch with SamAugPrepareBatch and the same prior_mode."
            )
        augmented = build_network_input(image, prior, self.prior_mode, self.prior_scale)
        pred_aug = self.inferer(augmented, network, *args, **kwargs)
        if self.infer_mode == "aug_only":
            return pred_aug
        pred_raw = self.inferer(raw, network, *args, **kwargs)
        keep_aug = selection_score(pred_aug, self.entropy, self.selection) >= selection_score(
            pred_raw, self.entropy, self.selection
        )
        self.last_selection = keep_aug.detach()
        if self.selection == "slice":
            # [B, D] -> [B, 1, 1, ..., D]: broadcast over channels and in-slice axes
            mask = keep_aug.reshape(keep_aug.shape[0], *([1] * (pred_aug.ndim - 2)), keep_aug.shape[1])
        else:
            mask = keep_aug.reshape(-1, *([1] * (pred_aug.ndim - 1)))
        return torch.where(mask.to(pred_aug.device), pred_aug, pred_raw)


class SamAugPrepareBatch:
    """``prepare_batch`` for ``SupervisedEvaluator``: ``(torch.cat([image, prior], 1), label)`` on ``device``.

    The pair is what :class:`SamAugInferer` expects. With ``prior_mode="none"`` the inputs are the image alone.
    The label is None when the batch has none (inference).

    Args:
        prior_key: batch key of the ``[B, K, *spatial]`` prior.
        prior_mode: one of ``"add"``, ``"channels"``, ``"concat"``, ``"none"``.
        image_key: batch key of the image.
        label_key: batch key of the label.
    """

    def __init__(
        self,
        prior_key: str = "image_prior",
        prior_mode: str = "concat",
        image_key: str = CommonKeys.IMAGE,
        label_key: str = CommonKeys.LABEL,
    ) -> None:
        self.prior_key = prior_key
        self.prior_mode = look_up_option(prior_mode, PRIOR_MODES)
        self.image_key = image_key
        self.label_key = label_key

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(batchdata, Mapping):
            raise TypeError(f"SamAugPrepareBatch expects a dictionary batch, got {type(batchdata).__name__}.")
        if self.image_key not in batchdata:
            raise KeyError(f"batch lacks {self.image_key!r} (has {sorted(batchdata)}).")
        image = batchdata[self.image_key]
        if self.prior_mode != "none":
            if self.prior_key not in batchdata:
                raise KeyError(
                    f"batch lacks the prior {self.prior_key!r} (has {sorted(batchdata)}) needed by "
                    f"prior_mode={self.prior_mode!r}; add the prior transform, or use prior_mode='none'."
                )
            prior = batchdata[self.prior_key]
            if prior.shape[0] != image.shape[0] or prior.shape[2:] != image.shape[2:]:
                raise ValueError(
                    f"prior {self.prior_key!r} shape {tuple(prior.shape)} does not match image shape "
                    f"{tuple(image.shape)} outside the channel axis."
                )
            image = torch.cat([image, prior.to(dtype=image.dtype, device=image.device)], dim=1)
        image = image.to(device=device, non_blocking=non_blocking, **kwargs)
        label = batchdata.get(self.label_key)
        if isinstance(label, torch.Tensor):
            label = label.to(device=device, non_blocking=non_blocking, **kwargs)
        else:
            label = None
        return image, label
