"""One image embedding, any number of prompts: the slice-wise SAM engine.

:class:`SamEngine` runs SAM's image encoder on batches of uint8 RGB slices, with the preprocessing of the model's card
(:class:`~bundle.sam.loading.Preprocessing`: for SAM exactly ``SamPredictor.set_image``'s resize of the longest
side, pixel normalisation and padding; for LiteMedSAM a 256 resize and min-max scaling), and decodes point, box and
dense (mask) prompts for any of those embeddings, prompts of several slices in one batch. Given a
:class:`~bundle.sam.loading.SamInfo` instead of a model, it loads the model on first use: its signature (the prior
cache's key) is known before that, so a run whose priors are all cached never builds SAM.

The decoder is SAM's own ``MaskDecoder`` modules, driven in two steps so callers pay only for what they use:
:meth:`SamEngine.decode_tokens` runs the two-way transformer and the IoU head (enough to filter candidates by
predicted IoU), :meth:`SamEngine.mask_logits` runs the upscaling and hypernetworks for the prompts that are kept.
For prompts without a dense input all prompts of a slice attend to the same image tokens in the transformer's first
block, so that block's image-side projections (keys and values of token-to-image attention, queries of
image-to-token attention) are computed once per slice instead of once per prompt.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from PIL import Image

from bundle.sam.loading import Preprocessing, SamConfig, SamInfo, load_sam

__all__ = ["SamEngine", "SliceEmbeddings", "DecodedTokens", "resolve_autocast"]

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16, "auto": "auto"}


def resolve_autocast(autocast: str, device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype ``autocast`` means on ``device`` (``None``: float32).

    ``auto`` is bf16 on a CUDA device that supports it, else fp16 on CUDA, and float32 on the CPU (bf16 autocast was
    3-17x slower than float32 on the AVX2 CPUs measured here).
    """
    choice = look_up_option(autocast, AUTOCAST_DTYPES)
    if choice != "auto":
        return choice
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


@dataclass
class SliceEmbeddings:
    """Image embeddings of ``B`` slices of one size.

    Attributes:
        embeddings: ``[B, C, h, w]`` float32 (``h = w = img_size / 16``).
        original_size: ``(H, W)`` of the slices.
        input_size: ``(H', W')`` after resizing the longest side to the encoder's input size (before padding).
    """

    embeddings: torch.Tensor
    original_size: tuple
    input_size: tuple

    def __len__(self) -> int:
        return self.embeddings.shape[0]


@dataclass
class DecodedTokens:
    """Transformer outputs of ``N`` prompts; masks are computed from them on request."""

    iou: torch.Tensor  # [N, 4] predicted IoU of every mask token (0: single-mask output, 1-3: multimask outputs)
    mask_tokens: torch.Tensor  # [N, 4, C]
    image_tokens: torch.Tensor  # [N, h * w, C]
    grid: tuple  # (h, w) of the embedding

    def __len__(self) -> int:
        return self.iou.shape[0]


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def _softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # SAM's Attention: softmax(q k^T / sqrt(d)) v, with broadcasting over leading dimensions
    attn = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), dim=-1)
    return attn @ v


class SamEngine:
    """Batched SAM image encoding and prompt decoding.

    Args:
        model: a ``segment_anything.modeling.Sam`` with ``sam_info`` (see :func:`bundle.sam.load_sam`), or the
            :class:`~bundle.sam.loading.SamInfo` of one (:func:`bundle.sam.loading.sam_info`): the model is then
            loaded on first use.
        batch_size: slices per image-encoder batch.
        autocast: ``"none"``, ``"bf16"``, ``"fp16"`` or ``"auto"`` (see :func:`resolve_autocast`). Mixed precision
            runs the encoder and decoder; outputs are float32.
        device: defaults to the model's device (CUDA when available for a model not loaded yet).
    """

    def __init__(self, model: torch.nn.Module | SamInfo, batch_size: int = 4, autocast: str = "auto",
                 device=None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(model, SamInfo):
            self._model, self.info = None, model
            default_device = "cuda" if torch.cuda.is_available() else "cpu"
        else:
            self._model, self.info = model.eval(), getattr(model, "sam_info", None)
            default_device = model.device
        self.device = torch.device(device if device is not None else default_device)
        if self._model is not None:
            self._model.to(self.device)
        if self.info is None:
            raise ValueError("the SAM model carries no sam_info: build it with bundle.sam.load_sam / build_sam")
        self.preprocessing = Preprocessing(**self.info.preprocessing)
        self.image_size = self.preprocessing.size
        self.batch_size = int(batch_size)
        self.autocast_name = autocast
        self.autocast_dtype = resolve_autocast(autocast, self.device)

    @property
    def model(self) -> torch.nn.Module:
        """The SAM model, loaded on first access when the engine was made from a :class:`SamInfo`."""
        if self._model is None:
            info = self.info
            model_type = SamConfig(**info.config) if info.model_type == "custom" else info.model_type
            model = load_sam(model_type, info.checkpoint, device=self.device, adapter=info.adapter)
            if model.sam_info.checkpoint_sha256 != info.checkpoint_sha256:
                raise RuntimeError(
                    f"{info.checkpoint}: the checkpoint changed since this run started (sha256 "
                    f"{info.checkpoint_sha256} then, {model.sam_info.checkpoint_sha256} now)"
                )
            if model.sam_info.adapter_sha256 != info.adapter_sha256:
                raise RuntimeError(
                    f"{info.adapter}: the SAM adapter changed since this run started (sha256 "
                    f"{info.adapter_sha256} then, {model.sam_info.adapter_sha256} now)"
                )
            self._model = model.eval()
        return self._model

    @property
    def loaded(self) -> bool:
        """Whether the model has been built (an engine made from a :class:`SamInfo` builds it on first use)."""
        return self._model is not None

    def signature(self) -> dict:
        """What about the engine changes its outputs (prior-cache key); never builds the model."""
        return {
            "sam": self.info.signature(),
            "autocast": str(self.autocast_dtype).replace("torch.", "") if self.autocast_dtype else "float32",
        }

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    # ---- images ---------------------------------------------------------------------------------------------------
    def preprocess(self, images: np.ndarray) -> tuple[torch.Tensor, tuple, tuple]:
        """``[B, H, W, 3]`` uint8 -> the ``[B, 3, S, S]`` encoder input of the model's preprocessing.

        The uint8 slices are resized bilinearly by PIL, as ``SamPredictor.set_image`` does (so SAM's embeddings match
        Meta's pipeline exactly), then scaled (ImageNet mean/std or per-slice min-max) and zero-padded.
        """
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected [B, H, W, 3] uint8 slices, got {images.shape} {images.dtype}")
        pre = self.preprocessing
        new_h, new_w = pre.input_shape(*images.shape[1:3])
        resized = np.stack([np.asarray(Image.fromarray(im).resize((new_w, new_h), Image.BILINEAR)) for im in images])
        x = torch.as_tensor(resized, device=self.device).permute(0, 3, 1, 2).float()
        if pre.intensity == "minmax":
            low = x.amin(dim=(1, 2, 3), keepdim=True)
            x = (x - low) / (x.amax(dim=(1, 2, 3), keepdim=True) - low).clamp(min=1e-8)
        else:
            x = (x - self.model.pixel_mean) / self.model.pixel_std
        x = F.pad(x, (0, pre.size - new_w, 0, pre.size - new_h))
        return x, tuple(images.shape[1:3]), (new_h, new_w)

    @torch.inference_mode()
    def embed(self, images: np.ndarray) -> SliceEmbeddings:
        """Image embeddings of ``[B, H, W, 3]`` uint8 slices, encoded ``batch_size`` at a time."""
        images = np.asarray(images)
        if images.ndim != 4:  # checked here: a chunk of a single [H, W, 3] image would be reported as [B, W, 3]
            raise ValueError(f"expected [B, H, W, 3] uint8 slices, got {images.shape} {images.dtype}")
        out = []
        original_size = input_size = None
        for start in range(0, len(images), self.batch_size):
            x, original_size, input_size = self.preprocess(images[start : start + self.batch_size])
            with self._autocast():
                out.append(self.model.image_encoder(x).float())
        if not out:
            raise ValueError("no slices to embed")
        return SliceEmbeddings(torch.cat(out), original_size, input_size)

    # ---- prompts --------------------------------------------------------------------------------------------------
    def to_input_frame(self, coords: torch.Tensor, original_size: tuple) -> torch.Tensor:
        """Point or box coordinates (x, y in pixels of the original slice) -> the encoder's input frame."""
        coords = torch.as_tensor(coords, dtype=torch.float32, device=self.device)
        h, w = original_size
        new_h, new_w = self.preprocessing.input_shape(h, w)
        scale = torch.tensor([new_w / w, new_h / h], device=self.device)
        return (coords.reshape(*coords.shape[:-1], -1, 2) * scale).reshape(coords.shape)

    @torch.inference_mode()
    def decode_tokens(
        self,
        emb: SliceEmbeddings,
        image_index: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        embedding_offset: torch.Tensor | None = None,
    ) -> DecodedTokens:
        """Run the two-way transformer and IoU head for ``N`` prompts.

        Args:
            emb: embeddings of the slices the prompts refer to.
            image_index: ``[N]`` which slice of ``emb`` each prompt belongs to.
            point_coords: ``[N, P, 2]`` (x, y) in original-slice pixels.
            point_labels: ``[N, P]``; 1 foreground, 0 background.
            boxes: ``[N, 4]`` XYXY in original-slice pixels.
            mask_inputs: ``[N, 1, 4h, 4w]`` dense mask prompts (logits, SAM's ``mask_input``), in the padded
                low-resolution frame (256 x 256 for a 1024 encoder).
            embedding_offset: ``[N, 1 or C, h, w]`` added to the image embedding (dense guidance as in SAM-Mix).

        Returns:
            :class:`DecodedTokens`.
        """
        image_index = torch.as_tensor(image_index, dtype=torch.long, device=self.device)
        points = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels are required with point_coords")
            coords = self.to_input_frame(point_coords, emb.original_size)
            points = (coords, torch.as_tensor(point_labels, dtype=torch.int, device=self.device))
        if boxes is not None:
            boxes = self.to_input_frame(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), emb.original_size)
        if mask_inputs is not None:
            mask_inputs = torch.as_tensor(mask_inputs, dtype=torch.float32, device=self.device)
        if points is None and boxes is None and mask_inputs is None:
            raise ValueError("give at least one prompt: points, boxes or mask_inputs")
        n = len(image_index)
        for name, value in (("point_coords", point_coords), ("boxes", boxes), ("mask_inputs", mask_inputs)):
            if value is not None and len(value) != n:
                raise ValueError(f"{name} has {len(value)} prompts but image_index has {n}")

        pe_module, dec = self.model.prompt_encoder, self.model.mask_decoder
        with self._autocast():
            sparse, dense = pe_module(points=points, boxes=boxes, masks=mask_inputs)
            output_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
            tokens = torch.cat([output_tokens.unsqueeze(0).expand(n, -1, -1), sparse.to(output_tokens.dtype)], dim=1)
            key_pe = pe_module.get_dense_pe().flatten(2).transpose(1, 2)  # [1, h*w, C]
            h, w = emb.embeddings.shape[-2:]
            layers = dec.transformer.layers
            if mask_inputs is None and embedding_offset is None:
                # every prompt of a slice sees the same image tokens: share the first block's image-side work
                base = (emb.embeddings + dense[:1]).flatten(2).transpose(1, 2)  # [B, h*w, C]
                queries, keys = self._first_block_shared(layers[0], tokens, base, key_pe, image_index)
                layers = layers[1:]
            else:
                src = emb.embeddings[image_index] + dense
                if embedding_offset is not None:
                    src = src + torch.as_tensor(embedding_offset, device=self.device).to(src.dtype)
                queries, keys = tokens, src.flatten(2).transpose(1, 2)
            for layer in layers:
                queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=key_pe)
            tr = dec.transformer
            attn_out = tr.final_attn_token_to_image(q=queries + tokens, k=keys + key_pe, v=keys)
            queries = tr.norm_final_attn(queries + attn_out)
            iou = dec.iou_prediction_head(queries[:, 0, :])
        return DecodedTokens(iou.float(), queries[:, 1 : 1 + dec.num_mask_tokens, :], keys, (h, w))

    def _first_block_shared(self, block, tokens, base, key_pe, image_index):
        """SAM's first TwoWayAttentionBlock (skip_first_layer_pe) with the image-side projections done per slice."""
        queries = block.norm1(block.self_attn(q=tokens, k=tokens, v=tokens))
        t2i, i2t = block.cross_attn_token_to_image, block.cross_attn_image_to_token
        k_img = _heads(t2i.k_proj(base + key_pe), t2i.num_heads)  # [B, heads, h*w, d]
        v_img = _heads(t2i.v_proj(base), t2i.num_heads)
        q_img = _heads(i2t.q_proj(base + key_pe), i2t.num_heads)
        q_tok = _heads(t2i.q_proj(queries + tokens), t2i.num_heads)  # [N, heads, T, d]
        attn = torch.empty_like(q_tok)
        for b in torch.unique(image_index).tolist():
            sel = image_index == b
            attn[sel] = _softmax_attention(q_tok[sel], k_img[b], v_img[b])
        queries = block.norm2(queries + t2i.out_proj(_merge_heads(attn)))
        queries = block.norm3(queries + block.mlp(queries))
        k_tok = _heads(i2t.k_proj(queries + tokens), i2t.num_heads)
        v_tok = _heads(i2t.v_proj(queries), i2t.num_heads)
        keys = torch.empty(len(tokens), base.shape[1], base.shape[2], dtype=queries.dtype, device=base.device)
        for b in torch.unique(image_index).tolist():
            sel = image_index == b
            out = _softmax_attention(q_img[b].unsqueeze(0), k_tok[sel], v_tok[sel])  # [n, heads, h*w, d]
            keys[sel] = block.norm4(base[b] + i2t.out_proj(_merge_heads(out))).to(keys.dtype)
        return queries, keys

    @torch.inference_mode()
    def mask_logits(self, decoded: DecodedTokens, select: torch.Tensor | None = None, multimask_output=True):
        """Low-resolution mask logits ``[n, M, 4h, 4w]`` (M = 3 with multimask output, else 1).

        Args:
            decoded: output of :meth:`decode_tokens`.
            select: optional boolean ``[N]`` or index tensor: only these prompts are upscaled.
            multimask_output: SAM's three disambiguated masks (tokens 1-3) or the single-mask output (token 0).
        """
        dec = self.model.mask_decoder
        mask_tokens, keys = decoded.mask_tokens, decoded.image_tokens
        if select is not None:
            mask_tokens, keys = mask_tokens[select], keys[select]
        token_ids = range(1, dec.num_mask_tokens) if multimask_output else range(0, 1)
        n = keys.shape[0]
        h, w = decoded.grid
        with self._autocast():
            up = dec.output_upscaling(keys.transpose(1, 2).reshape(n, -1, h, w))
            hyper = torch.stack([dec.output_hypernetworks_mlps[i](mask_tokens[:, i, :]) for i in token_ids], dim=1)
            logits = (hyper @ up.flatten(2)).reshape(n, len(token_ids), *up.shape[-2:])
        return logits.float()

    def predict(
        self,
        emb: SliceEmbeddings,
        image_index,
        multimask_output: bool = True,
        return_logits: bool = False,
        **prompts,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks at the original slice size for ``N`` prompts, like ``SamPredictor.predict_torch``.

        Returns:
            ``(masks [N, M, H, W]`` bool (or logits with ``return_logits``), ``iou [N, M]``,
            ``low_res_logits [N, M, 4h, 4w])``.
        """
        decoded = self.decode_tokens(emb, image_index, **prompts)
        low = self.mask_logits(decoded, multimask_output=multimask_output)
        iou = decoded.iou[:, 1:] if multimask_output else decoded.iou[:, :1]
        full = self.upscale(low, emb)
        masks = full if return_logits else full > self.model.mask_threshold
        return masks, iou, low

    @torch.inference_mode()
    def upscale(self, low_res_logits: torch.Tensor, emb: SliceEmbeddings) -> torch.Tensor:
        """Low-resolution logits -> logits at the original slice size (SAM's own ``postprocess_masks``)."""
        if low_res_logits.shape[0] == 0:
            return low_res_logits.new_zeros((0, low_res_logits.shape[1], *emb.original_size))
        return self.model.postprocess_masks(low_res_logits, emb.input_size, emb.original_size)
