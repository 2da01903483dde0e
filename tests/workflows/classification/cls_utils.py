"""Helpers of the SAMAug-C workflow tests: tiny settings and in-process runs of the classification configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from workflow_utils import CONFIGS, PRESETS, SAM_PRIORS, PhantomSet, run_workflow

TRAIN_CLS = str(CONFIGS / "train_samaug_cls.json")
EVAL_CLS = str(CONFIGS / "evaluate_cls.json")
INFER_CLS = str(CONFIGS / "inference_cls.json")
META_CLS = str(CONFIGS / "metadata_cls.json")
#: 32 x 32 phantoms resized to 32 x 32 (x 16 for volumes), one epoch
TINY_CLS = {"priors#sam_model_type": "fallback", "max_epochs": 1, "val_interval": 1, "roi_size": [32, 32, 16],
            "batch_size": 8}


def cls_files(preset: str, *extra: str) -> list[str]:
    return [SAM_PRIORS, TRAIN_CLS, PRESETS[preset], *extra]


def train_cls(data: PhantomSet, work: Path, **overrides):
    return run_workflow(cls_files(data.preset), "training", "train", **{**TINY_CLS, **data.overrides(work), **overrides})


def evaluate_cls(data: PhantomSet, work: Path, **overrides) -> tuple[dict, Path]:
    workflow = run_workflow(cls_files(data.preset, EVAL_CLS), "evaluating", "train",
                            **{**TINY_CLS, **data.overrides(work), **overrides})
    eval_dir = Path(workflow.parser.get_parsed_content("eval_dir"))
    return json.loads((eval_dir / "metrics_summary.json").read_text()), eval_dir


def infer_cls(data: PhantomSet, work: Path, **overrides) -> Path:
    out = work / "predictions"
    run_workflow([INFER_CLS], "inferring", "infer", model_dir=str(work / "models"), dataset_dir=str(data.root),
                 datalist=str(data.datalist), output_dir=str(out), prior_cache_dir=str(work / "priors"), **overrides)
    return out


def read_json(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)
