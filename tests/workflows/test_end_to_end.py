"""Smoke tests: train -> evaluate -> infer on tiny phantoms with the fallback generator (2D) and a tiny SAM (3D)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from workflow_utils import TINY_SAM, check_predictions, check_summary, check_training_outputs, evaluate, infer, train

from bundle.workflows.common.seg_metrics import volume_metrics
from bundle.workflows.segmentation.transforms import LabelToRegions

REGIONS = {"brats": {"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}, "lits": {"liver": [1, 2], "tumour": [2]}}


@pytest.fixture(scope="module")
def trained(phantom_set, tmp_path_factory):
    """Factory: ``trained("brats")`` -> ``(phantoms, folder)`` with the default workflow (2D network, priors from the
    weight-free fallback generator) trained once per module on that preset's phantoms, for the tests that evaluate
    and infer with the model."""
    runs = {}

    def make(preset: str):
        if preset not in runs:
            data = phantom_set(preset)
            work = tmp_path_factory.mktemp(f"{preset}_run")
            train(data, work)
            runs[preset] = data, work
        return runs[preset]

    return make


def test_brats_2d_fallback_priors(trained):
    """Default workflow (2D network, BraTS concat), priors from the weight-free fallback generator."""
    data, tmp_path = trained("brats")
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


def check_report_scores_the_written_file(data, work, eval_name: str) -> dict:
    """The evaluation report's Dice (and HD95) of every region equals that of the label map inference wrote (the
    same region -> label conversion: ET never outside TC in both), both scored against the label file on its own
    grid and spacing; returns the report's record of the case."""
    regions = REGIONS[data.preset]
    to_regions = LabelToRegions(regions)
    (entry,) = json.loads(data.datalist.read_text())["testing"]
    truth_file = nib.load(data.root / entry["label"])
    truth = to_regions(np.asarray(truth_file.dataobj)[None])
    (written,) = sorted((work / "predictions").glob("*_pred.nii.gz"))
    pred = to_regions(np.asarray(nib.load(written).dataobj)[None])
    spacing = [float(s) for s in truth_file.header.get_zooms()[:3]]
    from_file = volume_metrics(pred > 0.5, truth > 0.5, spacing=spacing, class_names=list(regions))
    (case,) = json.loads((work / "run" / eval_name / "metrics_per_case.json").read_text())["cases"]
    for name in regions:
        assert case["metrics"][name]["dice"] == pytest.approx(from_file[name]["dice"], abs=1e-6), name
        assert case["metrics"][name]["hd95"] == pytest.approx(from_file[name]["hd95"], abs=1e-6, nan_ok=True), name
    assert case["spacing"] == pytest.approx(spacing, abs=1e-6)
    return case


@pytest.mark.parametrize(
    "preset, pixdim",
    [
        ("brats", [1.5, 1.5, 2.0]),  # 1 mm phantoms with an LPS-style affine diag(-1, -1, 1)
        ("lits", [1.5, 1.5, 2.5]),  # anisotropic (0.6-0.9 mm in-plane, 1.5-5 mm slices), rotated, LPS-style
    ],
)
def test_report_scores_the_restored_file(preset, pixdim, phantom_set, tmp_path):
    """With ``pixdim`` unlike the phantoms' grid, the network works on a resampled RAS grid and inference restores
    its label map to the input's grid: evaluation scores that restored map against the label file (Dice and HD95 in
    the file's spacing), not the resampled prediction against a resampled label."""
    data = phantom_set(preset)
    train(data, tmp_path, pixdim=pixdim)  # the card records pixdim: inference works on the same grid
    evaluate(data, tmp_path, pixdim=pixdim)
    infer(data, tmp_path)
    check_predictions(data, tmp_path, {0, *(v for values in REGIONS[preset].values() for v in values)})
    case = check_report_scores_the_written_file(data, tmp_path, "eval_testing_aug_only")
    assert case["spacing"] != pytest.approx(pixdim, abs=0.01)  # scored on the file's grid, not the network's


def test_lits_3d_tiny_sam(phantom_set, tmp_path, tiny_sam_checkpoint):
    """3D network on LiTS (``add``), priors from a real (tiny, random-weight) SAM checkpoint, blend training."""
    data = phantom_set("lits")
    sam = {**TINY_SAM, "priors#sam_checkpoint": str(tiny_sam_checkpoint), "spatial_dims": 3}
    train(data, tmp_path, train_mode="blend", **sam)
    text = check_training_outputs(tmp_path, ["liver", "tumour"], ["CT", "CT+sam_seg_prior", "CT+sam_boundary_prior"])
    assert "sam_automatic_masks" in text and "NOT SAM" not in text
    check_summary(evaluate(data, tmp_path, **sam), ["liver", "tumour"], "add", "sam_automatic_masks")
    infer(data, tmp_path)
    check_predictions(data, tmp_path, {0, 1, 2})
