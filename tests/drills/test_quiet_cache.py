"""Quiet cache failures (issue 21, items 4, 6, 9 and 10): cached files trusted without a check, entries that vanish
under a reader, partitions the cache tool could not show or remove, temporary files never tidied.

- a prior NIfTI cut short in the cache: ``precompute`` called it ``up_to_date`` and listed it; now it is recomputed
  and listed under ``recomputed_bad``;
- the same on a read-only cache: training failed with ``entry.json: Permission denied``; now training and precompute
  refuse with one line naming the damaged file and saying the cache is read-only (a read-only cache whose entries
  are good still trains, writing nothing);
- one writer rewriting a case while readers read it: a reader that had just found the entry current crashed with
  ``FileNotFoundError`` (the rewrite deleted ``entry.json`` first); now 1,000 reads during rewrites all succeed;
- ``sam-priors-cache list`` crashed (``KeyError: 'signature'``) on a ``partition.json`` of the wrong shape, and a
  folder without ``partition.json`` could not be pruned; now both are listed with what is wrong and pruned with
  ``--force``;
- temporary files that a ``kill -9`` left in WeakMedSAM's cache stayed for ever; now the next run removes them
  (only stale ones: never a live writer's, never other files);
- a WeakMedSAM feature map cut short was found only after the classifier had trained (``EOFError``); now the
  classifier stage refuses it first, naming the file, and the ``sam_features`` stage recomputes it.

Commands are the real ones (:mod:`forkserver`); the reader/writer drill runs real processes (``multiprocessing``) on
tiny arrays.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from drill_utils import bundle_argv, copy_set, precompute_argv, training_argv
from monai.data import MetaTensor

_TESTS = Path(__file__).resolve().parents[1]
if str(_TESTS / "workflows" / "weak") not in sys.path:
    sys.path.insert(0, str(_TESTS / "workflows" / "weak"))

from weak_utils import weak_files, weak_overrides  # noqa: E402

from bundle.atomic import TEMP_NAME  # noqa: E402
from bundle.priors.cache import PriorCache  # noqa: E402


def _partition(cache: Path) -> Path:
    (partition,) = [p for p in cache.iterdir() if p.is_dir()]
    return partition


def _training_prior(cache: Path, data) -> Path:
    """The ``sam_seg_prior`` file of the first training case, as its entry names it."""
    case_dir = _partition(cache) / json.loads(data.datalist.read_text())["training"][0]["case_id"]
    return case_dir / json.loads((case_dir / "entry.json").read_text())["files"]["sam_seg_prior"]


def _truncate(path: Path, keep: int = 300) -> Path:
    path.write_bytes(path.read_bytes()[:keep])  # a copy of the cache cut short by a full disk
    return path


def _folders(root: Path) -> list[Path]:
    return [root, *(p for p in root.rglob("*") if p.is_dir())]


def _files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_truncated_prior_is_recomputed_by_precompute(commands, counts, pristine, tmp_path):
    data = copy_set(pristine, tmp_path / "data")
    cache = tmp_path / "cache"
    assert commands.run(precompute_argv(data.root, data.datalist, cache), tmp_path / "first").rc == 0
    target = _truncate(_training_prior(cache, data))
    result = commands.run(precompute_argv(data.root, data.datalist, cache), tmp_path / "second")
    assert result.rc == 0, result.stderr[-2000:]
    last = json.loads((cache / "last_run.json").read_text())
    assert (last["computed"], last["up_to_date"]) == (1, 3), last
    (bad,) = last["recomputed_bad"].values()
    assert bad.startswith(f"{target}: has 300 bytes")
    case_id = target.parent.name
    listed = json.loads((_partition(cache) / "manifest.json").read_text())["cases"][case_id]
    good = target.parent / listed["files"]["sam_seg_prior"]
    assert good.stat().st_size == listed["checksums"]["sam_seg_prior"]["size"] > 300
    counts["quiet"] += 1


def test_read_only_cache_trains_when_good_and_refuses_a_truncated_prior(commands, counts, pristine, tmp_path):
    """Root ignores file modes: the commands give up the capabilities that let it (``drop_root``)."""
    data = copy_set(pristine, tmp_path / "data")
    cache = tmp_path / "cache"
    assert commands.run(precompute_argv(data.root, data.datalist, cache), tmp_path / "precompute").rc == 0
    before = _files(cache)
    for folder in _folders(cache):
        folder.chmod(0o555)
    try:
        good = commands.run(training_argv(data.root, data.datalist, tmp_path / "good", prior_cache_dir=str(cache)),
                            tmp_path / "good_log", drop_root=True)
        assert good.rc == 0, good.stderr[-3000:]
        assert (tmp_path / "good" / "models" / "model.pt").is_file() and _files(cache) == before  # nothing written

        target = _truncate(_training_prior(cache, data))  # the test itself is root: it can still damage a file
        bad = commands.run(training_argv(data.root, data.datalist, tmp_path / "bad", prior_cache_dir=str(cache)),
                           tmp_path / "bad_log", drop_root=True)
        again = commands.run(precompute_argv(data.root, data.datalist, cache), tmp_path / "again", drop_root=True)
    finally:
        for folder in _folders(cache):
            folder.chmod(0o755)
    for result in (bad, again):
        assert result.rc != 0, result.stderr[-3000:]
        line = result.last_line
        assert line.startswith(f"ERROR: {target}: has 300 bytes") and "read-only" in line, line
    assert not (tmp_path / "bad" / "models" / "model.pt").exists()
    counts["quiet"] += 1


# ------------------------------------------------------------------------------------- one writer, several readers

READS = 1000
READERS = 2
MIN_REWRITES = 50
SHAPE = (2, 4, 4, 2)
KINDS = ["sam_seg_prior", "sam_boundary_prior"]


def _writer(cache_dir: str, source: str, stop, rewrites) -> None:
    """Rewrite the case with new content (so new file names) until told to stop."""
    cache = PriorCache(cache_dir, {"kinds": KINDS, "drill": "quiet_cache"})
    value = 1
    while not stop.is_set():
        value += 1
        prior = MetaTensor(torch.full(SHAPE, float(value % 200)), meta={"channel_names": KINDS})
        cache.store("case", [source], prior)
        with rewrites.get_lock():
            rewrites.value += 1


def _reader(cache_dir: str, source: str, reads, rewrites, errors, log: str) -> None:
    """Read the case until enough reads and rewrites were done; count the failures, keep a few of their messages
    (in a file: a ``multiprocessing.Queue`` full of them would keep the process from ending)."""
    cache = PriorCache(cache_dir, {"kinds": KINDS, "drill": "quiet_cache"})
    deadline = time.monotonic() + 300  # a safety net against a hung drill, not a timing assert
    while (reads.value < READS or rewrites.value < MIN_REWRITES) and time.monotonic() < deadline:
        try:
            if not cache.is_current("case", [source]):
                raise RuntimeError("the entry was not current")
            prior = cache.load("case").numpy()
            if prior.shape != SHAPE or len(np.unique(prior)) != 1:  # one generation, never a mix of two
                raise RuntimeError(f"mixed or misshapen priors: {np.unique(prior)}")
        except Exception as err:  # noqa: BLE001 - every failure is the drill's finding
            with errors.get_lock():
                errors.value += 1
                if errors.value <= 3:
                    with open(log, "a") as f:
                        f.write(f"{type(err).__name__}: {err}\n")
        with reads.get_lock():
            reads.value += 1


def test_readers_never_see_a_missing_entry_while_a_writer_rewrites(counts, tmp_path):
    source = tmp_path / "image.nii.gz"
    source.write_bytes(b"the input file the priors were made from")
    cache_dir = tmp_path / "cache"
    first = MetaTensor(torch.ones(SHAPE), meta={"channel_names": KINDS})
    PriorCache(cache_dir, {"kinds": KINDS, "drill": "quiet_cache"}).store("case", [str(source)], first)
    ctx = multiprocessing.get_context("fork")
    stop, log = ctx.Event(), tmp_path / "errors.txt"
    reads, rewrites, errors = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Value("i", 0)
    writer = ctx.Process(target=_writer, args=(str(cache_dir), str(source), stop, rewrites))
    readers = [ctx.Process(target=_reader, args=(str(cache_dir), str(source), reads, rewrites, errors, str(log)))
               for _ in range(READERS)]
    writer.start()
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(timeout=400)
    stop.set()
    writer.join(timeout=60)
    assert writer.exitcode == 0 and all(r.exitcode == 0 for r in readers)
    assert reads.value >= READS and rewrites.value >= MIN_REWRITES, (reads.value, rewrites.value)
    examples = log.read_text() if log.exists() else ""
    assert errors.value == 0, f"{errors.value} of {reads.value} reads failed, e.g.\n{examples}"
    counts["quiet"] += 1


# ------------------------------------------------------------------------------------------- sam-priors-cache


def test_cache_tool_lists_and_prunes_malformed_partitions(commands, counts, pristine, tmp_path):
    data = copy_set(pristine, tmp_path / "data")
    cache = tmp_path / "cache"
    assert commands.run(precompute_argv(data.root, data.datalist, cache), tmp_path / "precompute").rc == 0
    good = _partition(cache)
    shapes = {"wrong-shape-000000000000": b'{"signature_sha256": "ab", "created": "today"}',
              "not-json-000000000000": b'{"signature": ', "no-record-000000000000": None}
    for name, record in shapes.items():
        (cache / name / "case_1").mkdir(parents=True)
        if record is not None:
            (cache / name / "partition.json").write_bytes(record)
    listing = commands.run(["sam-priors-cache", "list", str(cache)], tmp_path / "list")
    assert listing.rc == 0, listing.stderr[-2000:]
    for name in shapes:
        (line,) = [text for text in listing.stdout.splitlines() if text.startswith(name)]
        problem = "no partition.json" if shapes[name] is None else str(cache / name / "partition.json")
        assert "not a usable partition" in line and problem in line, line
    assert f"{good.name}  generator=" in listing.stdout
    refused = commands.run(["sam-priors-cache", "prune", str(cache), "wrong-shape-000000000000"], tmp_path / "p0")
    assert refused.rc == 1 and "--force" in refused.last_line and (cache / "wrong-shape-000000000000").is_dir()
    for n, name in enumerate(shapes, 1):
        pruned = commands.run(["sam-priors-cache", "prune", str(cache), name, "--force"], tmp_path / f"p{n}")
        assert pruned.rc == 0 and not (cache / name).exists(), pruned.stderr[-2000:]
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == [good.name]
    counts["quiet"] += 1


# ----------------------------------------------------------------------------------------------------- WeakMedSAM


def _weak(data, work: Path, checkpoint: Path, run_id: str) -> list[str]:
    overrides = weak_overrides(data, work, **{"priors#sam_checkpoint": str(checkpoint)})
    return bundle_argv(run_id, weak_files(data.preset), overrides)


def _features_partition(work: Path) -> Path:
    (partition,) = (work / "priors" / "weak").glob("features-*")
    return partition


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_weak_cache_temporary_files_of_a_killed_run_are_removed(commands, counts, pristine, tmp_path,
                                                                tiny_sam_checkpoint):
    data = copy_set(pristine, tmp_path / "data")
    work = tmp_path / "work"
    assert commands.run(_weak(data, work, tiny_sam_checkpoint, "sam_features"), tmp_path / "first").rc == 0
    case_dir = sorted(p for p in _features_partition(work).iterdir() if p.is_dir())[0]
    hour_ago = time.time() - 3600
    stale = [case_dir / f".pam_logits.tmp-{_dead_pid()}-0badc0de.nii.gz",
             case_dir.parent / f".manifest.tmp-{_dead_pid()}-0badc0de.json"]
    live = case_dir / f".pam_logits.tmp-{os.getpid()}-c0ffee00.nii.gz"  # this process is alive: a writer at work
    other = case_dir / ".notes"  # not the bundle's temporary-name pattern
    for path in [*stale, live, other]:
        path.write_bytes(b"half written")
        os.utime(path, (hour_ago, hour_ago))
    assert all(TEMP_NAME.match(p.name) for p in [*stale, live]) and not TEMP_NAME.match(other.name)
    result = commands.run(_weak(data, work, tiny_sam_checkpoint, "sam_features"), tmp_path / "second")
    assert result.rc == 0, result.stderr[-2000:]
    assert not any(p.exists() for p in stale) and live.exists() and other.exists()
    counts["quiet"] += 1


def test_truncated_weak_feature_map_is_caught_before_the_classifier_trains(commands, counts, pristine, tmp_path,
                                                                          tiny_sam_checkpoint):
    data = copy_set(pristine, tmp_path / "data")
    work = tmp_path / "work"
    assert commands.run(_weak(data, work, tiny_sam_checkpoint, "sam_features"), tmp_path / "features").rc == 0
    case_dir = sorted(p for p in _features_partition(work).iterdir() if p.is_dir())[0]
    target = case_dir / json.loads((case_dir / "entry.json").read_text())["files"]["pam_logits"]
    _truncate(target, 200)
    result = commands.run(_weak(data, work, tiny_sam_checkpoint, "classifier"), tmp_path / "classifier")
    assert result.rc != 0, result.stderr[-3000:]
    line = result.last_line
    assert line.startswith(f"ERROR: {target}: has 200 bytes") and "sam_features" in line, line
    assert not (work / "models" / "classifier.pt").exists()  # refused before the classifier's training
    again = commands.run(_weak(data, work, tiny_sam_checkpoint, "sam_features"), tmp_path / "again")
    assert again.rc == 0, again.stderr[-2000:]
    summary = json.loads((work / "run" / "weak_summary.json").read_text())
    assert summary["sam_features"]["computed"] == 1
    counts["quiet"] += 1
