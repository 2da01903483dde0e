"""WeakMedSAM on two processes: ``torchrun`` with ``configs/multi_gpu_train.json`` on CPU (gloo), every stage."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import pytest
import torch
from monai.bundle import ConfigParser
from weak_utils import run_weak, weak_files, weak_overrides
from workflow_utils import MULTI_GPU, make_phantom_set, tensorboard_tags, torchrun

from bundle.workflows.weak.classifier import load_classifier
from bundle.workflows.weak.pipeline import STAGES
from bundle.workflows.weak.ranks import rank_share

WORLD = 2


def test_rank_share_deals_every_case_to_one_rank():
    entries = [{"case_id": f"case_{i:02d}", "order": n} for n, i in enumerate((5, 3, 0, 4, 1, 2, 6))]
    for world in (1, 2, 3):
        shares = [rank_share(entries, r, world) for r in range(world)]
        dealt = [e["case_id"] for share in shares for e in share]
        assert sorted(dealt) == sorted(e["case_id"] for e in entries) and len(set(dealt)) == len(entries)
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        for r, share in enumerate(shares):  # rank r: every world-th sorted id from the r-th, in datalist order
            assert {e["case_id"] for e in share} == set(sorted(e["case_id"] for e in entries)[r::world])
            assert [e["order"] for e in share] == sorted(e["order"] for e in share)
    assert rank_share(entries) == entries  # one process: everything, as before
    with pytest.raises(ValueError, match="rank 2"):
        rank_share(entries, 2, 2)


@contextmanager
def _one_thread():
    """Compute as each torchrun process does (OMP_NUM_THREADS=1), so floating-point results can match exactly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _partitions(priors: Path) -> dict[str, Path]:
    """``{"weak_features" | "weak_pseudo_labels": partition folder}`` of a run's weak cache."""
    found = {}
    for record in (priors / "weak").glob("*/partition.json"):
        prior = json.loads(record.read_text())["signature"]["prior"]
        found[next(k for k in ("weak_features", "weak_pseudo_labels") if k in prior)] = record.parent
    return found


def _case_files(partition: Path) -> dict[str, set[str]]:
    """``{case_id: file names}`` of a cache partition (the entry itself left out)."""
    return {d.name: {f.name for f in d.iterdir()} - {"entry.json"} for d in partition.iterdir() if d.is_dir()}


def _content(path: Path) -> bytes:
    """A cache file's bytes; a ``.nii.gz`` decompressed (its gzip header names the temporary file it was written as)."""
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def _entry(path: Path) -> dict:
    entry = json.loads(path.read_text())
    return {k: v for k, v in entry.items() if k not in ("created", "seconds")}


def _torchrun(data, work: Path, logs: Path, run_id: str, **overrides) -> tuple[subprocess.CompletedProcess, dict]:
    """``run_id`` of the weak config + ``configs/multi_gpu_train.json`` on :data:`WORLD` processes, as a user types
    it; returns the finished process and ``{rank: its output}``."""
    per_rank_logs = ("--log-dir", str(logs), "--redirects", "3", "--tee", "3")
    result = torchrun([*weak_files(data.preset), MULTI_GPU], run_id, nproc=WORLD, launcher_args=per_rank_logs,
                      **weak_overrides(data, work, **overrides))
    rank_logs = {int(p.name): (p / "stdout.log").read_text() + (p / "stderr.log").read_text()
                 for p in logs.glob("*/attempt_0/*")}
    assert set(rank_logs) == set(range(WORLD)), result.stdout[-4000:] + result.stderr[-4000:]
    return result, rank_logs


def test_weak_training_on_two_processes(tmp_path, shapes_sam_checkpoint):
    data = make_phantom_set("brats", tmp_path / "data", cases=6)  # 2 training, 2 validation, 2 testing cases
    cases = data.cases["training"] + data.cases["validation"]
    work = tmp_path / "work"
    result, rank_logs = _torchrun(data, work, tmp_path / "logs", "training",
                                  **{"priors#sam_checkpoint": str(shapes_sam_checkpoint)})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    # every rank computed its own share of the SAM features and pseudo labels, and only that share
    for rank, text in rank_logs.items():
        mine = {e["case_id"] for e in rank_share([{"case_id": c} for c in cases], rank, WORLD)}
        for stage, word in (("sam_features", "computed"), ("pseudo_labels", "written")):
            assert set(re.findall(rf"{stage}: case \d+/\d+ (\S+) {word}", text)) == mine, (rank, stage)

    # every case has its entry in both caches, and each manifest lists exactly the files there
    partitions = _partitions(work / "priors")
    assert set(partitions) == {"weak_features", "weak_pseudo_labels"}
    for partition in partitions.values():
        on_disk = _case_files(partition)
        assert set(on_disk) == set(cases)
        manifest = json.loads((partition / "manifest.json").read_text())
        assert {c: set(m["files"].values()) for c, m in manifest["cases"].items()} == on_disk

    # the SAM features are those of a single process, to the byte
    reference = tmp_path / "reference"
    with _one_thread():
        run_weak(data, reference, "sam_features", **{"priors#sam_checkpoint": str(shapes_sam_checkpoint)})
    single = _partitions(reference / "priors")["weak_features"]
    assert single.name == partitions["weak_features"].name
    assert _case_files(single) == _case_files(partitions["weak_features"])
    for case, names in _case_files(single).items():
        for name in names:
            assert _content(single / case / name) == _content(partitions["weak_features"] / case / name), (case, name)
        assert _entry(single / case / "entry.json") == _entry(partitions["weak_features"] / case / "entry.json")

    # the pseudo-label datalist points every training / validation case at a label that loads
    pseudo = json.loads((work / "run" / "pseudo_datalist.json").read_text())
    for entry in pseudo["training"] + pseudo["validation"]:
        assert Path(entry["label"]).parent.parent == partitions["weak_pseudo_labels"]
        assert nib.load(entry["label"]).shape == nib.load(entry["image"][0]).shape[:3]

    # models: the plain networks' weights, loadable without DDP
    classifier = torch.load(work / "models" / "classifier.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in classifier["network"])
    _, card = load_classifier(work / "models" / "classifier.pt")
    assert card["validation"]["epoch"] == 1
    segmentation = torch.load(work / "models" / "segmentation" / "model.pt", map_location="cpu", weights_only=True)
    assert segmentation and not any(k.startswith("module.") for k in segmentation)

    # one TensorBoard writer (rank 0) for the pipeline and one for the segmentation, nothing from rank 1
    assert len(list((work / "run").glob("events.out.tfevents.*"))) == 1
    assert len(list((work / "run" / "segmentation").glob("events.out.tfevents.*"))) == 1
    assert len(list(work.rglob("events.out.tfevents.*"))) == 2 and not list(work.rglob("rank1"))
    tags, _ = tensorboard_tags(work / "run")
    assert "classifier/train_loss" in tags["scalars"] and any(t.startswith("weak/") for t in tags["images"])

    # the evaluation gathered both ranks' test cases into one report
    reports = list((work / "run" / "segmentation").glob("eval_testing_*/metrics_summary.json"))
    assert len(reports) == 1 and json.loads(reports[0].read_text())["n_cases"] == len(data.cases["testing"])

    summary = json.loads((work / "run" / "weak_summary.json").read_text())
    assert list(summary) == list(STAGES)
    assert summary["sam_features"]["computed"] == summary["pseudo_labels"]["computed"] == len(cases)


def test_a_case_failing_on_one_rank_stops_every_rank(tmp_path, shapes_sam_checkpoint):
    """A case whose cache slot cannot be written (a file where its folder goes) fails on the rank that owns it only:
    the other rank must not wait for it at the meeting, both stop naming the path, and no manifest is written."""
    data = make_phantom_set("brats", tmp_path / "data", cases=4)
    work = tmp_path / "work"
    sam = {"priors#sam_checkpoint": str(shapes_sam_checkpoint)}
    parser = ConfigParser()
    parser.read_config(weak_files(data.preset))
    parser.update(weak_overrides(data, work, **sam))
    partition = parser.get_parsed_content("slice_features").cache.cache_dir
    cases = [{"case_id": c} for c in data.cases["training"] + data.cases["validation"]]
    blocked = partition / rank_share(cases, 1, WORLD)[0]["case_id"]
    blocked.parent.mkdir(parents=True)
    blocked.write_text("in the way")
    result, rank_logs = _torchrun(data, work, tmp_path / "logs", "sam_features", **sam)
    assert result.returncode != 0
    assert str(blocked) in rank_logs[1] and "rank 1 stopped" not in rank_logs[1]
    assert f"sam_features: rank 1 stopped: {blocked}" in rank_logs[0]
    assert not list(partition.rglob("manifest.json"))
    assert rank_share(cases, 0, WORLD)[0]["case_id"] in {p.name for p in partition.iterdir() if p.is_dir()}
