"""SAMAug segmentation workflow pieces: network input by ``prior_mode``, train step by ``train_mode``, inferer by
``infer_mode``, checkpoints and TensorBoard handlers, for MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator``."""

from bundle.segmentation.checkpoints import (
    CheckedCheckpointLoader,
    EpochCheckpointSaver,
    ResumeFromCheckpoint,
    load_network_weights,
    save_atomic,
)
from bundle.segmentation.guards import NonFiniteLossError, NonFiniteStateError, StopOnNonFiniteLoss
from bundle.segmentation.handlers import LearningRateLogger, PerClassMetricLogger, PriorImageLogger, TextLogger
from bundle.segmentation.inferer import ENTROPY_MODES, INFER_MODES, SamAugInferer, SamAugPrepareBatch, selection_score
from bundle.segmentation.inputs import (
    DEFAULT_PRIOR_NAMES,
    PRIOR_MODES,
    build_network_input,
    input_channels,
    prior_channel_names,
    raw_network_input,
    split_image_prior,
)
from bundle.segmentation.train_step import TRAIN_MODES, SamAugTrainStep

__all__ = [
    "PRIOR_MODES",
    "DEFAULT_PRIOR_NAMES",
    "TRAIN_MODES",
    "INFER_MODES",
    "ENTROPY_MODES",
    "input_channels",
    "build_network_input",
    "raw_network_input",
    "prior_channel_names",
    "split_image_prior",
    "SamAugTrainStep",
    "SamAugInferer",
    "SamAugPrepareBatch",
    "selection_score",
    "EpochCheckpointSaver",
    "ResumeFromCheckpoint",
    "load_network_weights",
    "save_atomic",
    "CheckedCheckpointLoader",
    "StopOnNonFiniteLoss",
    "NonFiniteLossError",
    "NonFiniteStateError",
    "PerClassMetricLogger",
    "LearningRateLogger",
    "PriorImageLogger",
    "TextLogger",
]
