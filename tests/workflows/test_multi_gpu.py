"""``configs/multi_gpu_train.json`` with two processes: torchrun on CPU (gloo) here, NCCL where there are GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from workflow_utils import REPO, TINY, config_files, make_phantom_set


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    data = make_phantom_set("brats", tmp_path / "data", cases=6)  # 2 training and 2 validation cases: one per rank
    assert len(data.cases["validation"]) == 2
    files = config_files("brats", str(REPO / "configs" / "multi_gpu_train.json"))
    overrides = []
    for key, value in {**TINY, **data.overrides(tmp_path / "work"), "max_epochs": 2}.items():
        overrides += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "monai.bundle", "run", "training", "--config_file", repr(files), *overrides]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    work = tmp_path / "work"
    state = torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # saved unwrapped, loadable without DDP
    last = torch.load(work / "run" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"] == 2  # one volume per rank and epoch
    assert list((work / "run").glob("events.out.tfevents.*")) and list((work / "run" / "rank1").glob("events.*"))
