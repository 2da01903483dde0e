"""Sharded precompute under ``torchrun`` and several precompute jobs on one cache folder at once.

Every job is ``python -m monai.bundle run precompute`` (under ``torchrun --standalone``, gloo, where sharded) with
the weight-free ``fallback`` generator on a tiny BraTS 2021 phantom dataset, so each finishes in seconds on two CPU
cores; the manifest lock and the rank helpers are also tested directly, in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from test_precompute import _with_broken_case  # the same truncated-FLAIR copy of the dataset

from bundle.data.datalist import build_datalist, write_datalist
from bundle.testing.phantom_writers import make_phantoms
from bundle.priors.cache import MANIFEST_LOCK_NAME, PriorCache
from bundle.priors.precompute import shard_case_ids

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = repr([os.path.join(REPO, "configs", f) for f in ("sam_priors.json", "precompute_priors.json")])
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def brats(tmp_path_factory):
    """Four BraTS 2021 phantom cases (2 training, 1 validation, 1 testing) and their datalist."""
    root = tmp_path_factory.mktemp("brats2021")
    make_phantoms("brats2021", root, cases=4, size=24, seed=0)
    datalist = build_datalist("brats", root, progress=False)
    return {"root": root, "datalist": write_datalist(datalist, root / "datalist.json")}


def _precompute(brats, cache_dir, launcher=(sys.executable,), **overrides):
    command = [*launcher, "-m", "monai.bundle", "run", "precompute", "--config_file", CONFIGS,
               "--bundle_root", str(cache_dir.parent), "--dataset_dir", str(brats["root"]),
               "--datalist", str(brats["datalist"]), "--prior_cache_dir", str(cache_dir),
               "--priors#sam_model_type", "fallback"]
    for key, value in overrides.items():
        command += [f"--{key}", value]
    return subprocess.Popen(command, cwd=cache_dir.parent, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(process, timeout=120):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-3000:] + err[-3000:]
    return err


def _partitions(cache_dir):
    return sorted(p for p in cache_dir.iterdir() if p.is_dir())


def _check_partition(partition):
    """Every entry on disk loads, and the manifest parses and lists exactly those entries; returns the case ids."""
    on_disk = sorted(p.parent.name for p in partition.glob("*/entry.json"))
    signature = json.loads((partition / "partition.json").read_text())["signature"]["prior"]
    cache = PriorCache(partition.parent, signature)
    assert cache.cache_dir == partition
    for case_id in on_disk:
        prior = cache.load(case_id)
        assert prior.shape[0] == len(signature["kinds"]) and np.isfinite(prior.numpy()).all()
    manifest = json.loads((partition / "manifest.json").read_text())
    assert sorted(manifest["cases"]) == on_disk
    assert not [p for p in partition.rglob(".*.tmp-*")]  # no temporary file left behind
    return on_disk


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_shards_cover_every_case_once(world_size):
    ids = [f"case_{i:03d}" for i in (7, 3, 0, 4, 1, 9, 2)]
    shards = [shard_case_ids(ids, r, world_size) for r in range(world_size)]
    assert set().union(*shards) == set(ids) and sum(len(s) for s in shards) == len(ids)
    assert shards == [shard_case_ids(list(reversed(ids)), r, world_size) for r in range(world_size)]
    assert shard_case_ids(ids, 0, world_size) >= {min(ids)}
    with pytest.raises(ValueError, match="rank"):
        shard_case_ids(ids, world_size, world_size)


def test_torchrun_two_ranks_match_one_process(brats, tmp_path):
    """Two gloo ranks write the same priors as one process, each rank only its share; rank 0 writes the manifest."""
    single, sharded = tmp_path / "single" / "cache", tmp_path / "sharded" / "cache"
    single.parent.mkdir()
    sharded.parent.mkdir()
    one = _precompute(brats, single)
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    two = _precompute(brats, sharded, launcher=torchrun)
    _finish(one)
    err = _finish(two)
    (part_1,), (part_2,) = _partitions(single), _partitions(sharded)
    assert part_1.name == part_2.name
    cases = _check_partition(part_1)
    assert _check_partition(part_2) == cases and len(cases) == 4
    for case_id in cases:
        files_1, files_2 = (json.loads((p / case_id / "entry.json").read_text())["files"] for p in (part_1, part_2))
        assert files_1 == files_2  # named after their content: the same bytes, the same names
        for name in files_1.values():
            a, b = nib.load(str(part_1 / case_id / name)), nib.load(str(part_2 / case_id / name))
            # compare what the files hold too: the NIfTI header and the voxels
            assert a.header.binaryblock == b.header.binaryblock
            np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    last = json.loads((sharded / "last_run.json").read_text())
    assert (last["computed"], last["up_to_date"], last["cases"]) == (4, 0, 4)
    assert [r["rank"] for r in last["ranks"]] == [0, 1]
    for share in last["ranks"]:
        assert set(share["computed_cases"]) == shard_case_ids(cases, share["rank"], 2)
    assert "rank 0/2" in err and "rank 1/2" in err  # each rank's own progress bar


def test_torchrun_bad_case_stops_every_rank(brats, tmp_path):
    """A case that stops one rank stops the job (no rank left waiting); rank 0 still writes what the cache holds."""
    root, datalist_path, _, flair = _with_broken_case(brats, tmp_path)
    datalist = json.loads(datalist_path.read_text())
    bad = datalist["training"][0]
    cache_dir = tmp_path / "cache"
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    job = _precompute({"root": root, "datalist": datalist_path}, cache_dir, launcher=torchrun)
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0
    cases = {e["case_id"] for s in ("training", "validation", "testing") for e in datalist[s]}
    # the bad case's rank raises its error; the other rank, not left waiting, names that rank and error
    assert str(flair) in err and f"rank {_rank_of(bad, cases)} stopped: {flair}" in err
    (partition,) = _partitions(cache_dir)
    # the other rank finished its share, and the bad rank its cases before the bad one
    done = _check_partition(partition)
    assert bad["case_id"] not in done and set(done) >= shard_case_ids(sorted(cases), 1 - _rank_of(bad, cases), 2)


def _rank_of(entry, cases):
    return next(r for r in range(2) if entry["case_id"] in shard_case_ids(sorted(cases), r, 2))


def test_two_jobs_at_once_same_configuration(brats, tmp_path):
    """Both jobs compute (and race on) every case of one partition: every entry intact, one true manifest."""
    cache_dir = tmp_path / "cache"
    for job in [_precompute(brats, cache_dir), _precompute(brats, cache_dir)]:
        _finish(job)
    (partition,) = _partitions(cache_dir)
    assert len(_check_partition(partition)) == 4


def test_two_jobs_at_once_two_configurations(brats, tmp_path):
    """Two configurations at once: two partitions of one cache folder, each with intact entries and manifest."""
    cache_dir = tmp_path / "cache"
    seg_only = {"priors#prior_kinds": "['sam_seg_prior']"}
    for job in [_precompute(brats, cache_dir), _precompute(brats, cache_dir, **seg_only)]:
        _finish(job)
    partitions = _partitions(cache_dir)
    assert len(partitions) == 2
    assert [len(_check_partition(p)) for p in partitions] == [4, 4]
    assert json.loads((cache_dir / "last_run.json").read_text())["partition"] in {p.name for p in partitions}


def test_manifest_rewrite_waits_for_the_lock(tmp_path):
    """A writer holding the partition's lock keeps another from rebuilding the manifest until it lets go."""
    fcntl = pytest.importorskip("fcntl")

    cache = PriorCache(tmp_path, {"kinds": ["sam_seg_prior"], "generator": {"generator": "test"}})
    source = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), str(source))
    prior = MetaTensor(torch.zeros(1, 4, 4, 2), meta={"channel_names": ["sam_seg_prior"]})
    cache.store("a", [str(source)], prior)
    cache.write_manifest()
    cache.store("b", [str(source)], prior)
    with open(cache.cache_dir / MANIFEST_LOCK_NAME, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        writer = threading.Thread(target=cache.write_manifest)
        writer.start()
        time.sleep(0.5)
        assert writer.is_alive()  # waiting for the lock
        assert set(json.loads((cache.cache_dir / "manifest.json").read_text())["cases"]) == {"a"}
        cache.store("c", [str(source)], prior)  # added while the writer waits: its rebuild, made later, sees it
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    writer.join(timeout=10)
    assert not writer.is_alive()
    assert set(json.loads((cache.cache_dir / "manifest.json").read_text())["cases"]) == {"a", "b", "c"}


def test_distributed_helpers_in_a_single_process(monkeypatch):
    """Without torchrun the helpers make no process group: barrier and gather are no-ops, the device is local."""
    from bundle import distributed

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert not distributed.launched_by_torchrun() and str(distributed.local_device()) == "cpu"
    with distributed.process_group() as rank:
        assert rank == 0 and not torch.distributed.is_initialized()
        distributed.barrier()
        assert distributed.gather_objects({"a": 1}) == [{"a": 1}]
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.launched_by_torchrun()
