"""WeakMedSAM's parent/child classifier on SAM's image embeddings: the paper's CAM network with a frozen encoder.

WeakMedSAM's classifier *is* a SAM image encoder (SAMUS: SAM ViT-B with adapters, 256 x 256 input, 32 x 32 CAM): the
class activation maps come from SAM's own features, at the embedding grid. :class:`EmbeddingClassifier` is that
classifier with the encoder frozen: its input is the image embedding ``[B, E, g, g]`` that the ``sam_features`` stage
already computed for the prompt affinity (LiteMedSAM: ``E = 256``, ``g = 64`` for a 256 x 256 input, so the CAM is
64 x 64), so training and CAMs cost no encoder pass. A small trainable block (3 x 3 convolution, batch norm, ReLU)
adapts the embedding to the task before the bias-free parent and child heads of
:class:`~bundle.networks.parent_child.ParentChildHeads`; ``block_channels=0`` puts the heads on the embedding
directly (a linear CAM of SAM's features).
"""

from __future__ import annotations

import torch
from torch import nn

from bundle.networks.parent_child import ParentChildHeads

__all__ = ["EmbeddingClassifier", "embedding_block"]


def embedding_block(embedding_channels: int, block_channels: int) -> nn.Module:
    """The trainable block between a SAM image embedding and the heads: 3 x 3 conv + batch norm + ReLU to
    ``block_channels``, or nothing (``nn.Identity``) for ``block_channels=0``.

    Raises:
        ValueError: ``embedding_channels < 1`` or ``block_channels < 0``.
    """
    if int(embedding_channels) < 1 or int(block_channels) < 0:
        raise ValueError(f"embedding_channels must be >= 1 and block_channels >= 0, got {embedding_channels} and "
                         f"{block_channels}.")
    if not block_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(int(embedding_channels), int(block_channels), kernel_size=3, padding=1, bias=False),
                         nn.BatchNorm2d(int(block_channels)), nn.ReLU(inplace=True))


class EmbeddingClassifier(ParentChildHeads):
    """Parent/child classifier on SAM image embeddings ``[B, E, g, g]``; its CAM is on the embedding grid.

    Args:
        num_classes: parent classes ``C``.
        num_subclasses: sub-classes per parent ``K``.
        embedding_channels: ``E``, the channels of the SAM image embedding (256 for every SAM and LiteMedSAM).
        block_channels: channels of the trainable 3 x 3 conv + batch norm + ReLU block before the heads; 0: none.

    Raises:
        ValueError: non-positive counts, or a negative ``block_channels``.
    """

    def __init__(self, num_classes: int, num_subclasses: int = 8, embedding_channels: int = 256,
                 block_channels: int = 128) -> None:
        super().__init__()
        self.block = embedding_block(embedding_channels, block_channels)
        self.spatial_dims = 2
        self.embedding_channels = int(embedding_channels)
        self.block_channels = int(block_channels)
        self._make_heads(num_classes, num_subclasses, self.block_channels or self.embedding_channels)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map ``[B, F, g, g]`` of embeddings ``[B, E, g, g]``.

        Raises:
            ValueError: an input that is not ``[B, E, g, g]``.
        """
        if x.dim() != 4 or x.shape[1] != self.embedding_channels:
            raise ValueError(f"expected SAM image embeddings [B, {self.embedding_channels}, g, g], got "
                             f"{list(x.shape)}.")
        return self.block(x.float())
