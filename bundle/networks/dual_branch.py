"""The SAMAug-C dual-branch classifier (docs/methods.md §3) on MONAI backbones.

Branch A sees the raw image ``x``, branch B the SAM-augmented image ``x_aug``
(:class:`bundle.priors.cls_augment.SamAugCImage`); both are stacked along channels in the network input
``[x, x_aug]`` so that one tensor goes through MONAI's inferers, ``verify_net_in_out`` and TorchScript. The
single-branch baselines (``raw`` / ``augmented``) are the same class with one branch, so backbone, head and
initialisation stay equal in an ablation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from monai.networks.nets import DenseNet121, SEResNet50, resnet18, resnet34, resnet50
from monai.utils import look_up_option
from torch import nn

__all__ = ["BACKBONES", "BRANCH_MODES", "BRANCH_NAMES", "DualBranchClassifier", "build_backbone"]


def _densenet121(spatial_dims: int, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    return DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, **kwargs)


def _resnet(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    def build(spatial_dims: int, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
        return builder(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes, **kwargs)

    return build


def _seresnet50(spatial_dims: int, in_channels: int, num_classes: int, **kwargs) -> nn.Module:
    return SEResNet50(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, **kwargs)


# name -> (builder, the layer whose output Grad-CAM weights: the last feature map before global pooling)
BACKBONES: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "densenet121": (_densenet121, "class_layers.relu"),
    "resnet18": (_resnet(resnet18), "layer4"),
    "resnet34": (_resnet(resnet34), "layer4"),
    "resnet50": (_resnet(resnet50), "layer4"),
    "seresnet50": (_seresnet50, "layer4"),
}
BRANCH_MODES = ("dual", "raw", "augmented")
# the branches of each mode, in the order of the network input channels and of the output's branch axis
BRANCH_NAMES = {"dual": ("raw", "augmented"), "raw": ("raw",), "augmented": ("augmented",)}


def build_backbone(
    name: str, spatial_dims: int, in_channels: int, num_classes: int, backbone_kwargs: Mapping | None = None
) -> nn.Module:
    """One MONAI classification network from :data:`BACKBONES`.

    Args:
        name: ``densenet121``, ``resnet18``, ``resnet34``, ``resnet50`` or ``seresnet50``.
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output logits.
        backbone_kwargs: extra arguments of the MONAI builder (e.g. ``dropout_prob`` for DenseNet/SEResNet,
            ``conv1_t_stride`` / ``no_max_pool`` for ResNet, ``pretrained``).

    Returns:
        the network, mapping ``[B, in_channels, *spatial]`` to logits ``[B, num_classes]``.

    Raises:
        ValueError: unknown ``name`` (naming the closest valid one).
    """
    builder, _ = look_up_option(name, BACKBONES)
    return builder(int(spatial_dims), int(in_channels), int(num_classes), **dict(backbone_kwargs or {}))


class DualBranchClassifier(nn.Module):
    """Dual-branch (or single-branch baseline) classifier: per-branch logits of a MONAI backbone.

    Args:
        backbone: backbone name, see :data:`BACKBONES`.
        spatial_dims: 2 (slices) or 3 (volumes).
        in_channels: channels of ONE branch's image (``C``; ``x`` and ``x_aug`` have the same channels).
        num_classes: logits per branch (``K``).
        shared_backbone: ``branches="dual"`` only: one backbone (the same weights) for both branches, or two
            separately initialised ones. Ignored with one branch.
        branches: ``"dual"`` (input ``[x, x_aug]``, ``[B, 2C, *spatial]``), ``"raw"`` (input ``x``) or
            ``"augmented"`` (input ``x_aug``), both ``[B, C, *spatial]``.
        backbone_kwargs: extra arguments of the MONAI builder, see :func:`build_backbone`.

    Attributes:
        branch_names: the branches in input/output order: ``("raw", "augmented")``, ``("raw",)`` or
            ``("augmented",)``.
        n_branches: ``len(branch_names)``.
        backbones: ``nn.ModuleList`` with one backbone (shared, or a single branch) or two (A, B).
        target_layer: name, inside a backbone, of the layer Grad-CAM uses by default.

    Raises:
        ValueError: unknown ``backbone`` / ``branches`` (naming the closest valid one), ``spatial_dims`` not 2 or
            3, or non-positive channel/class counts.
    """

    def __init__(
        self,
        backbone: str = "densenet121",
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        shared_backbone: bool = True,
        branches: str = "dual",
        backbone_kwargs: Mapping | None = None,
    ) -> None:
        super().__init__()
        self.backbone_name: str = look_up_option(backbone, tuple(BACKBONES))
        self.branches: str = look_up_option(branches, BRANCH_MODES)
        if int(spatial_dims) not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if int(in_channels) < 1 or int(num_classes) < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}.")
        self.spatial_dims: int = int(spatial_dims)
        self.in_channels: int = int(in_channels)
        self.num_classes: int = int(num_classes)
        self.branch_names: tuple[str, ...] = BRANCH_NAMES[self.branches]
        self.n_branches: int = len(self.branch_names)
        self.shared_backbone: bool = bool(shared_backbone) or self.n_branches == 1
        n_backbones = 1 if self.shared_backbone else self.n_branches
        self.backbones = nn.ModuleList(
            build_backbone(self.backbone_name, spatial_dims, in_channels, num_classes, backbone_kwargs)
            for _ in range(n_backbones)
        )
        self.target_layer: str = BACKBONES[self.backbone_name][1]

    @property
    def input_channels(self) -> int:
        """Channels of the network input: ``n_branches * in_channels``."""
        return self.n_branches * self.in_channels

    def branch_backbone(self, branch: int | str) -> nn.Module:
        """The backbone of one branch (the same module for both branches when shared).

        Args:
            branch: index into :attr:`branch_names`, or a branch name (``"raw"`` / ``"augmented"``).

        Raises:
            ValueError: a name or index this network does not have.
        """
        if isinstance(branch, str):
            branch = look_up_option(branch, self.branch_names)
            branch = self.branch_names.index(branch)
        if not 0 <= int(branch) < self.n_branches:
            raise ValueError(f"branch index {branch} out of range for branches {self.branch_names}.")
        return self.backbones[0 if self.shared_backbone else int(branch)]

    def split_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The per-branch images of a network input: ``[x, x_aug]`` -> ``[x, x_aug]`` as a list of
        ``[B, C, *spatial]`` tensors (one element for a single branch)."""
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.n_branches * self.in_channels:
            raise ValueError(
                "expected input [B, " + str(self.n_branches * self.in_channels) + ", *spatial] with "
                + str(self.spatial_dims) + " spatial dims (" + str(self.n_branches) + " branch(es) of "
                + str(self.in_channels) + " channel(s)), got " + str(list(x.shape)) + "."
            )
        return list(torch.split(x, self.in_channels, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args:
            x: ``[B, n_branches * C, *spatial]``: ``[x, x_aug]`` along channels for ``dual``, the one image
                otherwise.

        Returns:
            logits ``[B, n_branches, num_classes]`` (branch order :attr:`branch_names`).
        """
        views = self.split_inputs(x)
        logits: list[torch.Tensor] = []
        # a shared backbone runs once per branch rather than once on both batches joined: batch-norm statistics of
        # one branch then never mix with the other's, as in the single-branch baselines
        for i, backbone in enumerate(self.backbones):
            if self.shared_backbone:
                for view in views:
                    logits.append(backbone(view))
            else:
                logits.append(backbone(views[i]))
        return torch.stack(logits, dim=1)
