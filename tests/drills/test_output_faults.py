"""Output folders that cannot take the run's files: a full disk, and a read-only folder.

Full disk: a small tmpfs or loop mount needs root in a privileged container, which a CI runner rarely is, so the
command runs with ``RLIMIT_FSIZE`` set in its own process (:mod:`forkserver`, ``resource.setrlimit``; SIGXFSZ
ignored): every write past the limit fails in the kernel with ``EFBIG`` (``File too large``), a real OS write
failure at the size where a full disk would fail with ``ENOSPC``. Expected: one ``ERROR:`` line naming the file
being written and the problem, and nothing half written under a final name (no cache entry, checkpoint or
prediction; no temporary file).

Read-only: the output folder is ``chmod 0o555``. Root ignores file modes, so under root the command's own process
gives up the capabilities that let it (``CAP_DAC_OVERRIDE``, ``CAP_DAC_READ_SEARCH``, ``CAP_FOWNER``; see
:mod:`forkserver`): the folder's modes then apply to it as to any user, and the drill runs under root too.
Expected: precompute, training and batch inference each stop at start-up with one line naming the folder, before
any expensive work (no SAM loaded, nothing written).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from drill_utils import copy_set, precompute_argv, training_argv
from workflow_utils import TINY_SAM

from bundle.atomic import TEMP_NAME
from bundle.checkpoint_files import load_checkpoint

SAM_LOADED = "loaded SAM"


def _sam(checkpoint) -> dict:
    return {"priors#sam_model_type": "tiny", "priors#sam_checkpoint": str(checkpoint),
            "priors#amg": TINY_SAM["priors#amg"]}


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if TEMP_NAME.match(p.name)] if folder.exists() else []


def _one_error_line(result) -> str:
    assert result.rc != 0, result.stderr[-3000:]
    line = result.last_line
    assert line.startswith("ERROR: ") and "Traceback" not in line, result.stderr[-3000:]
    assert sum(text.startswith("ERROR: ") for text in result.stderr.splitlines()) == 1, result.stderr[-3000:]
    return line


# ------------------------------------------------------------------------------------------------------ full disk


def test_full_disk_during_precompute(pristine, tiny_sam_checkpoint, commands, tmp_path):
    """A 1 KiB file-size limit: the partition record or the first prior NIfTI (1 to 2 KiB each) cannot be written."""
    data = copy_set(pristine, tmp_path / "data")
    cache = tmp_path / "cache"
    result = commands.run(precompute_argv(data.root, data.datalist, cache, **_sam(tiny_sam_checkpoint)),
                          tmp_path / "log", fsize=1024)
    line = _one_error_line(result)
    assert SAM_LOADED in result.stdout + result.stderr  # the failure came at the write, after SAM's work
    (partition,) = [p for p in cache.iterdir() if p.is_dir()]
    assert line.startswith(f"ERROR: {partition}/") and ": cannot be written: File too large" in line, line
    assert not list(partition.glob("*/entry.json")) and not list(partition.glob("*/*.nii.gz")), "half-written entry"
    assert not _temps(cache)


def test_full_disk_while_saving_a_checkpoint(pristine, commands, tmp_path):
    """A 100 KB file-size limit: ``model.pt`` (about 64 KB) fits, ``checkpoint_last.pt`` (about 190 KB) does not."""
    data = copy_set(pristine, tmp_path / "data")
    work = tmp_path / "work"
    result = commands.run(training_argv(data.root, data.datalist, work, max_epochs=2), tmp_path / "log",
                          fsize=100_000)
    line = _one_error_line(result)
    last = work / "run" / "checkpoint_last.pt"
    assert line.startswith(f"ERROR: {last}: ") and "File too large" in line, line
    assert not last.exists() and not _temps(work)
    load_checkpoint(work / "models" / "model.pt", what="network weights")  # the smaller file is complete


def test_full_disk_while_writing_a_prediction(pristine, trained, commands, tmp_path):
    """A file-size limit of half the label map a first, unlimited run wrote (its priors are cached by then)."""
    data = copy_set(pristine, tmp_path / "data")

    def infer(out, **limit):
        argv = ["sam-priors-infer", "--input", str(data.datalist), "--output", str(out), "--model",
                str(trained / "models"), "--prior_cache", str(tmp_path / "cache")]
        return commands.run(argv, tmp_path / "log", **limit)

    assert infer(tmp_path / "first").rc == 0
    (prediction,) = (tmp_path / "first").glob("*.nii.gz")
    out = tmp_path / "out"
    result = infer(out, fsize=prediction.stat().st_size // 2)
    assert result.rc == 1, result.stderr[-3000:]
    line = result.last_line
    assert line.startswith("FAILED: ") and f"{out / prediction.name}: cannot be written: File too large" in line, line
    assert not list(out.glob("*.nii.gz")) and not _temps(out)


# ------------------------------------------------------------------------------------------- read-only folder


def _read_only(folder: Path) -> Path:
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    return folder


@pytest.mark.parametrize("stage", ["precompute", "training", "inference"])
def test_read_only_output_folder_fails_before_any_work(stage, pristine, trained, tiny_sam_checkpoint, commands,
                                                       counts, tmp_path):
    data = copy_set(pristine, tmp_path / "data")
    locked = _read_only(tmp_path / "locked")
    if stage == "precompute":
        argv = precompute_argv(data.root, data.datalist, locked, **_sam(tiny_sam_checkpoint))
        expected = f"ERROR: {locked}: prior_cache_dir is not writable"
    elif stage == "training":
        argv = training_argv(data.root, data.datalist, locked, **_sam(tiny_sam_checkpoint))
        expected = f"ERROR: {locked}/"  # run, models or priors: each would be created in the read-only folder
    else:
        argv = ["sam-priors-infer", "--input", str(data.datalist), "--output", str(locked), "--model",
                str(trained / "models")]
        expected = f"ERROR: {locked}: "
    try:
        result = commands.run(argv, tmp_path / "log", drop_root=os.geteuid() == 0)
    finally:
        locked.chmod(0o755)
    line = _one_error_line(result)
    assert line.startswith(expected) and "not writable" in line and "Permission denied" in line, line
    assert SAM_LOADED not in result.stdout + result.stderr  # stopped before any SAM work
    assert not list(locked.rglob("*"))  # nothing written
