"""Smoke tests: train -> evaluate -> infer on tiny phantoms with the fallback generator (2D) and a tiny SAM (3D)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from workflow_utils import TINY_SAM, check_predictions, check_summary, check_training_outputs, evaluate, infer, train

from bundle.workflows.common.seg_metrics import volume_metrics
from bundle.workflows.segmentation.transforms import LabelToRegions


def test_brats_2d_fallback_priors(phantom_set, tmp_path):
    """Default workflow (2D network, BraTS concat), priors from the weight-free fallback generator."""
    data = phantom_set("brats")
    train(data, tmp_path)
    text = check_training_outputs(tmp_path, ["WT", "TC", "ET"], ["FLAIR", "T1", "T1ce", "T2", "sam_seg_prior",
                                                                  "sam_boundary_prior"])
    assert "region_proposals" in text and "NOT SAM priors" in text  # the fallback is recorded as such
    summary = evaluate(data, tmp_path)
    check_summary(summary, ["WT", "TC", "ET"], "concat", "region_proposals")
    assert summary["tags"]["infer_mode"] == "aug_only"
    selected = evaluate(data, tmp_path, infer_mode="entropy_select")
    assert selected["tags"]["infer_mode"] == "entropy_select"
    assert (tmp_path / "run" / "eval_testing_entropy_select" / "metrics_per_case.csv").is_file()
    infer(data, tmp_path)
    check_predictions(data, tmp_path, {0, 1, 2, 4})
    check_report_scores_the_written_file(data, tmp_path, "eval_testing_aug_only")


def check_report_scores_the_written_file(data, work, eval_name: str) -> None:
    """The evaluation report's Dice of every region equals the Dice of the label map inference wrote (the same
    region -> label conversion: ET never outside TC in both)."""
    regions = {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}
    to_regions = LabelToRegions(regions)
    (entry,) = json.loads(data.datalist.read_text())["testing"]
    truth = to_regions(np.asarray(nib.load(data.root / entry["label"]).dataobj)[None])
    (written,) = sorted((work / "predictions").glob("*_seg.nii.gz"))
    pred = to_regions(np.asarray(nib.load(written).dataobj)[None])
    from_file = volume_metrics(pred > 0.5, truth > 0.5, class_names=list(regions))
    (case,) = json.loads((work / "run" / eval_name / "metrics_per_case.json").read_text())["cases"]
    for name in regions:
        assert case["metrics"][name]["dice"] == pytest.approx(from_file[name]["dice"], abs=1e-6), name


def test_lits_3d_tiny_sam(phantom_set, tmp_path, tiny_sam_checkpoint):
    """3D network on LiTS (``add``), priors from a real (tiny, random-weight) SAM checkpoint, blend training."""
    data = phantom_set("lits")
    sam = {**TINY_SAM, "sam_checkpoint": str(tiny_sam_checkpoint), "spatial_dims": 3}
    train(data, tmp_path, train_mode="blend", **sam)
    text = check_training_outputs(tmp_path, ["liver", "tumour"], ["CT", "CT+sam_seg_prior", "CT+sam_boundary_prior"])
    assert "sam_automatic_masks" in text and "NOT SAM" not in text
    check_summary(evaluate(data, tmp_path, **sam), ["liver", "tumour"], "add", "sam_automatic_masks")
    infer(data, tmp_path, **sam)
    check_predictions(data, tmp_path, {0, 1, 2})
