"""Prediction of the SAMAug-C dual-branch classifier: ``w * p_A + (1 - w) * p_B`` (docs/methods.md §3), and the
choice of ``w`` on validation outputs.

``p`` is the softmax of a branch's logits (single-label) or their sigmoid (multi-label). ``w = 1`` uses the raw
branch only, ``w = 0`` the augmented branch only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
from monai.utils import look_up_option
from sklearn.metrics import roc_auc_score

from bundle.networks.losses import check_branch_logits, class_targets

__all__ = [
    "DEFAULT_FUSION_GRID",
    "FUSION_METRICS",
    "branch_probabilities",
    "choose_fusion_weight",
    "fuse_probabilities",
    "fusion_weight_scores",
    "class_roc_aucs",
    "mean_roc_auc",
]

DEFAULT_FUSION_GRID = tuple(round(0.1 * i, 1) for i in range(11))
FUSION_METRICS = ("auc", "accuracy")
# scores closer than this count as a tie (float noise of the fused probabilities)
_TIE_TOLERANCE = 1e-12


def branch_probabilities(logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """Per-branch class probabilities.

    Args:
        logits: ``[B, n_branches, K]``.
        multi_label: sigmoid per class instead of softmax over classes.

    Returns:
        ``[B, n_branches, K]`` probabilities.
    """
    logits = check_branch_logits(torch.as_tensor(logits))
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=-1)


def fuse_probabilities(logits: torch.Tensor, w: float = 0.5, multi_label: bool = False) -> torch.Tensor:
    """Fused prediction ``w * p_A + (1 - w) * p_B`` of a dual-branch output.

    Args:
        logits: ``[B, n_branches, K]``; branch 0 is A (raw), branch 1 is B (augmented).
        w: weight of branch A, in ``[0, 1]``; not used with one branch.
        multi_label: sigmoid per class instead of softmax over classes.

    Returns:
        ``[B, K]`` probabilities; for a single-branch output the branch's own probabilities.

    Raises:
        ValueError: logits not ``[B, n_branches, K]``, more than two branches, or ``w`` outside ``[0, 1]``.
    """
    probs = branch_probabilities(logits, multi_label)
    if probs.shape[1] == 1:
        return probs[:, 0]
    if probs.shape[1] != 2:
        raise ValueError(f"fusion is defined for 1 or 2 branches, got {probs.shape[1]}.")
    if not 0.0 <= float(w) <= 1.0:
        raise ValueError(f"fusion weight w must be in [0, 1], got {w}.")
    return float(w) * probs[:, 0] + (1.0 - float(w)) * probs[:, 1]


def class_roc_aucs(probs: torch.Tensor, targets: torch.Tensor, multi_label: bool = False) -> list[float]:
    """The bundle's one ROC AUC: one-vs-rest per class, NaN for a class without both positives and negatives.

    Args:
        probs: ``[N, K]`` scores.
        targets: class indices ``[N]`` (single-label) or ``[N, K]`` in ``{0, 1}`` (multi-label).
        multi_label: which target form is given.

    Returns:
        ``K`` AUCs (scikit-learn's ``roc_auc_score``; ties in the scores count one half).
    """
    probs = torch.as_tensor(probs).detach().double().cpu().numpy()
    targets = class_targets(torch.as_tensor(targets), probs.shape[0], multi_label, probs.shape[1]).cpu().numpy()
    onehot = targets >= 0.5 if multi_label else targets[:, None] == np.arange(probs.shape[1])[None]
    return [float(roc_auc_score(onehot[:, k], probs[:, k])) if 0 < onehot[:, k].sum() < len(onehot) else math.nan
            for k in range(probs.shape[1])]


def mean_roc_auc(probs: torch.Tensor, targets: torch.Tensor, multi_label: bool = False) -> float:
    """Mean of :func:`class_roc_aucs` over the classes where it is defined.

    Raises:
        ValueError: when no class has both positive and negative samples (the AUC is undefined).
    """
    aucs = [a for a in class_roc_aucs(probs, targets, multi_label) if not math.isnan(a)]
    if not aucs:
        raise ValueError("ROC AUC is undefined: no class has both positive and negative samples in the targets.")
    return float(np.mean(aucs))


def _accuracy(probs: torch.Tensor, targets: torch.Tensor, multi_label: bool = False) -> float:
    targets = class_targets(targets, probs.shape[0], multi_label, probs.shape[1]).to(probs.device)
    if multi_label:
        return float(((probs >= 0.5) == (targets >= 0.5)).double().mean())
    return float((probs.argmax(dim=1) == targets).double().mean())


def fusion_weight_scores(
    logits: torch.Tensor,
    targets: torch.Tensor,
    multi_label: bool = False,
    grid: Sequence[float] = DEFAULT_FUSION_GRID,
    metric: str | Callable[[torch.Tensor, torch.Tensor], float] = "auc",
) -> list[tuple[float, float]]:
    """The validation metric of the fused prediction for every ``w`` of a grid.

    Args:
        logits: validation outputs ``[N, 2, K]`` of a dual-branch network.
        targets: class indices ``[N]`` (single-label) or ``[N, K]`` (multi-label).
        multi_label: sigmoid per class and multi-label targets.
        grid: candidate weights in ``[0, 1]`` (default ``0, 0.1, ..., 1``).
        metric: ``"auc"`` (:func:`mean_roc_auc`), ``"accuracy"`` (single-label: top-1; multi-label: per class at
            0.5), or a callable ``(probs [N, K], targets) -> float``; higher is better.

    Returns:
        ``[(w, score), ...]`` in grid order.

    Raises:
        ValueError: an empty grid, a weight outside ``[0, 1]``, an unknown metric name, or an undefined AUC.
    """
    if len(grid) == 0:
        raise ValueError("grid must hold at least one weight.")
    if isinstance(metric, str):
        metric = partial(mean_roc_auc if look_up_option(metric, FUSION_METRICS) == "auc" else _accuracy,
                         multi_label=multi_label)
    logits = torch.as_tensor(logits).detach().float()
    return [(float(w), float(metric(fuse_probabilities(logits, w, multi_label), targets))) for w in grid]


def choose_fusion_weight(
    logits: torch.Tensor,
    targets: torch.Tensor,
    multi_label: bool = False,
    grid: Sequence[float] = DEFAULT_FUSION_GRID,
    metric: str | Callable[[torch.Tensor, torch.Tensor], float] = "auc",
) -> float:
    """The fusion weight ``w`` with the best validation metric.

    Ties (scores within 1e-12) go to the ``w`` closest to 0.5, the even blend, since the data give no reason to
    prefer a branch; between two equally close weights, the smaller (more weight on the augmented branch) wins,
    only to be deterministic.

    Args:
        logits: validation outputs ``[N, 2, K]`` of a dual-branch network.
        targets: class indices ``[N]`` (single-label) or ``[N, K]`` (multi-label).
        multi_label: sigmoid per class and multi-label targets.
        grid: candidate weights (default ``0, 0.1, ..., 1``).
        metric: see :func:`fusion_weight_scores`; default mean ROC AUC over classes.

    Returns:
        the chosen ``w``.

    Raises:
        ValueError: see :func:`fusion_weight_scores`.
    """
    scores = fusion_weight_scores(logits, targets, multi_label, grid, metric)
    if any(np.isnan(s) for _, s in scores):
        raise ValueError(f"the metric returned NaN for some weights: {scores}.")
    best = max(s for _, s in scores)
    tied = [w for w, s in scores if s >= best - _TIE_TOLERANCE]
    return min(tied, key=lambda w: (abs(w - 0.5), w))
