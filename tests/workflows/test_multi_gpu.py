"""``configs/multi_gpu_train.json`` merged onto the SAMAug and SAMAug-C training configs: two processes under torchrun
(gloo on the CPU here, NCCL where there are GPUs), one short epoch each.

WeakMedSAM and SAM-Mix have their own two-process tests next to their other tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from workflow_utils import MULTI_GPU, TINY, config_files, make_phantom_set, torchrun


def _event_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("events.out.tfevents.*"))


def _check_rank_zero_outputs(work: Path, run: Path) -> dict:
    """One unwrapped model, one event log (rank 0's); returns the last epoch checkpoint."""
    state = torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state and not any(k.startswith("module.") for k in state)  # saved unwrapped, loadable without DDP
    assert (work / "models" / "model_card.json").is_file()
    events = _event_files(run)
    assert len(events) == 1, events  # rank 1 logs nowhere
    accumulator = EventAccumulator(str(events[0])).Reload()
    assert "train_loss" in accumulator.Tags()["scalars"]
    last = torch.load(run / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in last["network"])
    return last


def test_samaug_segmentation_two_processes(tmp_path):
    data = make_phantom_set("brats", tmp_path / "data", cases=6)  # 2 training and 2 validation cases: one per rank
    assert len(data.cases["training"]) == len(data.cases["validation"]) == 2
    work = tmp_path / "work"
    result = torchrun(config_files("brats", MULTI_GPU), **{**TINY, **data.overrides(work), "max_epochs": 2})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    last = _check_rank_zero_outputs(work, work / "run")
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"] == 2  # one volume per rank and epoch
    assert last["lr_scheduler"]["last_epoch"] == 2


def test_samaug_classification_two_processes(tmp_path):
    from classification.cls_utils import TINY_CLS, cls_files

    data = make_phantom_set("brats", tmp_path / "data", cases=6)
    work = tmp_path / "work"
    result = torchrun(cls_files("brats", MULTI_GPU),
                      **{**TINY_CLS, **data.overrides(work), "task": "brats_wt", "class_balance": True})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    last = _check_rank_zero_outputs(work, work / "run")
    assert last["trainer"]["iteration"] == last["trainer"]["epoch_length"]  # one epoch
    # the volumes are resized to roi_size before they are cut into axial slices
    slices = len(data.cases["training"]) * TINY_CLS["roi_size"][2]
    # each rank draws ceil(slices / 2) class-balanced samples: half the batches of one process
    assert last["trainer"]["epoch_length"] == math.ceil(math.ceil(slices / 2) / TINY_CLS["batch_size"])
