"""Classification metrics of SAMAug-C: per-class scores of fused probabilities, and the validation key metric.

:func:`classification_metrics` scores ``[N, K]`` probabilities against the targets. Each class is scored one
versus rest: the positive decision is ``argmax == k`` (single-label; for a binary task class 1 is "the finding")
or ``p_k >= threshold`` (multi-label). Per class: accuracy, balanced accuracy ``(sens + spec) / 2``, ROC AUC,
F1, sensitivity ``TP / (TP + FN)`` and specificity ``TN / (TN + FP)``, NaN when undefined (no positive, no negative).
The means skip NaN. Single-label tasks also get the top-1 accuracy and the ``K x K`` confusion matrix (rows: truth);
multi-label tasks one 2 x 2 matrix per class.

:class:`FusedClassificationMetric` is the evaluator's key metric: it collects the per-branch logits of a validation
run, chooses the fusion weight ``w`` there when it is ``"auto"`` (:func:`bundle.networks.choose_fusion_weight`),
and puts the mean ROC AUC of the fused prediction (plus per-class values and ``w``) into ``engine.state.metrics``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from ignite.metrics import Metric
from sklearn.metrics import confusion_matrix

from bundle import distributed
from bundle.networks.fusion import choose_fusion_weight, class_roc_aucs, fuse_probabilities
from bundle.networks.losses import class_targets

__all__ = ["METRIC_NAMES", "METRIC_DEFINITIONS", "one_vs_rest", "classification_metrics", "FusedClassificationMetric"]

METRIC_NAMES = ("accuracy", "balanced_accuracy", "auc", "f1", "sensitivity", "specificity")
METRIC_DEFINITIONS = {
    "accuracy": "(TP + TN) / N of the class decision (one vs rest)",
    "balanced_accuracy": "(sensitivity + specificity) / 2",
    "auc": "ROC AUC of the class probability (NaN when the class has no positive or no negative)",
    "f1": "2 TP / (2 TP + FP + FN) (NaN when TP + FP + FN = 0)",
    "sensitivity": "TP / (TP + FN) (NaN without positives)",
    "specificity": "TN / (TN + FP) (NaN without negatives)",
}
logger = logging.getLogger(__name__)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def one_vs_rest(probs: torch.Tensor | np.ndarray, targets, multi_label: bool = False,
                threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per-class truths and decisions ``([N, K] bool, [N, K] bool)`` of probabilities ``[N, K]``."""
    probs = np.asarray(torch.as_tensor(probs).detach().double().cpu())
    n, k = probs.shape
    target = class_targets(torch.as_tensor(targets), n, multi_label, k).cpu().numpy()
    if multi_label:
        return target >= 0.5, probs >= threshold
    classes = np.arange(k)[None]
    return target[:, None] == classes, probs.argmax(axis=1)[:, None] == classes


def classification_metrics(probs, targets, class_names: Sequence[str], multi_label: bool = False,
                           threshold: float = 0.5) -> dict:
    """Per-class and mean classification metrics of probabilities ``[N, K]``.

    Args:
        probs: ``[N, K]`` class probabilities (softmax or sigmoid, e.g. fused).
        targets: ``[N]`` class indices (single-label) or ``[N, K]`` 0/1 (multi-label).
        class_names: ``K`` names.
        multi_label: which target form is given.
        threshold: multi-label decision threshold.

    Returns:
        ``{"per_class": {class: {metric: float}}, "mean": {metric: float}, "confusion": list (K x K, or per class
        2 x 2 for multi-label), "top1_accuracy": float (single-label only), "n": N}``.
    """
    truth, decision = one_vs_rest(probs, targets, multi_label, threshold)
    scores = np.asarray(torch.as_tensor(probs).detach().double().cpu())
    aucs = class_roc_aucs(scores, targets, multi_label)
    per_class = {}
    for k, name in enumerate(class_names):
        t, d = truth[:, k], decision[:, k]
        tp, tn = int((t & d).sum()), int((~t & ~d).sum())
        fp, fn = int((~t & d).sum()), int((t & ~d).sum())
        sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
        per_class[str(name)] = {
            "accuracy": _ratio(tp + tn, len(t)),
            "balanced_accuracy": (sens + spec) / 2 if not (math.isnan(sens) or math.isnan(spec)) else math.nan,
            "auc": aucs[k],
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "sensitivity": sens,
            "specificity": spec,
        }
    mean = {}
    for m in METRIC_NAMES:
        vals = [v[m] for v in per_class.values() if not math.isnan(v[m])]
        mean[m] = float(np.mean(vals)) if vals else math.nan
    out = {"per_class": per_class, "mean": mean, "n": int(len(scores))}
    if multi_label:
        out["confusion"] = {str(name): confusion_matrix(truth[:, k], decision[:, k], labels=[False, True]).tolist()
                            for k, name in enumerate(class_names)}
    else:
        labels = truth.argmax(axis=1)
        out["confusion"] = confusion_matrix(labels, scores.argmax(axis=1), labels=list(range(len(class_names)))).tolist()
        out["top1_accuracy"] = float((labels == scores.argmax(axis=1)).mean()) if len(labels) else math.nan
    return out


class FusedClassificationMetric(Metric):
    """Ignite metric: mean ROC AUC of the fused prediction over one validation run, choosing ``w`` on the way.

    ``engine.state.metrics`` receives ``{name}`` (mean AUC; 0.5 (chance) with a warning when no class has both
    positives and negatives, so that the best-model comparison stays defined), ``{name}_{class}`` (per-class AUC),
    ``val_balanced_accuracy``, ``val_accuracy`` and ``val_fusion_weight``. :attr:`fusion_weight` holds the weight of
    the last run (what the best model is saved with).

    Args:
        class_names: the ``K`` class names.
        multi_label: sigmoid per class and ``[B, K]`` targets.
        fusion_weight: ``"auto"`` or a fixed ``w`` in ``[0, 1]``.
        prefix: prefix of the extra metric names.
        output_transform: ignite output transform; default ``(pred, label)`` of MONAI's decollated output.
    """

    def __init__(self, class_names: Sequence[str], multi_label: bool = False, fusion_weight: str | float = "auto",
                 prefix: str = "val", output_transform=None) -> None:
        from monai.handlers import from_engine

        self.class_names = [str(c) for c in class_names]
        self.multi_label = bool(multi_label)
        self.setting = fusion_weight
        self.fusion_weight = 0.5 if fusion_weight == "auto" else float(fusion_weight)
        self.prefix = prefix
        self.last: dict = {}
        super().__init__(output_transform=output_transform or from_engine(["pred", "label"]))

    def reset(self) -> None:
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def update(self, output) -> None:
        logits, targets = output
        if isinstance(logits, (list, tuple)):
            logits, targets = torch.stack([torch.as_tensor(x) for x in logits]), torch.stack(
                [torch.as_tensor(t) for t in targets])
        self._logits.append(torch.as_tensor(logits).detach().float().cpu())
        self._targets.append(torch.as_tensor(targets).detach().cpu())

    def _gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sample's logits and targets; under ``torchrun`` those of every rank (each validates its share)."""
        local = (torch.cat(self._logits), torch.cat(self._targets)) if self._logits else None
        shares = [share for share in distributed.gather_objects(local) if share is not None]
        if not shares:
            raise ValueError("the validation run saw no sample: the validation split is empty")
        return torch.cat([s[0] for s in shares]), torch.cat([s[1] for s in shares])

    def compute(self) -> float:
        logits, targets = self._gathered()
        if self.setting == "auto" and logits.shape[1] == 2:
            try:
                self.fusion_weight = choose_fusion_weight(logits, targets, self.multi_label)
            except ValueError:  # AUC undefined on this split: choose by accuracy instead
                self.fusion_weight = choose_fusion_weight(logits, targets, self.multi_label, metric="accuracy")
        probs = fuse_probabilities(logits, self.fusion_weight, self.multi_label)
        self.last = classification_metrics(probs, targets, self.class_names, self.multi_label)
        auc = self.last["mean"]["auc"]
        if math.isnan(auc):
            logger.warning("validation ROC AUC is undefined (no class has both positives and negatives); "
                           "scoring the model as chance (0.5)")
            return 0.5
        return float(auc)

    def completed(self, engine, name: str) -> None:
        score = self.compute()
        engine.state.metrics[name] = score
        for cls, values in self.last["per_class"].items():
            engine.state.metrics[f"{name}_{cls}"] = values["auc"]
        engine.state.metrics[f"{self.prefix}_balanced_accuracy"] = self.last["mean"]["balanced_accuracy"]
        engine.state.metrics[f"{self.prefix}_accuracy"] = self.last["mean"]["accuracy"]
        engine.state.metrics[f"{self.prefix}_fusion_weight"] = float(self.fusion_weight)
