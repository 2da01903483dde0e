"""SAM-Mix's network (METHODS.md §4): a slice classifier whose Grad-CAM prompts a tunable SAM.

::

    slice --classifier--> organ present? --Grad-CAM (positive class)--> min-max CAM --threshold 0.4--> CAM mask
    CAM mask --tight box (central box when empty)--> box prompt;  CAM mask --> added to SAM's image embedding
    SAM(slice, box, CAM mask) --> mask logits

:class:`SamMixNet` holds the two networks (so one module trains, checkpoints and moves between devices) and the
steps between them; :meth:`SamMixNet.predict` runs them at inference with the box source chosen by the caller: the
CAM (the fair setting) or boxes given from outside (ground-truth boxes: the authors' evaluation). The classifier's
last stages can be dilated to a finer CAM (``output_stride``, :mod:`bundle.networks.dilated_resnet`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from bundle.networks.dilated_resnet import set_output_stride
from bundle.networks.dual_branch import BACKBONES, build_backbone
from bundle.networks.grad_cam import grad_cam
from bundle.sam.cam_prompts import cam_boxes
from bundle.sam.trainable import TrainableSam

__all__ = ["SamMixNet", "SamMixOutput", "build_classifier", "classifier_stride"]


def build_classifier(backbone: str = "resnet18", in_channels: int = 1, backbone_kwargs: Mapping | None = None,
                     output_stride: int | None = None) -> tuple[nn.Module, str, int]:
    """``(classifier, Grad-CAM layer, that layer's stride)``: the binary slice classifier of :class:`SamMixNet`
    (arguments and errors there)."""
    classifier = build_backbone(backbone, 2, in_channels, 2, backbone_kwargs)
    layer = BACKBONES[backbone][1]
    return classifier, layer, set_output_stride(classifier, output_stride, layer, 2, in_channels)


def classifier_stride(backbone: str, in_channels: int = 1, backbone_kwargs: Mapping | None = None,
                      output_stride: int | None = None) -> int:
    """The stride of the CAM of :class:`SamMixNet`'s classifier with these arguments (building it once, the random
    state kept: the classifier built afterwards gets the weights it would get without this call).

    Raises:
        ValueError: see :class:`SamMixNet`.
    """
    with torch.random.fork_rng(devices=[]):
        return build_classifier(backbone, in_channels, backbone_kwargs, output_stride)[2]


class SamMixOutput(dict):
    """What :meth:`SamMixNet.predict` returns: ``probability [B]`` (organ present), ``cam [B, 1, H, W]``,
    ``cam_mask``, ``boxes [B, 4]``, ``cam_empty [B]``, ``logits [B, 1, H, W]`` and, when asked for, ``extra_logits``."""


class SamMixNet(nn.Module):
    """A binary slice classifier (MONAI backbone) and a :class:`~bundle.sam.trainable.TrainableSam`.

    Args:
        sam: the trainable SAM.
        backbone: a key of :data:`bundle.networks.dual_branch.BACKBONES` (the ResNet family: ``resnet18``, ...).
        in_channels: image channels of a slice.
        backbone_kwargs: extra arguments of the MONAI builder.
        cam_threshold: CAM mask threshold on the min-max scaled Grad-CAM (0.4).
        dense_guidance: add the CAM mask to SAM's image embedding (SAM-Mix: yes; the zero-shot baseline: no).
        output_stride: stride of the feature map Grad-CAM weights, 8, 16 or 32 (the config's default 8: a 32 x 32
            CAM at 256 x 256, as the paper's ResNet-38); lower than the backbone's own stride by dilation
            (:func:`~bundle.networks.dilated_resnet.set_output_stride`); None keeps the backbone as MONAI builds it
            (stride 16 for the ResNets with their default stem: what models trained before the option have).

    Attributes:
        output_stride: the stride the classifier has (measured).

    Raises:
        ValueError: an ``output_stride`` the backbone cannot have (one line naming the option).
    """

    def __init__(self, sam: TrainableSam, backbone: str = "resnet18", in_channels: int = 1,
                 backbone_kwargs: Mapping | None = None, cam_threshold: float = 0.4,
                 dense_guidance: bool = True, output_stride: int | None = None) -> None:
        super().__init__()
        self.classifier, self.target_layer, self.output_stride = build_classifier(backbone, in_channels,
                                                                                  backbone_kwargs, output_stride)
        self.sam = sam
        self.cam_threshold = float(cam_threshold)
        self.dense_guidance = bool(dense_guidance)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classification logits ``[B, 2]`` (absent, present)."""
        return self.classifier(x)

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        """Grad-CAM of the positive class, min-max scaled per slice, computed with the classifier in eval mode."""
        was_training = self.classifier.training
        self.classifier.eval()
        try:
            return grad_cam(self.classifier, x, self.target_layer, class_idx=1)
        finally:
            self.classifier.train(was_training)

    def prompts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(cam, boxes, cam_mask, cam_empty)`` of a batch of slices."""
        cam = self.cams(x)
        boxes, mask, empty = cam_boxes(cam, self.cam_threshold)
        return cam, boxes, mask, empty

    def segment(self, x: torch.Tensor, boxes: torch.Tensor, cam_mask: torch.Tensor | None) -> torch.Tensor:
        """SAM's mask logits ``[B, 1, H, W]`` for one box per slice (the CAM mask as dense guidance if enabled).

        The first channel of ``x`` is what SAM sees (scaled to ``[0, 1]`` by the caller's intensity transform).
        """
        guidance = cam_mask if self.dense_guidance else None
        logits, _ = self.sam(x[:, :1], boxes, guidance)
        return logits

    @torch.no_grad()
    def predict(self, x: torch.Tensor, boxes: torch.Tensor | None = None,
                extra: tuple[torch.Tensor, torch.Tensor] | None = None) -> SamMixOutput:
        """Classifier probability, CAM, prompts and SAM logits of a batch of slices (eval mode, no gradients kept).

        Args:
            x: ``[B, C, H, W]`` slices.
            boxes: box prompts from outside (``[B, 4]``, e.g. ground-truth boxes); None: the CAM boxes.
            extra: ``(rows [k], boxes [k, 4])``: also decode these boxes for those slices from the same image
                embeddings (one encoder pass serves both), as ``extra_logits [k, 1, H, W]``.
        """
        probability = torch.softmax(self.classifier(x), dim=1)[:, 1]
        cam, cam_boxes_, mask, empty = self.prompts(x)
        chosen = cam_boxes_ if boxes is None else boxes.to(x.device).float()
        height, width = x.shape[-2:]
        embeddings = self.sam.encode(x[:, :1], mask if self.dense_guidance else None)
        logits, _ = self.sam.segment(embeddings, chosen, height, width)
        out = SamMixOutput(probability=probability, cam=cam, cam_mask=mask, boxes=chosen, cam_empty=empty,
                           logits=logits)
        if extra is not None:
            rows, extra_boxes = extra
            rows = torch.as_tensor(rows, dtype=torch.long, device=x.device)
            out["extra_logits"] = self.sam.segment(embeddings[rows], extra_boxes.to(x.device).float(), height,
                                                   width)[0]
        return out
