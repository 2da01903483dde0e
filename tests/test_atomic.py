import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bundle.atomic import (
    TEMP_NAME,
    atomic_path,
    process_start_time,
    remove_stale_temps,
    temp_owner_pid,
    write_bytes_atomic,
    write_text_atomic,
)
from bundle.errors import OutputWriteError, error_line

REPO = Path(__file__).resolve().parents[1]


def test_write_text_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.json"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two"
    assert os.listdir(target.parent) == ["a.json"]


def test_failure_keeps_previous_file_and_cleans_up(tmp_path):
    target = tmp_path / "prior.nii.gz"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["prior.nii.gz"]


def test_file_system_failure_names_the_target(tmp_path):
    """A full disk (ENOSPC), even wrapped in a writer's own error, is an OutputWriteError naming the final path."""
    target = tmp_path / "model.pt"
    write_bytes_atomic(target, b"old")
    with pytest.raises(OutputWriteError) as info:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError as err:
                raise RuntimeError("unexpected pos 704 vs 598") from err
    assert error_line(info.value) == f"ERROR: {target}: cannot be written: {os.strerror(errno.ENOSPC)}"
    assert isinstance(info.value, OSError) and target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.pt"]


@pytest.mark.parametrize("name, suffix", [("x.nii.gz", ".nii.gz"), ("model.pt", ".pt"), ("noext", "")])
def test_temporary_keeps_extension_for_format_sniffing_writers(tmp_path, name, suffix):
    with atomic_path(tmp_path / name) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(suffix)
        tmp.write_bytes(b"x")
    assert (tmp_path / name).read_bytes() == b"x"


def test_written_file_and_rename_are_flushed(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    write_bytes_atomic(tmp_path / "a.bin", b"x")
    assert len(synced) == 2  # the file before the rename, its folder after it
    synced.clear()
    with atomic_path(tmp_path / "b.bin", fsync=False) as tmp:
        tmp.write_bytes(b"y")
    assert synced == []


def _leftover(folder, name="model.pt", pid=2**22 + 7, age=3600.0):
    """A temporary file as a killed writer (a pid that no longer exists) leaves it, ``age`` seconds old."""
    stem, suffix = name.split(".", 1)
    path = folder / f".{stem}.tmp-{pid}-0123abcd.{suffix}"
    path.write_bytes(b"half")
    old = time.time() - age
    os.utime(path, (old, old))
    return path


def test_remove_stale_temps_takes_only_dead_writers_leftovers(tmp_path):
    stale = _leftover(tmp_path)
    stale_nii = _leftover(tmp_path, "sam_seg_prior.nii.gz")
    own = _leftover(tmp_path, "checkpoint_last.pt", pid=os.getpid())  # this process: still writing
    fresh = _leftover(tmp_path, "x.json", age=-60)  # modified after this process started
    unrelated = tmp_path / ".hidden.tmp-notes.txt"
    unrelated.write_text("keep")
    sub = tmp_path / "case_1"
    sub.mkdir()
    nested = _leftover(sub, "sam_boundary_prior.nii.gz")

    assert TEMP_NAME.match(stale.name) and temp_owner_pid(stale_nii.name) == 2**22 + 7
    assert remove_stale_temps(tmp_path) == sorted([stale, stale_nii])
    assert own.exists() and fresh.exists() and unrelated.exists() and nested.exists()
    assert remove_stale_temps(tmp_path, recursive=True) == [nested]
    assert remove_stale_temps(tmp_path / "missing") == []
    assert process_start_time() <= time.time()


def test_kill_mid_write_leaves_a_temp_the_next_run_removes(tmp_path):
    """kill -9 skips the writer's cleanup: the old file stays whole, the next process tidies the leftover."""
    target = tmp_path / "datalist.json"
    write_text_atomic(target, "old")
    writer = (
        "import os, signal, sys\n"
        "from bundle.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half a new file')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", writer, str(target)], cwd=REPO, timeout=120)
    assert result.returncode == -signal.SIGKILL
    (leftover,) = [p for p in tmp_path.iterdir() if p.name != "datalist.json"]
    assert target.read_text() == "old" and TEMP_NAME.match(leftover.name)
    time.sleep(0.1)  # a process's start time is known to 10 ms (clock ticks): start the next run clearly later
    tidy = "import sys\nfrom bundle.atomic import remove_stale_temps\nprint(len(remove_stale_temps(sys.argv[1])))\n"
    out = subprocess.run([sys.executable, "-c", tidy, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["datalist.json"]
