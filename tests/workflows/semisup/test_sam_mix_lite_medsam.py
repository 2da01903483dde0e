"""SAM-Mix with the real LiteMedSAM weights, end to end on small phantoms (``-m slow``: a few minutes on 2 cores).

Every config: ``train_sam_mix.json`` (SAM-Mix, then the zero-shot baseline), ``evaluate_sam_mix.json`` (both
protocols), ``inference_sam_mix.json`` (NIfTI in the input's grid), on LiTS liver and AbdomenCT-1K spleen (an organ
chosen by label value).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from semisup_utils import infer_mix, run_mix

pytestmark = pytest.mark.slow

LITE = {"priors#sam_model_type": "lite_medsam", "priors#sam_checkpoint": None, "lora_rank": 8, "seg_batch_size": 1,
        "num_labelled": 2, "max_epochs": 1}


@pytest.mark.parametrize("preset, organ", [("lits", {}), ("abdomenct1k", {"organ": "spleen", "organ_values": [3]})])
def test_sam_mix_with_lite_medsam(phantom_set, tmp_path, preset, organ):
    data = phantom_set(preset)
    run_mix(data, tmp_path, None, **LITE, **organ)
    card = torch.load(tmp_path / "models" / "model.pt", weights_only=True)["card"]
    assert card["sam"]["model_type"] == "lite_medsam" and card["sam"]["checkpoint"] is None
    assert card["organ"] == organ.get("organ", "liver")
    assert (tmp_path / "models" / "adapter.pt").stat().st_size < 25e6
    run_mix(data, tmp_path, None, run_id="evaluating", **LITE, **organ)
    both = json.loads((tmp_path / "run" / "eval" / "sam_mix_evaluation.json").read_text())
    assert set(both["protocols"]) == {"fair", "anchor"}
    image = data.root / json.loads(data.datalist.read_text())["testing"][0]["image"]
    infer_mix(tmp_path / "models", tmp_path / "pred", input_files=[str(image)])
    written = nib.load(next((tmp_path / "pred").glob("*_pred.nii.gz")))
    assert written.shape == nib.load(image).shape
    np.testing.assert_allclose(written.affine, nib.load(image).affine, atol=1e-5)


def test_zero_shot_lite_medsam_with_ground_truth_boxes_finds_the_liver(phantom_set, tmp_path):
    """The published LiteMedSAM, no tuning, prompted with ground-truth boxes: the anchor protocol's floor."""
    data = phantom_set("lits")
    keys = {**LITE, "method": "zero_shot", "protocols": ["anchor"]}
    run_mix(data, tmp_path, None, **keys)
    run_mix(data, tmp_path, None, run_id="evaluating", **keys)
    anchor = json.loads((tmp_path / "run" / "eval" / "anchor" / "metrics_summary.json").read_text())
    assert anchor["metrics"]["liver"]["slice_dice"]["mean"] > 0.5
    assert not (tmp_path / "run" / "eval" / "fair").exists()
