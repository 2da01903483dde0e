"""SAM with gradients: image encoder -> prompt encoder -> mask decoder on batches of slices, for tuning.

:class:`~bundle.sam.engine.SamEngine` runs under ``torch.inference_mode`` and decodes many prompts per embedding;
tuning needs the opposite: one box per slice, a batch of slices, and gradients through the parts being trained.
:class:`TrainableSam` is that path:

- slices ``[B, 1, H, W]`` scaled to ``[0, 1]`` are turned into the encoder's input with the model card's
  preprocessing (:class:`~bundle.sam.loading.Preprocessing`) in torch (bilinear resize of the longest side or of
  both sides, ImageNet mean/std on the 0-255 scale or per-slice min-max, zero padding);
- an optional dense guidance map (SAM-Mix: the thresholded CAM) is resized into the same input frame, averaged onto
  the embedding grid and added to every channel ``c`` of the image embedding times a gain ``g_c``: ``fixed``
  (``g_c = guidance_weight``, 1 as in the paper) or ``learned`` (a trained gain per channel starting at 0, so tuning
  starts from the published SAM instead of an embedding shifted by 1 wherever the CAM is on);
- one box prompt per slice goes through SAM's prompt encoder, and SAM's two-way transformer and mask head run on the
  whole batch at once (``MaskDecoder.forward`` would pair every prompt with every image of the batch);
- multimask output keeps, per slice, the mask with the highest predicted IoU; box-trained models whose IoU head
  was never trained (LiteMedSAM, MedSAM: card ``prompts == "boxes"``) use the single-mask output;
- the logits are cropped to the unpadded input and resized to the slice size.

With ``lora_rank > 0`` LoRA adapters are put on the encoder's q and v projections (:mod:`bundle.sam.lora`) and only
they, the prompt encoder and the mask decoder are trainable; the rest of the encoder stays frozen and in eval mode
(LiteMedSAM's batch-norm statistics never move). ``lora_rank = 0`` with ``tune=False`` is SAM as published
(zero-shot).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

from bundle.sam.cam_prompts import embedding_guidance
from bundle.sam.loading import Preprocessing

__all__ = ["GUIDANCE_MODES", "MULTIMASK_MODES", "TrainableSam", "sam_input"]

MULTIMASK_MODES = ("auto", "multimask", "single")
GUIDANCE_MODES = ("learned", "fixed")


def sam_input(slices: torch.Tensor, preprocessing: Preprocessing, pixel_mean=None, pixel_std=None,
              scale_intensity: bool = True) -> torch.Tensor:
    """``[B, C, H, W]`` maps -> ``[B, C', S, S]`` in the encoder's input frame (resized, scaled, zero padded).

    Args:
        slices: images in ``[0, 1]`` (one channel is repeated to SAM's three), or any maps to move into the input
            frame with ``scale_intensity=False`` (the guidance masks).
        preprocessing: the model card's preprocessing.
        pixel_mean, pixel_std: SAM's ImageNet statistics (0-255 scale), for ``intensity == "pixel_mean_std"``.
        scale_intensity: apply the card's intensity scaling (images) or not (masks).
    """
    if slices.ndim != 4:
        raise ValueError(f"expected slices [B, C, H, W], got {tuple(slices.shape)}")
    new_h, new_w = preprocessing.input_shape(*slices.shape[-2:])
    x = F.interpolate(slices.float(), size=(new_h, new_w), mode="bilinear", align_corners=False)
    if scale_intensity:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[1] != 3:
            raise ValueError(f"SAM takes 1 or 3 channels per slice, got {x.shape[1]}")
        if preprocessing.intensity == "minmax":
            low = x.amin(dim=(1, 2, 3), keepdim=True)
            x = (x - low) / (x.amax(dim=(1, 2, 3), keepdim=True) - low).clamp(min=1e-8)
        else:
            x = (x * 255.0 - pixel_mean.view(1, 3, 1, 1)) / pixel_std.view(1, 3, 1, 1)
    size = preprocessing.size
    return F.pad(x, (0, size - new_w, 0, size - new_h))


class TrainableSam(nn.Module):
    """A SAM model run with gradients on batches of slices, one box (and optional dense guidance) per slice.

    Args:
        sam: a ``segment_anything.modeling.Sam`` with ``sam_info`` (:func:`bundle.sam.load_sam`).
        lora_rank: LoRA rank on the encoder's q and v projections (8 in SAM-Mix); 0: no adapter.
        lora_alpha: LoRA scale numerator (``None``: the rank, scale 1).
        tune: whether the prompt encoder, mask decoder and adapters are trainable (False: everything frozen).
        multimask: ``auto`` (single-mask output for box-trained models, multimask otherwise), ``multimask`` or
            ``single``.
        guidance: ``fixed`` (every channel gets ``guidance_weight``; the paper) or ``learned`` (a gain per embedding
            channel, trained, starting at 0) for the dense guidance added to the image embedding.
        guidance_weight: the fixed gain (the paper adds the CAM mask as it is: 1); 0 switches guidance off.
    """

    def __init__(self, sam: nn.Module, lora_rank: int = 8, lora_alpha: float | None = None, tune: bool = True,
                 multimask: str = "auto", guidance: str = "fixed", guidance_weight: float = 1.0) -> None:
        super().__init__()
        from bundle.sam.lora import apply_lora, has_lora, mark_trainable

        self.sam = sam
        info = sam.sam_info
        self.preprocessing = Preprocessing(**info.preprocessing)
        mode = look_up_option(multimask, MULTIMASK_MODES)
        self.multimask = (info.prompts != "boxes") if mode == "auto" else mode == "multimask"
        self.guidance = look_up_option(guidance, GUIDANCE_MODES)
        learned = self.guidance == "learned"
        channels = int(sam.prompt_encoder.embed_dim)
        self.guidance_gain = nn.Parameter(torch.full((channels,), 0.0 if learned else float(guidance_weight)),
                                          requires_grad=learned and tune)
        if lora_rank and not has_lora(sam):
            apply_lora(sam, rank=int(lora_rank), alpha=lora_alpha)
        if tune:
            mark_trainable(sam)
        else:
            sam.requires_grad_(False)

    def train(self, mode: bool = True) -> TrainableSam:
        super().train(mode)
        self.sam.image_encoder.eval()  # frozen encoder: batch-norm statistics (TinyViT) must not move
        return self

    @property
    def grid(self) -> tuple[int, int]:
        """The image-embedding grid ``(h, w)``."""
        size = self.sam.prompt_encoder.image_embedding_size
        return int(size[0]), int(size[1])

    def encode(self, slices: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """Image embeddings ``[B, C, h, w]`` of ``[B, 1, H, W]`` slices in ``[0, 1]``, plus the dense guidance."""
        x = sam_input(slices, self.preprocessing, self.sam.pixel_mean, self.sam.pixel_std)
        embeddings = self.sam.image_encoder(x)
        if guidance is not None:
            framed = sam_input(guidance, self.preprocessing, scale_intensity=False)
            gain = self.guidance_gain.view(1, -1, 1, 1).to(embeddings.dtype)
            embeddings = embeddings + gain * embedding_guidance(framed, embeddings.shape[-2:])
        return embeddings

    def _input_boxes(self, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
        new_h, new_w = self.preprocessing.input_shape(height, width)
        scale = torch.tensor([new_w / width, new_h / height] * 2, dtype=torch.float32, device=boxes.device)
        return boxes.float() * scale

    def decode(self, embeddings: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution logits ``[B, 1, 4h, 4w]`` and predicted IoU ``[B]`` for one box (input frame) per slice."""
        pe, dec = self.sam.prompt_encoder, self.sam.mask_decoder
        sparse, dense = pe(points=None, boxes=boxes, masks=None)
        batch = embeddings.shape[0]
        output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
        src = embeddings + dense
        hs, keys = dec.transformer(src, pe.get_dense_pe(), tokens)
        b, c, h, w = src.shape
        upscaled = dec.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
        token_ids = range(1, dec.num_mask_tokens) if self.multimask else range(0, 1)
        hyper = torch.stack([dec.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in token_ids], dim=1)
        logits = (hyper @ upscaled.flatten(2)).reshape(b, len(token_ids), *upscaled.shape[-2:])
        iou = dec.iou_prediction_head(hs[:, 0, :])[:, list(token_ids)]
        best = iou.argmax(dim=1)
        rows = torch.arange(b, device=logits.device)
        return logits[rows, best].unsqueeze(1), iou[rows, best]

    def segment(self, embeddings: torch.Tensor, boxes: torch.Tensor, height: int, width: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, 1, H, W]`` at the slice size and predicted IoU ``[B]`` from :meth:`encode`'s embeddings, one
        box (slice pixels) per embedding: several box sets can be decoded from one encoder pass."""
        low_res, iou = self.decode(embeddings, self._input_boxes(boxes, height, width))
        return self.to_slice(low_res, height, width), iou

    def to_slice(self, low_res: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Low-resolution logits -> logits ``[B, 1, H, W]`` at the slice size (padding cropped)."""
        size = self.preprocessing.size
        new_h, new_w = self.preprocessing.input_shape(height, width)
        x = F.interpolate(low_res, size=(size, size), mode="bilinear", align_corners=False)[..., :new_h, :new_w]
        return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)

    def forward(self, slices: torch.Tensor, boxes: torch.Tensor, guidance: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits at the slice size for one box per slice.

        Args:
            slices: ``[B, 1, H, W]`` in ``[0, 1]``.
            boxes: ``[B, 4]`` XYXY in slice pixels.
            guidance: ``[B, 1, H, W]`` dense guidance (the binary CAM), or None.

        Returns:
            ``(logits [B, 1, H, W], predicted IoU [B])``.
        """
        if boxes.shape != (slices.shape[0], 4):
            raise ValueError(f"expected one box per slice [{slices.shape[0]}, 4], got {tuple(boxes.shape)}")
        return self.segment(self.encode(slices, guidance), boxes, *slices.shape[-2:])
