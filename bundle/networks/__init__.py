"""Networks: the SAMAug-C dual-branch classifier, its loss, probability fusion and per-branch Grad-CAM."""

from .dual_branch import BACKBONES, BRANCH_MODES, BRANCH_NAMES, DualBranchClassifier, build_backbone
from .fusion import (
    DEFAULT_FUSION_GRID,
    FUSION_METRICS,
    branch_probabilities,
    choose_fusion_weight,
    fuse_probabilities,
    fusion_weight_scores,
    mean_roc_auc,
)
from .grad_cam import branch_grad_cam, grad_cam
from .losses import DualBranchLoss

__all__ = [
    "BACKBONES",
    "BRANCH_MODES",
    "BRANCH_NAMES",
    "DEFAULT_FUSION_GRID",
    "FUSION_METRICS",
    "DualBranchClassifier",
    "DualBranchLoss",
    "branch_grad_cam",
    "branch_probabilities",
    "build_backbone",
    "choose_fusion_weight",
    "fuse_probabilities",
    "fusion_weight_scores",
    "grad_cam",
    "mean_roc_auc",
]
