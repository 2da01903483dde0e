"""Slice-wise SAM: model loading, slice preparation, batched embeddings and prompt decoding, automatic masks, and the
trainable path with LoRA adapters (SAM-Mix).

Importing this package makes ``segment_anything`` importable even where torchvision cannot be imported
(see :mod:`bundle.sam.torchvision_compat`).
"""

from bundle.sam.torchvision_compat import import_segment_anything

import_segment_anything()

from bundle.sam.adapter import load_adapter, save_adapter  # noqa: E402
from bundle.sam.engine import DecodedTokens, SamEngine, SliceEmbeddings  # noqa: E402
from bundle.sam.loading import SAM_CONFIGS, SamConfig, SamInfo, build_sam, load_sam  # noqa: E402
from bundle.sam.lora import apply_lora, merge_lora  # noqa: E402
from bundle.sam.slices import WINDOW_PRESETS, SliceWindow  # noqa: E402
from bundle.sam.trainable import TrainableSam  # noqa: E402

__all__ = [
    "SAM_CONFIGS",
    "WINDOW_PRESETS",
    "DecodedTokens",
    "SamConfig",
    "SamEngine",
    "SamInfo",
    "SliceEmbeddings",
    "SliceWindow",
    "TrainableSam",
    "apply_lora",
    "build_sam",
    "load_adapter",
    "load_sam",
    "merge_lora",
    "save_adapter",
]
