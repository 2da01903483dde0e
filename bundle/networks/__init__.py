"""Networks: the SAMAug-C dual-branch classifier, its loss, probability fusion and per-branch Grad-CAM; WeakMedSAM's
parent/child classifier with its CAM and loss, and sub-class exploration."""

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
from .parent_child import ParentChildClassifier, ParentChildLoss
from .subclasses import SubclassResult, assign_subclasses, explore_subclasses

__all__ = [
    "BACKBONES",
    "BRANCH_MODES",
    "BRANCH_NAMES",
    "DEFAULT_FUSION_GRID",
    "FUSION_METRICS",
    "DualBranchClassifier",
    "DualBranchLoss",
    "ParentChildClassifier",
    "ParentChildLoss",
    "SubclassResult",
    "assign_subclasses",
    "branch_grad_cam",
    "branch_probabilities",
    "build_backbone",
    "choose_fusion_weight",
    "explore_subclasses",
    "fuse_probabilities",
    "fusion_weight_scores",
    "grad_cam",
    "mean_roc_auc",
]
