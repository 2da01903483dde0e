"""WeakMedSAM's parent/child classifier, its CAM and its loss (docs/methods.md §5, step 2).

A MONAI backbone cut before its global pooling gives a feature map ``[B, F, h, w]``; global average pooling and two
bias-free linear heads (the same as bias-free 1x1 convolutions on the pooled features) give the ``C`` parent logits
(one per foreground class) and the ``C * K + 1`` child logits (index 0: "negative for every parent", then ``K``
sub-classes per parent, see :func:`bundle.networks.subclasses.explore_subclasses`). The child head only shapes the
features during training; the CAM comes from the parent head alone.

Because pooling and head are both linear, the parent head applied to every position of the feature map, averaged
over space, is exactly the parent logit: that map is the class activation map (CAM) of the class.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import DenseNet, ResNet, SENet
from monai.utils import look_up_option
from torch import nn

from bundle.networks.dual_branch import BACKBONES, build_backbone

__all__ = ["ParentChildClassifier", "ParentChildHeads", "ParentChildLoss", "feature_extractor"]

# a CAM whose range is below this fraction of its magnitude is constant up to the rounding of the upsampling
_FLAT_RTOL = 1e-5
_UPSAMPLE_MODES = {2: "bilinear", 3: "trilinear"}


def feature_extractor(network: nn.Module) -> tuple[nn.Sequential, int]:
    """The part of a MONAI classification network from :data:`~bundle.networks.BACKBONES` before global pooling.

    The layers are the network's own modules (not copies), named as in the network, so that the extractor's
    ``state_dict`` keys match the network's (handy for loading pretrained weights).

    Args:
        network: a MONAI ``ResNet`` (``resnet18/34/50``), ``SENet`` (``seresnet50``) or ``DenseNet``
            (``densenet121``).

    Returns:
        ``(extractor, channels)``: ``extractor`` maps ``[B, in_channels, *spatial]`` to the last feature map
        ``[B, channels, *feature_spatial]`` (after the final activation, as the network's pooling sees it).

    Raises:
        TypeError: a network of another family.
    """
    if isinstance(network, ResNet):
        names = ["conv1", "bn1", "act"] + ([] if network.no_max_pool else ["maxpool"])
        names += ["layer1", "layer2", "layer3", "layer4"]
        # ``in_planes`` ends as the channel count of layer4's output, also when ``feed_forward=False`` drops ``fc``
        channels = int(network.in_planes)
        return nn.Sequential(OrderedDict((name, getattr(network, name)) for name in names)), channels
    if isinstance(network, SENet):
        names = ["layer0", "layer1", "layer2", "layer3", "layer4"]
        channels = int(network.last_linear.in_features)
        return nn.Sequential(OrderedDict((name, getattr(network, name)) for name in names)), channels
    if isinstance(network, DenseNet):
        # DenseNet's last norm is inside ``features`` but its ReLU is the first of ``class_layers``
        layers = OrderedDict([("features", network.features), ("relu", network.class_layers.relu)])
        return nn.Sequential(layers), int(network.class_layers.out.in_features)
    raise TypeError(f"no feature extractor for {type(network).__name__}; expected a MONAI ResNet, SENet or DenseNet.")


def _minmax(cam: torch.Tensor) -> torch.Tensor:
    """Per-map min-max scaling of ``[B, C, *spatial]`` to ``[0, 1]``; constant maps become all zero."""
    flat = cam.flatten(2)
    low, high = flat.min(dim=2).values, flat.max(dim=2).values
    shape = (*cam.shape[:2], *([1] * (cam.ndim - 2)))
    span = (high - low).reshape(shape)
    low = low.reshape(shape)
    scale = torch.maximum(low.abs(), high.reshape(shape).abs())
    # the CAM is not rectified, so the tolerance is relative to the magnitude, not to the maximum (which may be < 0)
    flat_map = span <= _FLAT_RTOL * scale
    safe_span = torch.where(flat_map, torch.ones_like(span), span)
    return torch.where(flat_map, torch.zeros_like(cam), ((cam - low) / safe_span).clamp(0.0, 1.0))


class ParentChildHeads(nn.Module):
    """Global average pooling and bias-free parent (``C``) and child (``C * K + 1``) heads on a feature map.

    The base of every WeakMedSAM classifier: a subclass sets ``parent_head``, ``child_head``, ``spatial_dims``,
    ``num_classes``, ``num_subclasses``, ``num_children`` and ``feature_channels`` (with :meth:`_make_heads`) and
    defines :meth:`features`, the map ``[B, F, *feature_spatial]`` of its input; the logits, the CAM and the
    train/eval handling are shared.
    """

    def _make_heads(self, num_classes: int, num_subclasses: int, channels: int) -> None:
        if int(num_classes) < 1 or int(num_subclasses) < 1:
            raise ValueError(f"num_classes and num_subclasses must be >= 1, got {num_classes} and {num_subclasses}.")
        self.num_classes: int = int(num_classes)
        self.num_subclasses: int = int(num_subclasses)
        self.num_children: int = self.num_classes * self.num_subclasses + 1
        self.feature_channels: int = int(channels)
        self.parent_head = nn.Linear(channels, self.num_classes, bias=False)
        self.child_head = nn.Linear(channels, self.num_children, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map ``[B, F, *feature_spatial]`` the heads act on (defined by each classifier)."""
        raise NotImplementedError(f"{type(self).__name__} defines no feature map")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
            x: the classifier's input (``[B, in_channels, H, W]`` slices, or SAM embeddings ``[B, E, g, g]``).

        Returns:
            ``(parent_logits [B, C], child_logits [B, C * K + 1])``.
        """
        return self.logits(self.features(x))

    def logits(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(parent_logits, child_logits)`` of a feature map of :meth:`features`: global average pooling, heads."""
        pooled = features.flatten(2).mean(dim=2)
        return self.parent_head(pooled), self.child_head(pooled)

    def cam(self, x: torch.Tensor, size: int | Sequence[int] | None = None) -> torch.Tensor:
        """Class activation maps of the parent classes, scaled to ``[0, 1]`` per map.

        The parent head's weights applied at every position of the feature map (not rectified: negative evidence
        stays negative before scaling), upsampled (bilinear in 2D, trilinear in 3D) to the input's spatial size or
        ``size``, then min-max scaled per sample and class. A map that is constant (up to a relative 1e-5, the
        rounding of the upsampling) carries no location and becomes all zero rather than noise stretched to
        ``[0, 1]``.

        Runs without building a graph and always in eval mode (batch-norm running statistics, no dropout): a CAM
        used for pseudo-labels must not depend on the other slices of its batch, nor update the running statistics.
        The train/eval flag of every submodule is restored afterwards.

        Args:
            x: the classifier's input (see :meth:`forward`).
            size: output spatial size (one int for all dimensions, or one per dimension); None for the input's.

        Returns:
            ``[B, C, H, W]`` float in ``[0, 1]`` (``[B, C, *size]`` when ``size`` is given).
        """
        modes = [(module, module.training) for module in self.modules()]
        try:
            self.eval()
            with torch.no_grad():
                return self.scaled_cam(self.features(x), tuple(x.shape[2:]) if size is None else size)
        finally:
            for module, training in modes:
                module.training = training

    def scaled_cam(self, features: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
        """The CAM of :meth:`cam` from a feature map already computed (mode and autograd as the caller has them):
        the parent head at every position, resized to ``size``, min-max scaled per map."""
        raw = torch.einsum("bf...,cf->bc...", features, self.parent_head.weight)
        mode = _UPSAMPLE_MODES[self.spatial_dims]
        return _minmax(F.interpolate(raw, size=size, mode=mode, align_corners=False))

    def raw_cam(self, x: torch.Tensor) -> torch.Tensor:
        """The unscaled CAM at feature resolution, ``[B, C, h, w]``, in the current mode and with autograd as the
        caller has it; its spatial mean is the parent logit."""
        return torch.einsum("bf...,cf->bc...", self.features(x), self.parent_head.weight)


class ParentChildClassifier(ParentChildHeads):
    """Backbone + global average pooling + bias-free parent (``C``) and child (``C * K + 1``) heads.

    Args:
        num_classes: parent classes ``C`` (foreground classes; a slice may be positive for several).
        num_subclasses: sub-classes per parent ``K`` (the k-means clusters of
            :func:`~bundle.networks.subclasses.explore_subclasses`).
        backbone: a name of :data:`~bundle.networks.BACKBONES`; the network is cut before its global pooling.
        spatial_dims: 2 (slices, what the WeakMedSAM workflow uses) or 3 (volumes; the CAM is then trilinear).
        in_channels: image channels.
        backbone_kwargs: extra arguments of the MONAI builder, see :func:`~bundle.networks.build_backbone`
            (e.g. ``widen_factor`` or ``no_max_pool`` for the ResNets).

    Attributes:
        encoder: the feature extractor (see :func:`feature_extractor`).
        parent_head: ``nn.Linear(F, C, bias=False)``.
        child_head: ``nn.Linear(F, C * K + 1, bias=False)``.
        feature_channels: ``F``.
        num_children: ``C * K + 1``.

    Raises:
        ValueError: unknown ``backbone`` (naming the closest), ``spatial_dims`` not 2 or 3, non-positive counts.
    """

    def __init__(
        self,
        num_classes: int,
        num_subclasses: int = 8,
        backbone: str = "resnet18",
        spatial_dims: int = 2,
        in_channels: int = 1,
        backbone_kwargs: Mapping | None = None,
    ) -> None:
        super().__init__()
        self.backbone_name: str = look_up_option(backbone, tuple(BACKBONES))
        if int(spatial_dims) not in _UPSAMPLE_MODES:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if int(in_channels) < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}.")
        self.spatial_dims: int = int(spatial_dims)
        self.in_channels: int = int(in_channels)
        # the builder's own classifier is discarded, so its output size does not matter
        network = build_backbone(self.backbone_name, self.spatial_dims, self.in_channels, 1, backbone_kwargs)
        self.encoder, channels = feature_extractor(network)
        self._make_heads(num_classes, num_subclasses, channels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map ``[B, F, h, w]`` (``[B, F, h, w, d]`` in 3D) of an input ``[B, in_channels, H, W]``.

        Raises:
            ValueError: an input of the wrong rank or channel count.
        """
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                "expected input [B, " + str(self.in_channels) + ", *spatial] with " + str(self.spatial_dims)
                + " spatial dims, got " + str(list(x.shape)) + "."
            )
        return self.encoder(x)


def _pair(outputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(outputs, Sequence) or isinstance(outputs, torch.Tensor) or len(outputs) != 2:
        raise ValueError("outputs must be the (parent_logits, child_logits) pair of ParentChildClassifier.")
    parent, child = outputs
    if parent.ndim != 2 or child.ndim != 2 or parent.shape[0] != child.shape[0]:
        raise ValueError(
            f"expected parent logits [B, C] and child logits [B, C*K+1], got {tuple(parent.shape)} and "
            f"{tuple(child.shape)}."
        )
    return parent, child


class ParentChildLoss(nn.Module):
    """``BCE(parent) + child_weight * BCE(child)`` with logits, each BCE the mean over its batch and outputs.

    Targets are float 0/1 (soft targets in ``[0, 1]`` work too). They come either as the pair
    ``(parent_target [B, C], child_target [B, C*K+1])`` or as one tensor ``[B, C + C*K + 1]``: the parent targets
    followed by the child targets along dimension 1, split where the parent logits end. The single-tensor form is
    what MONAI's ``SupervisedTrainer`` passes when a batch's ``label`` holds both.

    Args:
        child_weight: weight of the child term (WeakMedSAM: 0.5).

    Raises:
        ValueError: a negative ``child_weight``; (when called) outputs or targets whose shapes do not fit.
    """

    def __init__(self, child_weight: float = 0.5) -> None:
        super().__init__()
        if float(child_weight) < 0:
            raise ValueError(f"child_weight must be >= 0, got {child_weight}.")
        self.child_weight = float(child_weight)

    def forward(
        self,
        outputs: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor] | torch.Tensor,
    ) -> torch.Tensor:
        """Args:
            outputs: ``(parent_logits [B, C], child_logits [B, C*K+1])``.
            targets: ``(parent_target, child_target)`` of the same shapes, or their concatenation ``[B, C+C*K+1]``.

        Returns:
            the scalar loss.
        """
        parent, child = _pair(outputs)
        if isinstance(targets, torch.Tensor):
            expected = (parent.shape[0], parent.shape[1] + child.shape[1])
            if tuple(targets.shape) != expected:
                raise ValueError(
                    f"a single target tensor must be [B, C + C*K + 1] = {list(expected)}, got {list(targets.shape)}."
                )
            parent_target, child_target = targets[:, : parent.shape[1]], targets[:, parent.shape[1] :]
        else:
            if not isinstance(targets, Sequence) or len(targets) != 2:
                raise ValueError("targets must be (parent_target, child_target) or one [B, C + C*K + 1] tensor.")
            parent_target, child_target = (torch.as_tensor(t) for t in targets)
            if parent_target.shape != parent.shape or child_target.shape != child.shape:
                raise ValueError(
                    f"targets {tuple(parent_target.shape)} and {tuple(child_target.shape)} do not match the logits "
                    f"{tuple(parent.shape)} and {tuple(child.shape)}."
                )
        parent_loss = F.binary_cross_entropy_with_logits(parent, parent_target.to(parent))
        child_loss = F.binary_cross_entropy_with_logits(child, child_target.to(child))
        return parent_loss + self.child_weight * child_loss
