"""SAMAug segmentation workflow pieces: network input by ``prior_mode``, train step by ``train_mode``, inferer by
``infer_mode``, segmentation metrics and the per-case report, region transforms, for MONAI's ``SupervisedTrainer`` /
``SupervisedEvaluator``. Checkpoints, guards and TensorBoard handlers are shared: :mod:`bundle.workflows.common`."""

from bundle.workflows.common.seg_metrics import METRIC_DEFINITIONS, case_metrics
from bundle.workflows.segmentation.inferer import (
    ENTROPY_MODES,
    INFER_MODES,
    SamAugInferer,
    SamAugPrepareBatch,
    selection_score,
)
from bundle.workflows.segmentation.inputs import (
    DEFAULT_PRIOR_NAMES,
    PRIOR_MODES,
    build_network_input,
    input_channels,
    prior_channel_names,
    raw_network_input,
    split_image_prior,
)
from bundle.workflows.segmentation.report import SegmentationReport, case_record
from bundle.workflows.segmentation.train_step import TRAIN_MODES, SamAugTrainStep
from bundle.workflows.segmentation.transforms import LabelToRegions, LabelToRegionsd, RegionsToLabel, RegionsToLabeld

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
    "METRIC_DEFINITIONS",
    "case_metrics",
    "case_record",
    "SegmentationReport",
    "LabelToRegions",
    "LabelToRegionsd",
    "RegionsToLabel",
    "RegionsToLabeld",
]
