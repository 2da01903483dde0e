"""Smoke tests: train -> evaluate -> infer on tiny phantoms, one 2D and one 3D workflow in the default tier."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from workflow_utils import TINY_SAM, PhantomSet, evaluate, infer, train

METRICS = {"dice", "jaccard", "hd95", "slice_dice", "slice_jaccard", "slice_assd", "slice_hd95"}


def tensorboard_tags(log_dir: Path) -> tuple[dict, dict]:
    """``(tags by kind, {text tag: text})`` of the event files in ``log_dir``."""
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    texts = {t: events.Tensors(t)[-1].tensor_proto.string_val[0].decode() for t in tags["tensors"]}
    return tags, texts


def check_training_outputs(work: Path, class_names: list[str], channel_names: list[str]) -> str:
    """Best model, last checkpoint and TensorBoard logs of a finished 1-epoch run; returns the prior-generator text."""
    state = torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())  # a bare network state_dict
    last = torch.load(work / "run" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert set(last) == {"network", "optimizer", "lr_scheduler", "best_model", "trainer", "info"}
    assert last["trainer"]["iteration"] == last["trainer"]["epoch_length"] and last["best_model"]["_saved"]
    assert last["info"]["channel_names"] == channel_names
    tags, texts = tensorboard_tags(work / "run")
    expected = {"train_loss", "lr", "train_mean_dice", "val_mean_dice"} | {f"val_mean_dice_{c}" for c in class_names}
    assert expected <= set(tags["scalars"])
    images = set(tags["images"])
    assert {"val/case0/label0", "val/case0/pred0"} <= images
    for name in channel_names:
        if "+" not in name:  # "CT+sam_seg_prior" is computed in the network input, the logger shows the parts
            assert f"val/case0/{name}" in images
    (text,) = [v for k, v in texts.items() if k.startswith("prior_generator")]
    return text


def check_predictions(data: PhantomSet, work: Path, values: set[int]) -> None:
    """One label map per testing case, on the input's grid (shape and affine) with the dataset's label values."""
    outputs = sorted((work / "predictions").glob("*_seg.nii.gz"))
    assert len(outputs) == len(data.cases["testing"]) == 1
    with open(data.datalist) as f:
        (entry,) = json.load(f)["testing"]
    reference = nib.load(data.root / entry["label"])
    prediction = nib.load(outputs[0])
    assert prediction.shape == reference.shape
    np.testing.assert_allclose(prediction.affine, reference.affine, atol=1e-4)
    found = set(np.unique(np.asarray(prediction.dataobj)).astype(int).tolist())
    assert found <= values


def check_summary(summary: dict, class_names: list[str], prior_mode: str, generator: str | None) -> None:
    assert summary["n_cases"] == 1 and summary["class_names"] == class_names
    assert set(summary["metrics"][class_names[0]]) == METRICS
    assert summary["tags"]["prior_mode"] == prior_mode and summary["tags"]["prior_generator"] == generator


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
