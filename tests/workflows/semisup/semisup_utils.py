"""Helpers of the SAM-Mix workflow tests: tiny settings and in-process runs of ``configs/train_sam_mix.json``."""

from __future__ import annotations

from pathlib import Path

from workflow_utils import CONFIGS, PRESETS, SAM_PRIORS, PhantomSet, run_workflow

TRAIN_SAM_MIX = str(CONFIGS / "train_sam_mix.json")
EVALUATE_SAM_MIX = str(CONFIGS / "evaluate_sam_mix.json")
INFERENCE_SAM_MIX = str(CONFIGS / "inference_sam_mix.json")
#: 32 x 32 slices, 2 labelled slices, one epoch of a small classifier and U-Net
TINY_MIX = {
    "roi_size": [32, 32],
    "num_labelled": 2,
    "max_epochs": 1,
    "batch_size": 16,
    "seg_batch_size": 2,
    "lora_rank": 4,
    "panels": 1,
    "unet_channels": [8, 16, 32],
    "unet_strides": [2, 2],
}


def mix_files(preset: str, *extra: str) -> list[str]:
    return [SAM_PRIORS, TRAIN_SAM_MIX, PRESETS[preset], *extra]


def mix_overrides(data: PhantomSet, work: Path, checkpoint, **overrides) -> dict:
    base = data.overrides(work)
    return {**TINY_MIX, "bundle_root": str(work), "dataset_dir": base["dataset_dir"], "datalist": base["datalist"],
            "priors#sam_model_type": "tiny", "priors#sam_checkpoint": str(checkpoint), "output_dir": str(work / "run"),
            "model_dir": str(work / "models"), **overrides}


def run_mix(data: PhantomSet, work: Path, checkpoint, run_id: str = "training", **overrides):
    """Train (``training``) or evaluate (``evaluating``) with the tiny settings; outputs under ``work``."""
    extra = (EVALUATE_SAM_MIX,) if run_id == "evaluating" else ()
    return run_workflow(mix_files(data.preset, *extra), run_id, "train",
                        **mix_overrides(data, work, checkpoint, **overrides))


def infer_mix(model_dir: Path, output_dir: Path, **overrides):
    return run_workflow([INFERENCE_SAM_MIX], "inferring", "infer",
                        **{"model_dir": str(model_dir), "output_dir": str(output_dir), **overrides})
