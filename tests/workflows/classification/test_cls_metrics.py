"""Classification metrics against values computed by hand (and scikit-learn)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bundle.workflows.classification.metrics import classification_metrics


def test_binary_by_hand():
    # truth  1 1 1 0 0 ; p(class 1) .9 .4 .8 .3 .6 -> decisions 1 0 1 0 1: TP 2, FN 1, TN 1, FP 1
    p1 = torch.tensor([0.9, 0.4, 0.8, 0.3, 0.6])
    probs = torch.stack([1 - p1, p1], dim=1)
    m = classification_metrics(probs, torch.tensor([1, 1, 1, 0, 0]), ["neg", "pos"])
    pos = m["per_class"]["pos"]
    assert pos["sensitivity"] == pytest.approx(2 / 3) and pos["specificity"] == pytest.approx(1 / 2)
    assert pos["accuracy"] == pytest.approx(3 / 5) and pos["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert pos["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # AUC: positive/negative pairs (0.9,0.4,0.8) x (0.3,0.6) ordered correctly: 5 of 6
    assert pos["auc"] == pytest.approx(5 / 6)
    assert m["confusion"] == [[1, 1], [1, 2]] and m["top1_accuracy"] == pytest.approx(0.6)


def test_multilabel_with_an_undefined_class():
    probs = torch.tensor([[0.9, 0.2], [0.1, 0.7], [0.6, 0.4]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    m = classification_metrics(probs, targets, ["a", "b"], multi_label=True)
    assert m["per_class"]["a"]["auc"] == 1.0 and m["per_class"]["a"]["f1"] == 1.0
    b = m["per_class"]["b"]
    assert math.isnan(b["auc"]) and math.isnan(b["sensitivity"]) and b["specificity"] == pytest.approx(2 / 3)
    assert m["mean"]["auc"] == 1.0  # NaN classes are left out of the means
    assert np.asarray(m["confusion"]["b"]).tolist() == [[2, 1], [0, 0]]
