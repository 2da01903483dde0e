"""``kill -9`` during prior precompute (``run precompute``, the random-weight tiny SAM) at 10 seeded random moments.

One uninterrupted run (its own ``python -m monai.bundle`` process) gives the reference priors and the length of its
compute phase (from its progress bar's first line to its exit). Then the same command is killed 10 times on one
cache folder, every run finding the work of the killed ones before it; each kill comes after a delay (from the
run's progress bar) drawn uniformly (seeded) over the run's expected length: the reference's compute phase for the
share of cases still to do. These runs are forks of a process that already imported torch (:mod:`forkserver`), so
that the kill moments fall into the computation rather than into Python's start-up; a run that finishes before its
kill moment is not counted, and a full cache is emptied so that the next run has work again. After every kill: each
entry on disk loads through the cache's own reader, each NIfTI under its final name is complete, the manifest parses
and lists only entries on disk, no case finished before the kill is lost. A last run in its own process completes,
skips the finished cases (``last_run.json``), removes the temporary files the kills left, and writes priors
byte-identical to the reference.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import nibabel as nib
import pytest
from drill_utils import ENV, precompute_argv
from workflow_utils import TINY_SAM

from bundle.atomic import TEMP_NAME
from bundle.data.datalist import build_datalist, write_datalist
from bundle.testing.phantom_writers import make_phantoms
from bundle.priors.cache import ENTRY_NAME, MANIFEST_NAME, PARTITION_NAME, PriorCache

KILLS = 10
SEED = 20261201
CASES = {f"BraTS2021_0000{i}" for i in range(1, 5)}
BAR = "SAM priors"


@pytest.fixture
def brats(tmp_path):
    """Four small BraTS 2021 phantoms (24 x 24 slices) and their datalist."""
    root = tmp_path / "data"
    make_phantoms("brats2021", root, cases=4, size=24, seed=0)
    datalist = write_datalist(build_datalist("brats", root, progress=False), root / "datalist.json")
    return root, Path(datalist)


def _argv(brats, cache: Path, sam: Path) -> list[str]:
    return precompute_argv(*brats, cache, **{"priors#sam_model_type": "tiny", "priors#sam_checkpoint": str(sam),
                                                 "priors#amg": TINY_SAM["priors#amg"]})


def _wait_for(path: Path, text: str, alive, timeout: float = 120) -> bool:
    """Poll ``path`` until it holds ``text`` (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return True
        if not alive():
            return False
        time.sleep(0.005)
    raise TimeoutError(f"{text!r} never appeared in {path}")


def _partition(cache: Path) -> Path | None:
    partitions = [p for p in cache.iterdir() if p.is_dir()] if cache.is_dir() else []
    assert len(partitions) <= 1, partitions
    return partitions[0] if partitions else None


def check_cache(cache: Path) -> set[str]:
    """Assert the cache is consistent after a kill; returns the cases it holds (loadable entries)."""
    partition = _partition(cache)
    if partition is None:
        return set()
    finals = [p for p in partition.rglob("*.nii.gz") if not TEMP_NAME.match(p.name)]
    for path in finals:  # a file under its final name is never half written
        nib.load(str(path)).get_fdata()
    if not (partition / PARTITION_NAME).is_file():
        assert not list(partition.glob(f"*/{ENTRY_NAME}"))
        return set()
    signature = json.loads((partition / PARTITION_NAME).read_text())["signature"]["prior"]
    reader = PriorCache(cache, signature)
    assert reader.cache_dir == partition
    done = set()
    for case_dir in (p for p in partition.iterdir() if p.is_dir()):
        entry = reader.read_entry(case_dir.name)
        if entry is None:  # an unfinished case: the reader does not take it for an entry
            assert not (case_dir / ENTRY_NAME).exists()
            continue
        assert not any(TEMP_NAME.match(f) for f in entry["files"].values())
        prior = reader.load(case_dir.name)
        assert prior.shape[0] == len(entry["kinds"])
        done.add(case_dir.name)
    if (partition / MANIFEST_NAME).exists():
        manifest = json.loads((partition / MANIFEST_NAME).read_text())
        assert set(manifest["cases"]) <= done  # no manifest entry without its files
        for case_id, listed in manifest["cases"].items():
            assert all((partition / case_id / name).is_file() for name in listed["files"].values())
    return done


def _priors(cache: Path) -> dict[str, bytes]:
    partition = _partition(cache)
    return {str(p.relative_to(partition)): p.read_bytes() for p in sorted(partition.rglob("*.nii.gz"))}


def test_kill_9_during_precompute(brats, tiny_sam_checkpoint, commands, counts, tmp_path):
    reference = tmp_path / "reference" / "cache"
    reference.parent.mkdir()
    err = tmp_path / "reference" / "stderr.txt"
    with open(err, "w") as stderr:
        process = subprocess.Popen([sys.executable, *_argv(brats, reference, tiny_sam_checkpoint)], env=ENV,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        assert _wait_for(err, BAR, lambda: process.poll() is None)
        started = time.monotonic()
        assert process.wait(timeout=300) == 0, err.read_text()[-3000:]
    compute_s = time.monotonic() - started
    expected = _priors(reference)
    assert len(expected) == 8  # 4 cases x 2 prior kinds

    rng = random.Random(SEED)
    cache = tmp_path / "cache"
    done: set[str] = set()
    kills = attempts = 0
    while kills < KILLS:
        attempts += 1
        assert attempts <= 4 * KILLS, f"only {kills} of {attempts} runs were still running at their kill moment"
        out = tmp_path / f"run{attempts}"
        pid = commands.start(_argv(brats, cache, tiny_sam_checkpoint), out)
        alive = partial(os.path.exists, f"/proc/{pid}")  # the server reaps its child at once
        # uniform over this run's own expected length: the reference's compute phase, for the cases still to do
        delay = rng.uniform(0.0, compute_s * max(len(CASES - done), 1) / len(CASES))
        if _wait_for(out / "stderr.txt", BAR, alive):
            time.sleep(delay)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        result = commands.wait(out)
        if result.rc == 0:  # it finished first: not a kill
            assert check_cache(cache) == CASES
            done = CASES
        else:
            assert result.rc == -signal.SIGKILL, result.stderr[-3000:]
            kills += 1
            now = check_cache(cache)
            lost = done - now
            counts["lost"] += len(lost)
            assert not lost, f"kill {kills} after {delay:.2f} s lost finished cases {lost}"
            done = now
            counts["kills"] += 1
        if done == CASES and kills < KILLS:  # nothing left to interrupt: start over with an empty cache
            shutil.rmtree(cache)
            done = set()

    # the last run, a process of its own, finishes the job and skips what the killed runs finished
    final = subprocess.run([sys.executable, *_argv(brats, cache, tiny_sam_checkpoint)], env=ENV, capture_output=True,
                           text=True, timeout=300, check=False)
    assert final.returncode == 0, final.stderr[-3000:]
    last = json.loads((cache / "last_run.json").read_text())
    assert (last["up_to_date"], last["computed"], last["failed"]) == (len(done), 4 - len(done), 0), (last, done)
    assert check_cache(cache) == CASES
    assert not [p for p in cache.rglob(".*.tmp-*")]  # the kills' temporary files are gone
    assert _priors(cache) == expected


def _worker_of_rank(agent: int, rank: int, timeout: float = 60) -> int:
    """The pid of the ``torchrun`` worker (a child of the agent ``agent``) whose environment says ``RANK=rank``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in Path(f"/proc/{agent}/task/{agent}/children").read_text().split():
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(child)
        time.sleep(0.05)
    raise TimeoutError(f"no worker of rank {rank} under {agent}")


def _torchrun(brats, cache: Path, sam: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            *_argv(brats, cache, sam)]


def test_kill_9_of_one_torchrun_rank(brats, tiny_sam_checkpoint, counts, tmp_path):
    """``kill -9`` of rank 1 in a two-process ``torchrun`` precompute: the job ends (torchrun stops rank 0) instead
    of waiting at the ranks' meeting, the shared cache stays consistent, and the job started again finishes it with
    priors byte-identical to one uninterrupted process."""
    reference = tmp_path / "reference"
    run = subprocess.run([sys.executable, *_argv(brats, reference, tiny_sam_checkpoint)], env=ENV,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]

    cache, err = tmp_path / "cache", tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        job = subprocess.Popen(_torchrun(brats, cache, tiny_sam_checkpoint), env=ENV, stdout=subprocess.DEVNULL,
                               stderr=stderr, start_new_session=True)
        try:
            assert _wait_for(err, f"{BAR} rank 1/2", lambda: job.poll() is None), err.read_text()[-3000:]
            time.sleep(random.Random(SEED).uniform(0.0, 0.5))
            os.kill(_worker_of_rank(job.pid, 1), signal.SIGKILL)
            rc = job.wait(timeout=120)  # the agent ends the job: no rank is left waiting for the killed one
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
    assert rc != 0, err.read_text()[-3000:]
    counts["kills"] += 1
    before = check_cache(cache)

    again = subprocess.run(_torchrun(brats, cache, tiny_sam_checkpoint), env=ENV, capture_output=True, text=True,
                           timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    last = json.loads((cache / "last_run.json").read_text())
    assert (last["up_to_date"], last["computed"], last["failed"]) == (len(before), 4 - len(before), 0), last
    assert check_cache(cache) == CASES
    assert _priors(cache) == _priors(reference)
