"""WeakMedSAM's parent/child classifier on a LoRA-tuned SAM image encoder: the paper's network.

In WeakMedSAM one model is both the classifier and the prompt-affinity source: SAMUS (SAM ViT-B with adapters) whose
feature map gives the CAM and whose embedding, decoded with prompts, gives ``M``. :class:`SamEncoderClassifier` is
that model with the bundle's SAM (LiteMedSAM by default): the image encoder with LoRA updates of its attention
projections (:mod:`bundle.sam.lora`; every other encoder weight frozen, batch-norm statistics fixed), the trainable
block of :func:`~bundle.networks.embedding_classifier.embedding_block`, and the bias-free parent / child heads. For
a 256 x 256 slice LiteMedSAM's embedding, hence the CAM, is 64 x 64 (SAMUS: 32 x 32). :meth:`embed` returns the tuned
embedding that both the heads and SAM's prompt decoder read, so one encoder pass per slice serves the CAM and ``M``.

The input is SAM's own: slices ``[B, 3, H, W]`` (or one channel) of the SAM window scaled to ``[0, 1]``, turned into
the encoder's input with the model card's preprocessing (:func:`bundle.sam.trainable.sam_input`). The saved weights
hold the encoder whole (the LoRA updates are not merged), so the classifier is rebuilt from its card's
``sam_model_type`` without the original checkpoint.
"""

from __future__ import annotations

import torch

from bundle.networks.embedding_classifier import embedding_block
from bundle.networks.parent_child import ParentChildHeads
from bundle.sam.engine import SliceEmbeddings
from bundle.sam.loading import Preprocessing, build_sam
from bundle.sam.lora import LORA_PARAMETERS, apply_lora, lora_modules
from bundle.sam.prompt_affinity import embedding_cells
from bundle.sam.trainable import sam_input

__all__ = ["SamEncoderClassifier"]


class SamEncoderClassifier(ParentChildHeads):
    """Parent/child classifier whose backbone is a SAM image encoder with LoRA.

    Args:
        num_classes: parent classes ``C``.
        num_subclasses: sub-classes per parent ``K``.
        sam_model_type: the SAM the encoder comes from (:data:`bundle.sam.loading.SAM_MODELS`); its architecture is
            built here, its weights are those of ``sam`` or loaded afterwards with ``load_state_dict``.
        lora_rank: rank of the LoRA updates of every attention projection's queries and values.
        block_channels: channels of the trainable block before the heads (0: heads on the embedding).
        sam: a loaded SAM (``bundle.sam.load_sam``) whose image encoder is used (the rest is dropped); None builds an
            untrained one of ``sam_model_type`` (for loading a trained classifier).
    """

    def __init__(self, num_classes: int, num_subclasses: int = 8, sam_model_type: str = "lite_medsam",
                 lora_rank: int = 4, block_channels: int = 128, sam: torch.nn.Module | None = None) -> None:
        super().__init__()
        sam = build_sam(sam_model_type) if sam is None else sam
        if int(lora_rank) < 1:
            raise ValueError(f"lora_rank must be >= 1, got {lora_rank}.")
        apply_lora(sam, rank=int(lora_rank))
        lora = {f"{name}.{p}" for name in lora_modules(sam) for p in LORA_PARAMETERS}
        for name, parameter in sam.named_parameters():
            parameter.requires_grad_(name in lora)
        self.spatial_dims = 2
        self.sam_model_type = str(sam_model_type)
        self.encoder = sam.image_encoder
        self.preprocessing = Preprocessing(**sam.sam_info.preprocessing)
        self.register_buffer("pixel_mean", sam.pixel_mean.detach().clone(), persistent=False)
        self.register_buffer("pixel_std", sam.pixel_std.detach().clone(), persistent=False)
        channels = int(sam.prompt_encoder.embed_dim)
        self.block = embedding_block(channels, block_channels)
        self._make_heads(num_classes, num_subclasses, int(block_channels) or channels)

    def train(self, mode: bool = True) -> SamEncoderClassifier:
        super().train(mode)
        self.encoder.eval()  # frozen statistics (TinyViT's batch norms); LoRA has no mode-dependent layer
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The tuned image embeddings ``[B, E, g, g]`` of slices ``[B, 1 or 3, H, W]`` in ``[0, 1]``."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected SAM-window slices [B, 1 or 3, H, W] in [0, 1], got {list(x.shape)}.")
        return self.encoder(sam_input(x, self.preprocessing, self.pixel_mean, self.pixel_std))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map of slices ``[B, 1 or 3, H, W]``: the tuned embedding over the slice, through the block."""
        return self.features_of_embedding(self.embed(x), tuple(x.shape[-2:]))

    def slice_embeddings(self, embedding: torch.Tensor, size: tuple[int, int]) -> SliceEmbeddings:
        """The tuned embeddings of ``size`` (``(H, W)``) slices as the SAM engine's decoder takes them (for ``M``)."""
        return SliceEmbeddings(embedding, tuple(int(s) for s in size), self.preprocessing.input_shape(*size))

    def features_of_embedding(self, embedding: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The block's map of an embedding of ``size`` (``(H, W)``) slices, cropped to the cells over the slice."""
        rows, cols = embedding_cells(self.slice_embeddings(embedding, size))
        return self.block(embedding[..., :rows, :cols])
