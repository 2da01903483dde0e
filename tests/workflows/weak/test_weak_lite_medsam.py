"""WeakMedSAM end to end with the real LiteMedSAM weights on all three dataset presets (slow tier: ~2 s per slice)."""

from __future__ import annotations

import json

import pytest
from weak_utils import run_weak

from bundle.workflows.weak.pipeline import DEFAULT_TASKS, STAGES
from bundle.workflows.weak.slices import class_groups


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["brats", "lits", "abdomenct1k"])
def test_pipeline_with_lite_medsam(preset, phantom_set, tmp_path):
    data = phantom_set(preset)
    run_weak(data, tmp_path, **{"priors#sam_model_type": "lite_medsam"}, affinity_size=32, pam_grid=4, walk_radius=5,
             blur_kernel_size=21, blur_sigma=3.5)
    summary = json.loads((tmp_path / "run" / "weak_summary.json").read_text())
    assert list(summary) == list(STAGES)
    features = json.loads(next((tmp_path / "priors" / "weak").glob("features-lite_medsam-*/partition.json"))
                          .read_text())
    assert features["signature"]["prior"]["miner"]["placement"] == "boxes"  # LiteMedSAM ignores point prompts
    quality = json.loads((tmp_path / "run" / "pseudo_label_quality.json").read_text())
    assert all(v is not None for v in quality["mean"]["pseudo_label"].values())
    # the network trained on the pseudo labels is evaluated on the real labels, one entry per class of the task
    report = next((tmp_path / "run" / "segmentation").glob("eval_testing_*/metrics_summary.json")).read_text()
    assert all(f'"{name}"' in report for name in class_groups(DEFAULT_TASKS[preset]))
