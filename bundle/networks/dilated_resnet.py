"""Output stride of a MONAI ResNet: the last stages' stride 2 replaced by dilation (atrous convolution).

A classifier's Grad-CAM is as coarse as its last feature map. MONAI's ResNets (``resnet18`` ... with their default
stem: a 7 x 7 convolution of stride 1, then a max pool of stride 2) reach stride 16 at ``layer4``; with
``conv1_t_stride 2`` they reach 32. :func:`set_output_stride` lowers that stride to 16 or 8 the way DeepLab and the
ResNet-38 of the SAM-Mix paper do: every stage that would take the stride below the target keeps the resolution
(stride 1 in its strided 3 x 3 convolution and in its 1 x 1 shortcut) and dilates its 3 x 3 convolutions instead, by
the product of the strides it no longer applies. The first block's strided convolution keeps the dilation of the
stage before, so the receptive field of every unit is the one of the undilated network; the weights are unchanged
(same names and shapes), so a state dict moves between strides.

What stays equal (in eval mode, and in train mode up to batch-norm statistics): every stage before the first dilated
one computes exactly what it did, and the dilated network's feature map sampled every ``s`` pixels (``s`` = undilated
stride / output stride) is the undilated network's feature map. Only the global pooling, hence the logits, sees the
finer map.

Other backbones (DenseNet, SE-ResNet) are left as MONAI builds them: their stride is measured and only that value is
accepted.
"""

from __future__ import annotations

import torch
from monai.networks.nets.resnet import ResNet, ResNetBottleneck
from torch import nn

__all__ = ["OUTPUT_STRIDES", "feature_stride", "set_output_stride"]

OUTPUT_STRIDES = (8, 16, 32)
"""The output strides a classifier can be given (input size / size of its last feature map)."""
_STAGES = ("layer1", "layer2", "layer3", "layer4")
_PROBE = 64  # pixels per side of the probe input that measures a network's stride


def feature_stride(net: nn.Module, layer: str, spatial_dims: int = 2, in_channels: int = 1) -> int:
    """Input size / size of ``layer``'s output, measured on a ``64``-pixel zero input (eval mode, no gradients).

    Raises:
        ValueError: ``layer`` is not a submodule of ``net``.
    """
    module = dict(net.named_modules()).get(layer)
    if module is None:
        raise ValueError(f"{type(net).__name__} has no layer {layer!r}.")
    shapes: list[tuple[int, ...]] = []
    handle = module.register_forward_hook(lambda _m, _i, output: shapes.append(tuple(output.shape[2:])))
    was_training = net.training
    parameter = next(net.parameters())
    try:
        net.eval()
        with torch.no_grad():
            net(torch.zeros(1, in_channels, *([_PROBE] * spatial_dims), dtype=parameter.dtype,
                            device=parameter.device))
    finally:
        handle.remove()
        net.train(was_training)
    return max(1, round(_PROBE / shapes[-1][0]))


def _strided_conv(block: nn.Module) -> nn.Module:
    """The 3 x 3 convolution that carries a block's stride (MONAI: ``conv1`` of a basic block, ``conv2`` of a
    bottleneck)."""
    return block.conv2 if isinstance(block, ResNetBottleneck) else block.conv1


def _three_by_three(block: nn.Module) -> list[nn.Module]:
    return [m for m in (getattr(block, name, None) for name in ("conv1", "conv2", "conv3"))
            if isinstance(m, nn.modules.conv._ConvNd) and max(m.kernel_size) == 3]


def _set_conv(conv: nn.Module, dilation: int) -> None:
    """Stride 1, ``dilation``, and the padding that keeps the size (``dilation`` for a 3 x 3 kernel)."""
    dims = len(conv.kernel_size)
    conv.stride = (1,) * dims
    conv.dilation = (dilation,) * dims
    conv.padding = tuple(dilation * (k - 1) // 2 for k in conv.kernel_size)


def _dilate_stage(stage: nn.Sequential, dilation_before: int, dilation: int, where: str) -> None:
    for index, block in enumerate(stage):
        strided = _strided_conv(block)
        for conv in _three_by_three(block):
            _set_conv(conv, dilation_before if index == 0 and conv is strided else dilation)
        shortcut = block.downsample
        if isinstance(shortcut, nn.Sequential) and isinstance(shortcut[0], nn.modules.conv._ConvNd):
            shortcut[0].stride = (1,) * len(shortcut[0].kernel_size)
        elif shortcut is not None:
            raise ValueError(f"output_stride: {where}.{index} has a shortcut of type A (pooling), which cannot be "
                             "dilated; build the ResNet with shortcut_type 'B' (MONAI's default)")


def _stage_stride(stage: nn.Sequential) -> int:
    return int(_strided_conv(stage[0]).stride[0])


def set_output_stride(net: nn.Module, output_stride: int | None, layer: str = "layer4", spatial_dims: int = 2,
                      in_channels: int = 1) -> int:
    """Give ``net`` (built by MONAI) the output stride ``output_stride`` at ``layer``, in place; returns the stride.

    Args:
        net: a MONAI ``ResNet`` (``resnet18`` / ``34`` / ``50``) with isotropic strides, or another backbone.
        output_stride: 8, 16 or 32 (:data:`OUTPUT_STRIDES`); None keeps ``net`` as built.
        layer: the feature map whose stride is meant (Grad-CAM's target layer).
        spatial_dims, in_channels: the input ``net`` takes (for measuring the stride).

    Returns:
        the stride of ``layer``'s output once set.

    Raises:
        ValueError: (one line, naming ``output_stride``) a value not in :data:`OUTPUT_STRIDES`; a stride above the one
            ``net`` has as built (dilation only lowers it); a stride other than its own for a network that is not a
            MONAI ResNet; a ResNet whose stages are anisotropic or use pooling shortcuts.
    """
    built = feature_stride(net, layer, spatial_dims, in_channels)
    if output_stride is None:
        return built
    if isinstance(output_stride, bool) or output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride: {output_stride!r} is not one of {list(OUTPUT_STRIDES)}")
    output_stride = int(output_stride)
    if output_stride == built:
        return built
    if not isinstance(net, ResNet) or layer != "layer4":
        raise ValueError(f"output_stride: {output_stride} needs a MONAI ResNet (resnet18, resnet34, resnet50); "
                         f"{type(net).__name__} has stride {built} at {layer}: give {built}")
    if output_stride > built:
        raise ValueError(f"output_stride: {output_stride} is above the stride this ResNet has as built ({built}; "
                         "dilation only lowers it): give 8 or 16, or backbone_kwargs conv1_t_stride 2 for 32")
    stages = [getattr(net, name) for name in _STAGES]
    if any(len(set(_strided_conv(s[0]).stride)) != 1 for s in stages):
        raise ValueError(f"output_stride: {output_stride} needs the same stride along every axis in every stage")
    # walk the stages backwards from the stride as built: the last ones give up their stride for dilation
    remaining, dilated = built, []
    for name, stage in zip(reversed(_STAGES), reversed(stages)):
        if remaining <= output_stride:
            break
        step = _stage_stride(stage)
        dilated.append((name, stage, step))
        remaining //= step
    if remaining != output_stride:
        raise ValueError(f"output_stride: {output_stride} cannot be reached from {built} by dilating whole stages")
    dilation = 1
    for name, stage, step in reversed(dilated):  # in forward order: each stage starts at the dilation before it
        _dilate_stage(stage, dilation, dilation * step, name)
        dilation *= step
    reached = feature_stride(net, layer, spatial_dims, in_channels)
    if reached != output_stride:  # a layout this module does not know: refuse rather than claim a stride
        raise ValueError(f"output_stride: {output_stride} asked, but the dilated network has stride {reached}")
    return reached
