"""The README's command form, in a subprocess, on the default paths: phantoms -> datalist -> priors -> training."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from workflow_utils import PRECOMPUTE, REPO, TINY, config_files, make_phantom_set, run_workflow


def test_readme_training_command(tmp_path):
    # the default locations of configs/train_samaug_seg.json under --bundle_root; the fallback generator keeps
    # this test fast (tests/sam/test_lite_medsam.py runs the default LiteMedSAM)
    make_phantom_set("brats", tmp_path / "data" / "brats2021")
    run_workflow(config_files(None, main=PRECOMPUTE), "precompute", "train", bundle_root=str(tmp_path),
                 **{"priors#sam_model_type": TINY["priors#sam_model_type"]})
    entries = {p: p.stat().st_mtime_ns for p in (tmp_path / "data" / "priors" / "brats2021").glob("*/*/entry.json")}
    assert len(entries) == 4

    overrides = []
    for key, value in TINY.items():
        overrides += [f"--{key}", json.dumps(value)]
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
               "['configs/sam_priors.json','configs/train_samaug_seg.json']", "--bundle_root", str(tmp_path),
               *overrides]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    assert (tmp_path / "models" / "model.pt").is_file()
    run = tmp_path / "runs" / "brats_concat_2d"
    assert (run / "checkpoint_last.pt").is_file() and list(run.glob("events.out.tfevents.*"))
    # training read the priors that precompute_priors.json wrote: same cache, nothing recomputed
    assert {p: p.stat().st_mtime_ns for p in entries} == entries
    assert "val_mean_dice" in result.stdout + result.stderr
