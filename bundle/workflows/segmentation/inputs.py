"""Network input of SAMAug: the image combined with the SAM priors according to ``prior_mode``.

docs/methods.md §2. With the segmentation prior ``S`` (channel 0 of the prior volume) and the boundary prior ``B``
(channel 1), and ``x`` the image:

- ``add`` (the authors' code): ``[x, x + S / prior_scale, x + B]``; ``x`` must be a single channel in ``[0, 1]``.
- ``channels``: ``[x, S / prior_scale, B]``; single-channel image.
- ``concat``: ``[image channels..., S / prior_scale, B]``; any number of image channels (multi-modal MRI).
- ``none``: the image alone; the priors are ignored.

The "raw" input of the same network (blend / alternate training, raw or entropy-selected inference) has the same
layout with ``S = B = 0``, so one network serves both: ``add`` raw is ``[x, x, x]``.

All functions work on batched tensors ``[B, C, *spatial]`` with 2 or 3 spatial dimensions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.utils import look_up_option

from bundle.workflows.common import options

__all__ = [
    "PRIOR_MODES",
    "DEFAULT_PRIOR_NAMES",
    "input_channels",
    "build_network_input",
    "raw_network_input",
    "prior_channel_names",
    "split_image_prior",
]

PRIOR_MODES = options.PRIOR_MODES  # recorded in model cards: the names live in common/options.py
DEFAULT_PRIOR_NAMES = ("sam_seg_prior", "sam_boundary_prior")


def _check_prior_mode(prior_mode: str) -> str:
    return look_up_option(prior_mode, PRIOR_MODES)


def input_channels(prior_mode: str, image_channels: int, prior_channels: int = 2) -> int:
    """Number of input channels of the segmentation network for a ``prior_mode``.

    Args:
        prior_mode: one of :data:`PRIOR_MODES`.
        image_channels: channels of the image (1 for CT, 4 for BraTS).
        prior_channels: channels of the prior volume (2 for SAMAug: S and B).

    Returns:
        ``1 + prior_channels`` for ``add`` / ``channels`` (3 for SAMAug), ``image_channels + prior_channels`` for
        ``concat`` and ``image_channels`` for ``none``.

    Raises:
        ValueError: unknown ``prior_mode``, non-positive channel counts, or ``add`` / ``channels`` with a
            multi-channel image.
    """
    prior_mode = _check_prior_mode(prior_mode)
    if int(image_channels) < 1:
        raise ValueError(f"image_channels must be >= 1, got {image_channels}.")
    if prior_mode == "none":
        return int(image_channels)
    if int(prior_channels) < 1:
        raise ValueError(f"prior_channels must be >= 1 for prior_mode={prior_mode!r}, got {prior_channels}.")
    if prior_mode in ("add", "channels"):
        if int(image_channels) != 1:
            raise ValueError(
                f"prior_mode={prior_mode!r} combines the priors with a single-channel image, but the image has "
                f"{image_channels} channels. Use prior_mode='concat' for multi-channel (multi-modal) images, or "
                "select one modality."
            )
        return 1 + int(prior_channels)
    return int(image_channels) + int(prior_channels)


def _check_pair(image: torch.Tensor, prior: torch.Tensor) -> None:
    if image.ndim < 3:
        raise ValueError(f"image must be batched [B, C, *spatial], got shape {tuple(image.shape)}.")
    if prior.ndim != image.ndim or prior.shape[0] != image.shape[0] or prior.shape[2:] != image.shape[2:]:
        raise ValueError(
            f"prior shape {tuple(prior.shape)} does not match image shape {tuple(image.shape)}: expected "
            f"[{image.shape[0]}, K, {', '.join(str(s) for s in image.shape[2:])}]."
        )


def build_network_input(
    image: torch.Tensor, prior: torch.Tensor | None, prior_mode: str, prior_scale: float = 1.0
) -> torch.Tensor:
    """Combine a batch of images with their SAM priors (the augmented input ``x_aug``).

    Args:
        image: ``[B, C, *spatial]``; for ``add`` / ``channels`` ``C`` must be 1 and intensities in ``[0, 1]``.
        prior: ``[B, K, *spatial]``, channel 0 the segmentation prior ``S``, the others (the boundary prior ``B``)
            used as they are. Ignored (may be None) for ``none``.
        prior_mode: one of :data:`PRIOR_MODES`.
        prior_scale: ``S`` is divided by it (the authors used 5 only when saving prior images).

    Returns:
        ``[B, input_channels(prior_mode, C, K), *spatial]`` in the dtype of ``image``.

    Raises:
        ValueError: unknown ``prior_mode``, missing prior, mismatched shapes, ``prior_scale <= 0``, or
            ``add`` / ``channels`` with a multi-channel image.
    """
    prior_mode = _check_prior_mode(prior_mode)
    if prior_mode == "none":
        return image
    if prior is None:
        raise ValueError(f"prior_mode={prior_mode!r} needs the prior volume, got None.")
    if not prior_scale > 0:
        raise ValueError(f"prior_scale must be > 0, got {prior_scale}.")
    _check_pair(image, prior)
    input_channels(prior_mode, image.shape[1], prior.shape[1])  # raises for add/channels with C > 1
    prior = prior.to(device=image.device, dtype=image.dtype if image.is_floating_point() else torch.float32)
    if prior_scale != 1.0:
        prior = torch.cat([prior[:, :1] / prior_scale, prior[:, 1:]], dim=1)
    if prior_mode == "add":
        # x_aug = [x, x + S, x + B]: every channel keeps the image so a 3-channel (ImageNet-style) encoder sees it
        return torch.cat([image, image + prior], dim=1)
    return torch.cat([image, prior], dim=1)


def raw_network_input(image: torch.Tensor, prior_mode: str, prior_channels: int = 2) -> torch.Tensor:
    """The raw input ``x`` in the layout of ``prior_mode``: :func:`build_network_input` with all priors zero.

    Args:
        image: ``[B, C, *spatial]``.
        prior_mode: one of :data:`PRIOR_MODES`.
        prior_channels: ``K``, channels of the prior volume the network was built for.

    Returns:
        ``add``: ``[x, x, x]``; ``channels``: ``[x, 0, 0]``; ``concat``: ``[image..., 0, 0]``; ``none``: ``image``.
    """
    prior_mode = _check_prior_mode(prior_mode)
    if prior_mode == "none":
        return image
    if image.ndim < 3:
        raise ValueError(f"image must be batched [B, C, *spatial], got shape {tuple(image.shape)}.")
    dtype = image.dtype if image.is_floating_point() else torch.float32
    zeros = torch.zeros(
        (image.shape[0], int(prior_channels), *image.shape[2:]), dtype=dtype, device=image.device
    )
    return build_network_input(image, zeros, prior_mode)


def prior_channel_names(
    prior_mode: str, image_channel_names: Sequence[str], prior_names: Sequence[str] = DEFAULT_PRIOR_NAMES
) -> list[str]:
    """Names of the network's input channels, for metadata and error messages.

    Args:
        prior_mode: one of :data:`PRIOR_MODES`.
        image_channel_names: one name per image channel, e.g. ``["FLAIR", "T1", "T1ce", "T2"]`` or ``["CT"]``.
        prior_names: one name per prior channel.

    Returns:
        e.g. ``add``: ``["CT", "CT+sam_seg_prior", "CT+sam_boundary_prior"]``; ``concat``:
        ``["FLAIR", "T1", "T1ce", "T2", "sam_seg_prior", "sam_boundary_prior"]``; ``none``: the image names.
    """
    prior_mode = _check_prior_mode(prior_mode)
    if isinstance(image_channel_names, str):
        image_channel_names = [image_channel_names]
    image_channel_names = [str(n) for n in image_channel_names]
    input_channels(prior_mode, len(image_channel_names), len(prior_names))
    if prior_mode == "none":
        return image_channel_names
    if prior_mode == "add":
        x = image_channel_names[0]
        return [x] + [f"{x}+{p}" for p in prior_names]
    return image_channel_names + [str(p) for p in prior_names]


def split_image_prior(
    inputs: torch.Tensor, prior_mode: str, image_channels: int, prior_channels: int = 2
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Split ``torch.cat([image, prior], dim=1)`` back into image and prior.

    Args:
        inputs: ``[B, image_channels + prior_channels, *spatial]``, or ``[B, image_channels, *spatial]`` (no prior).
        prior_mode: one of :data:`PRIOR_MODES`; for ``none`` the inputs must be the image alone.
        image_channels: channels of the image part.
        prior_channels: channels of the prior part.

    Returns:
        ``(image, prior)``; ``prior`` is None when ``inputs`` hold only the image.

    Raises:
        ValueError: when the channel count matches neither layout.
    """
    prior_mode = _check_prior_mode(prior_mode)
    n = inputs.shape[1]
    if n == image_channels:
        return inputs, None
    if prior_mode != "none" and n == image_channels + prior_channels:
        return inputs[:, :image_channels], inputs[:, image_channels:]
    expected = f"{image_channels}" if prior_mode == "none" else f"{image_channels + prior_channels}"
    raise ValueError(
        f"inputs have {n} channels; prior_mode={prior_mode!r} expects {expected} (image channels = {image_channels}"
        + ("" if prior_mode == "none" else f", then {prior_channels} prior channels")
        + "). Check image_channels and that the batch was prepared with the same prior_mode."
    )
