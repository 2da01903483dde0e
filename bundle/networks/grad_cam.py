"""Grad-CAM of each branch of a :class:`~bundle.networks.DualBranchClassifier`.

A branch's logits depend only on its own image and its own backbone, so the Grad-CAM of branch A (or B) in the
full network is the Grad-CAM of that branch's backbone on ``x`` (or ``x_aug``); :func:`branch_grad_cam` computes it
that way, which also works for a shared backbone, where both branches run through the very same layer.

Written with a forward hook and ``torch.autograd.grad`` rather than ``monai.visualize.GradCAM``: MONAI's wrapper
registers hooks that are never removed (each call would leave two more on the network), switches in-place
activations off for good, zeroes the parameters' gradients, and its default post-processing maps the maximum to 0.
Here the hook lives only for the call and no ``.grad`` of the network is touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

from bundle.networks.dual_branch import DualBranchClassifier

__all__ = ["branch_grad_cam", "grad_cam"]

_FLAT_RTOL = 1e-4


def _class_index(class_idx: int | Sequence[int] | torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    batch, num_classes = logits.shape
    if class_idx is None:
        return logits.argmax(dim=1)
    index = torch.as_tensor(class_idx, device=logits.device).long().reshape(-1)
    if index.numel() == 1:
        index = index.expand(batch)
    if index.numel() != batch:
        raise ValueError(f"class_idx must be one class or one per sample ({batch}), got {index.numel()} values.")
    if int(index.min()) < 0 or int(index.max()) >= num_classes:
        raise ValueError(f"class_idx must be in [0, {num_classes - 1}], got {index.tolist()}.")
    return index


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    flat = cam.flatten(1)
    low, high = flat.min(dim=1).values, flat.max(dim=1).values
    span = (high - low).reshape(-1, *([1] * (cam.ndim - 1)))
    low = low.reshape(span.shape)
    high = high.reshape(span.shape)
    # a flat map stays all zero: a feature map of one pixel upsamples to a constant up to rounding, and min-max
    # scaling would blow that rounding noise up to [0, 1]
    flat_map = span <= _FLAT_RTOL * high
    return torch.where(flat_map, torch.zeros_like(cam), (cam - low) / torch.where(flat_map, torch.ones_like(span), span))


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    target_layer: str,
    class_idx: int | Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Grad-CAM of a classification network: ReLU of the activation map of ``target_layer`` weighted by the
    spatial mean of its gradient, upsampled to the input size and min-max scaled per sample.

    Runs with gradients enabled (also inside ``torch.no_grad()``), in the model's current train/eval mode; must not
    be called under ``torch.inference_mode()``.

    Args:
        model: maps ``[B, C, *spatial]`` to logits ``[B, K]``.
        x: the input ``[B, C, *spatial]`` (2 or 3 spatial dimensions).
        target_layer: name of a submodule of ``model`` (as in ``model.named_modules()``) whose output is
            ``[B, F, *feature_spatial]``.
        class_idx: the class explained: one index for the whole batch, one per sample, or None for each sample's
            highest logit.

    Returns:
        ``[B, 1, *spatial]`` float in ``[0, 1]`` (all zero where the map is flat).

    Raises:
        ValueError: an unknown ``target_layer`` (naming the closest), logits that are not ``[B, K]``, or a
            ``class_idx`` out of range.
    """
    layers = dict(model.named_modules())
    layer = layers[look_up_option(target_layer, [name for name in layers if name])]
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    # an input that needs grad gives the activations a graph even for a frozen network
    inputs = x.detach().float().requires_grad_(True)
    try:
        with torch.enable_grad():
            logits = model(inputs)
            if logits.ndim != 2:
                raise ValueError(f"model must return logits [B, K], got {tuple(logits.shape)}.")
            index = _class_index(class_idx, logits)
            score = logits.gather(1, index[:, None]).sum()
            activations = captured[-1]
            (gradients,) = torch.autograd.grad(score, activations)
    finally:
        handle.remove()
    spatial = tuple(range(2, activations.ndim))
    weights = gradients.mean(dim=spatial, keepdim=True)
    cam = F.relu((weights * activations).sum(dim=1, keepdim=True)).detach()
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    cam = F.interpolate(cam, size=tuple(x.shape[2:]), mode=mode, align_corners=False)
    return _normalise(cam)


def branch_grad_cam(
    net: DualBranchClassifier,
    x: torch.Tensor,
    class_idx: int | Sequence[int] | torch.Tensor | None = None,
    target_layer: str | None = None,
) -> tuple[torch.Tensor, ...]:
    """Grad-CAM map of every branch of a dual-branch (or single-branch) classifier, in eval mode.

    Args:
        net: the classifier.
        x: the network input ``[B, n_branches * C, *spatial]`` (``[x, x_aug]`` for a dual network).
        class_idx: the class explained in every branch: one index, one per sample, or None for each branch's own
            highest logit per sample.
        target_layer: layer name inside a branch's backbone; default ``net.target_layer`` (the last feature map:
            ``class_layers.relu`` for DenseNet, ``layer4`` for (SE)ResNet).

    Returns:
        one ``[B, 1, *spatial]`` map in ``[0, 1]`` per branch, in the order of ``net.branch_names`` (A then B).

    Raises:
        ValueError: see :func:`grad_cam`; an input whose channels do not fit the network.
    """
    views = net.split_inputs(x)
    layer = net.target_layer if target_layer is None else target_layer
    was_training = net.training
    net.eval()  # batch-norm running statistics, as at inference
    try:
        return tuple(grad_cam(net.branch_backbone(i), view, layer, class_idx) for i, view in enumerate(views))
    finally:
        net.train(was_training)
