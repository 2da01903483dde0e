"""SAMAug-C (docs/classification.md): a classifier on CT/MRI slices or volumes, with SAM-emphasised images as a
second branch (or as extra samples). Configs: ``configs/train_samaug_cls.json``, ``configs/evaluate_cls.json``,
``configs/inference_cls.json``."""

from bundle.workflows.classification.card import CardBestModelSaver, network_from_card, read_card
from bundle.workflows.classification.images import ClassifierImageLogger
from bundle.workflows.classification.metrics import FusedClassificationMetric, classification_metrics
from bundle.workflows.classification.report import ClassificationReport
from bundle.workflows.classification.transforms import ClassifierInputd, ClassifierPrepareBatch
from bundle.workflows.classification.workflow import ClassificationData, InferenceData, prior_kinds_for, uses_priors

__all__ = [
    "CardBestModelSaver",
    "ClassificationData",
    "ClassificationReport",
    "ClassifierImageLogger",
    "ClassifierInputd",
    "ClassifierPrepareBatch",
    "FusedClassificationMetric",
    "InferenceData",
    "classification_metrics",
    "network_from_card",
    "prior_kinds_for",
    "read_card",
    "uses_priors",
]
