"""Helpers of the WeakMedSAM workflow tests: tiny settings and in-process runs of ``configs/train_weak.json``."""

from __future__ import annotations

from pathlib import Path

from workflow_utils import CONFIGS, NETWORK, PRESETS, SAM_PRIORS, PhantomSet, run_workflow

TRAIN_WEAK = str(CONFIGS / "train_weak.json")
#: the tiny real SAM of tests/conftest.py, 32 x 32 slices, a 16 x 16 affinity grid, one epoch per network
TINY_WEAK = {
    "priors#sam_model_type": "tiny",
    "roi_size": [32, 32],
    "affinity_size": 16,
    "pam_grid": 2,
    "num_subclasses": 2,
    "max_epochs": 1,
    "batch_size": 8,
    "seg_max_epochs": 1,
    "panels": 1,
    "walk_radius": 3,
    "blur_kernel_size": 5,
    "blur_sigma": 1.0,
}
#: the segmentation network and sampling of the other workflow tests
TINY_SEG = {**NETWORK, "val_interval": 1, "slices_per_volume": 4, "crops_per_volume": 1, "sw_batch_size": 8}


def weak_files(preset: str) -> list[str]:
    return [SAM_PRIORS, TRAIN_WEAK, PRESETS[preset]]


def weak_overrides(data: PhantomSet, work: Path, **overrides) -> dict:
    base = data.overrides(work)
    seg = {"prior_mode": "@seg_prior_mode", "max_epochs": "@seg_max_epochs", "priors": "$@priors.to_config()",
           "prior_cache_dir": "@prior_cache_dir", "dataset_dir": "@dataset_dir", "device": "@device", **TINY_SEG}
    # bundle_root is the run's own folder (not the repository): the configs the pipeline runs are found all the same
    return {**TINY_WEAK, "bundle_root": str(work), "dataset_dir": base["dataset_dir"],
            "datalist": base["datalist"], "prior_cache_dir": base["prior_cache_dir"],
            "output_dir": str(work / "run"), "model_dir": str(work / "models"), "seg_overrides": seg, **overrides}


def run_weak(data: PhantomSet, work: Path, run_id: str = "training", **overrides):
    """Run one stage (or the whole pipeline) of the weak config on ``data``, outputs under ``work``."""
    return run_workflow(weak_files(data.preset), run_id, "train", **weak_overrides(data, work, **overrides))


def error_messages(error: BaseException) -> list[str]:
    """The messages of an error and of every error it was raised from (the bundle parser wraps a stage's error)."""
    chain = []
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    return chain
