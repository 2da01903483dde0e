"""SAMAug-C end to end on tiny phantoms: train -> evaluate -> infer for a 2D binary, a 2D multi-label and a 3D task."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from cls_utils import evaluate_cls, infer_cls, read_json, train_cls
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score
from workflow_utils import tensorboard_tags

from bundle.errors import InputError, exception_chain


def _check_training(work, class_names, branches=("raw", "augmented"), prior_names=("samaugc_prior",)):
    card = read_json(work / "models" / "model_card.json")
    assert card["class_names"] == class_names and 0.0 <= card["fusion_weight"] <= 1.0
    state = torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    last = torch.load(work / "run" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert set(last) == {"network", "optimizer", "lr_scheduler", "best_model", "trainer", "info"}
    tags, texts = tensorboard_tags(work / "run")
    scalars = {"train_loss", "lr", "val_mean_auc", "val_balanced_accuracy", "val_fusion_weight"}
    assert scalars | {f"val_mean_auc_{c}" for c in class_names} <= set(tags["scalars"])
    images = set(tags["images"])
    panels = {"image", "augmented", *[f"prior_{p}" for p in prior_names], *[f"gradcam_{b}" for b in branches]}
    assert {f"val/pos0/{p}" for p in panels} <= images, images
    assert any("fallback" in t for t in texts.values())
    return card


def _predictions(path):
    with open(path / "predictions.csv") as f:
        return list(csv.DictReader(f))


def test_brats_wt_2d(phantom_set, tmp_path):
    data = phantom_set("brats")
    train_cls(data, tmp_path, task="brats_wt")
    card = _check_training(tmp_path, ["no_tumour", "tumour"])
    summary, eval_dir = evaluate_cls(data, tmp_path, task="brats_wt")
    items = read_json(eval_dir / "predictions.json")["items"]
    (case,) = [e for e in read_json(data.datalist)["testing"]]
    assert len(items) == case["num_slices"] == summary["n"]
    assert [i["slice_index"] for i in items] == list(range(case["num_slices"]))
    truth = np.asarray([i["label"] == ["tumour"] for i in items])
    expected_truth = np.asarray(case["slice_labels"]["1"], bool) | np.asarray(case["slice_labels"]["2"], bool) | \
        np.asarray(case["slice_labels"]["4"], bool)
    np.testing.assert_array_equal(truth, expected_truth)
    p = np.asarray([i["probabilities"][1] for i in items])
    pred = p > np.asarray([i["probabilities"][0] for i in items])
    tumour = summary["per_class"]["tumour"]
    assert tumour["auc"] == pytest.approx(roc_auc_score(truth, p))
    assert tumour["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, pred))
    assert tumour["f1"] == pytest.approx(f1_score(truth, pred, zero_division=np.nan), nan_ok=True)
    assert tumour["sensitivity"] == pytest.approx(pred[truth].mean(), nan_ok=True)
    assert tumour["specificity"] == pytest.approx((~pred[~truth]).mean(), nan_ok=True)
    assert summary["fusion_weight"] == card["fusion_weight"]
    assert (eval_dir / "metrics_summary.md").read_text().count("|") > 10
    out = infer_cls(data, tmp_path)
    rows = _predictions(out)
    assert [int(r["slice_index"]) for r in rows] == list(range(case["num_slices"]))
    # the same model, priors and fusion weight: inference reproduces the evaluation's probabilities
    np.testing.assert_allclose([float(r["p_tumour"]) for r in rows], p, atol=1e-5)


def test_abdomenct_organs_multilabel_2d(phantom_set, tmp_path):
    data = phantom_set("abdomenct1k")
    names = ["liver", "kidney", "spleen", "pancreas"]
    train_cls(data, tmp_path, task="abdomenct_organs", cls_aug_mode="add")
    _check_training(tmp_path, names)
    with pytest.raises(Exception) as refused:  # not scored on images of another formula
        evaluate_cls(data, tmp_path, task="abdomenct_organs")
    (error,) = [e for e in exception_chain(refused.value) if isinstance(e, InputError)]
    assert "trained with cls_aug_mode 'add'" in str(error) and "--cls_aug_mode add" in str(error)
    summary, eval_dir = evaluate_cls(data, tmp_path, task="abdomenct_organs", cls_aug_mode="add")
    assert set(summary["per_class"]) == set(names) and set(summary["confusion"]) == set(names)
    items = read_json(eval_dir / "predictions.json")["items"]
    for k, name in enumerate(names):
        truth = np.asarray([name in i["label"] for i in items])
        pred = np.asarray([i["probabilities"][k] >= 0.5 for i in items])
        (tn, fp), (fn, tp) = summary["confusion"][name]
        assert (tp, fp, fn, tn) == ((truth & pred).sum(), (~truth & pred).sum(), (truth & ~pred).sum(),
                                    (~truth & ~pred).sum())
    rows = _predictions(infer_cls(data, tmp_path))
    assert set(rows[0]) == {"case_id", "slice_index", "predicted", *[f"p_{n}" for n in names]}


def test_lits_tumour_volume_3d(phantom_set, tmp_path):
    data = phantom_set("lits")
    train_cls(data, tmp_path, task="lits_tumour_volume")
    card = _check_training(tmp_path, ["no_tumour", "tumour"])
    assert card["network"]["spatial_dims"] == 3 and card["roi_size"] == [32, 32, 16]
    summary, eval_dir = evaluate_cls(data, tmp_path, task="lits_tumour_volume")
    items = read_json(eval_dir / "predictions.json")["items"]
    assert summary["n"] == len(items) == len(data.cases["testing"]) and items[0]["slice_index"] is None
    rows = _predictions(infer_cls(data, tmp_path))
    assert [r["case_id"] for r in rows] == data.cases["testing"] and rows[0]["slice_index"] == ""
