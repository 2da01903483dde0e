"""``kill -9`` during training (``run training``) at three moments, then a run to the end: SAMAug segmentation and
SAMAug-C classification (WeakMedSAM's classifier and SAM-Mix resume through the same checkpoint handlers; their
resumes are tested with their pipelines).

The same training command (12 tiny epochs of 2 iterations, fallback priors) is killed right after its first epoch
checkpoint appears, then (resumed) while a checkpoint or ``model.pt`` is being written (its temporary file exists),
then (resumed again) in the middle of an epoch (its first iteration logged); a last run finishes. After every kill
``models/model.pt``, when present, loads; each resumed run says it resumes from the epoch and iteration that
``checkpoint_last.pt`` held at the kill, and every checkpoint's optimizer step count and LR-scheduler epoch match
its trainer's counters, which only holds when each resume restored them.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from drill_utils import copy_set, training_argv

from bundle.atomic import temp_owner_pid
from bundle.checkpoint_files import load_checkpoint

EPOCHS = 12  # of 2 (samaug: 2 training cases x 4 slices, batch 4) or 3 (samaug_c: their axial slices) iterations


def _kill_when(pid: int, ready, timeout: float = 120) -> bool:
    """``kill -9`` the command's process group as soon as ``ready()``; False when it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return False
        if ready(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                return False
            return True
    raise TimeoutError("the moment to kill never came")


def _check_state(checkpoint: dict) -> tuple[int, int]:
    """``(epoch, iteration)`` of a resume checkpoint whose optimizer and scheduler agree with its trainer."""
    trainer = checkpoint["trainer"]
    epoch, iteration = trainer["iteration"] // trainer["epoch_length"], trainer["iteration"]
    steps = {int(s["step"]) for s in checkpoint["optimizer"]["state"].values()}
    assert steps == {iteration}, (steps, trainer)
    assert checkpoint["lr_scheduler"]["last_epoch"] == epoch, (checkpoint["lr_scheduler"], trainer)
    return epoch, iteration


def _model_loads(work: Path, counts) -> None:
    model = work / "models" / "model.pt"
    if model.exists():
        try:
            load_checkpoint(model, what="network weights")
        except Exception:
            counts["lost"] += 1
            raise


def _writing(*folders: Path):
    """``ready(pid)``: True while the command ``pid`` has a temporary file (a save under way) in ``folders``."""
    def ready(pid: int) -> bool:
        return any(temp_owner_pid(name) == pid and not name.startswith(".write_probe")
                   for folder in folders if folder.is_dir() for name in os.listdir(folder))
    return ready


@pytest.mark.parametrize("workflow", ["samaug", "samaug_c"])
def test_kill_9_during_training_resumes_each_time(workflow, pristine, commands, counts, tmp_path):
    data = copy_set(pristine, tmp_path / "data")
    work = tmp_path / "work"
    argv = training_argv(data.root, data.datalist, work, workflow, max_epochs=EPOCHS)
    last = work / "run" / "checkpoint_last.pt"
    log = tmp_path / "log"

    def logged(pattern: str):
        return lambda pid: re.search(pattern, (log / "stdout.txt").read_text(errors="replace")) is not None

    moments = {
        "after the first epoch checkpoint": lambda pid: last.exists(),
        "while a checkpoint is written": _writing(work / "run", work / "models"),
        "in the middle of an epoch": logged(rf"Epoch: (\d+)/{EPOCHS}, Iter: 1/\d+"),
    }
    held = None  # (epoch, iteration) of checkpoint_last.pt when the previous run was killed
    for moment, ready in moments.items():
        if moment == "in the middle of an epoch" and held is not None:
            ready = logged(rf"Epoch: {held[0] + 2}/{EPOCHS}, Iter: 1/\d+ ")
        pid = commands.start(argv, log)
        killed = _kill_when(pid, ready)
        result = commands.wait(log)
        assert killed, f"the run ended (status {result.rc}) before the moment {moment!r}: {result.stderr[-3000:]}"
        assert result.rc == -signal.SIGKILL, result.stderr[-3000:]
        counts["kills"] += 1
        if held is not None:
            assert f"resuming from {last} at epoch {held[0]} (iteration {held[1]})" in result.stdout, moment
        _model_loads(work, counts)
        now = _check_state(load_checkpoint(last, what="resume checkpoint"))
        assert held is None or now >= held, (moment, now, held)
        held = now

    result = commands.run(argv, log)
    assert result.rc == 0, result.stderr[-3000:]
    assert f"resuming from {last} at epoch {held[0]} (iteration {held[1]})" in result.stdout
    final = load_checkpoint(last, what="resume checkpoint")
    assert _check_state(final) == (EPOCHS, EPOCHS * final["trainer"]["epoch_length"])
    _model_loads(work, counts)
    assert (work / "models" / "model.pt").exists()
    assert not [p for p in work.rglob(".*.tmp-*")]  # the kills' temporary files are gone
