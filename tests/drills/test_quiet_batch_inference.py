"""Drills: batch inference never keeps another model's outputs, never writes over a file it did not write, and never
ends quietly with nothing done (issue 21, items 3, 8 and 14).

Each drill runs the real commands (``sam-priors-infer``, ``python -m monai.bundle run batch_inferring``) on a copy
of the pristine BraTS phantoms with the tiny trained model, and once a fresh process that gets Ctrl-C (SIGINT).
Before the fix each of these ended with exit status 0 and nothing said (or, for the symlink loop, aborted the whole
batch): a second model's run reported the first model's outputs as ``exists``; a BraTS case folder as ``--output``
took the case's ground truth for a finished prediction (and replaced it with ``--overwrite``); a folder given as
input and output held 0 inputs; an empty run exited 0; hidden files vanished from the summary; Ctrl-C left no
``batch_summary.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from drill_utils import ENV, bundle_argv, copy_set
from workflow_utils import REPO

from bundle.hashing import file_sha256
from bundle.workflows.common.model_card import CARD_NAME, write_card

SUMMARY = "batch_summary.json"
BATCH_CONFIG = [str(REPO / "configs" / "batch_inference.json")]


def _infer(commands, log: Path, inputs, output: Path, model: Path, *extra: str):
    argv = ["sam-priors-infer", "--output", str(output), "--model", str(model), "--prior_cache",
            str(log.parent / "cache"), *extra]
    for path in inputs:
        argv += ["--input", str(path)]
    return commands.run(argv, log)


def _bundle_infer(commands, log: Path, inputs, output: Path, model: Path, **overrides):
    argv = bundle_argv("batch_inferring", BATCH_CONFIG, {"input": [str(p) for p in inputs], "output": str(output),
                                                         "model": str(model), "prior_cache": str(log.parent / "cache"),
                                                         **overrides}, meta=False)
    return commands.run(argv, log)


def _summary(output: Path) -> dict:
    return json.loads((output / SUMMARY).read_text())


def _testing_case(data) -> dict:
    entry = json.loads(data.datalist.read_text())["testing"][0]
    return {"case_id": entry["case_id"], "images": [data.root / p for p in entry["image"]],
            "label": data.root / entry["label"]}


def _retrained(trained: Path, folder: Path) -> Path:
    """The model folder with other weights and its card bound to them: what a second training leaves."""
    shutil.copytree(trained / "models", folder)
    weights = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    state = weights.get("network", weights)
    name = next(k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point())
    state[name] = state[name] + 0.5
    torch.save(weights, folder / "model.pt")
    write_card(folder / CARD_NAME, json.loads((folder / CARD_NAME).read_text()))
    return folder


def _four_channel_scan(case: dict, folder: Path) -> Path:
    """One 4D NIfTI holding the case's four modalities (what a multi-channel model takes from a folder)."""
    images = [nib.load(p) for p in case["images"]]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{case['case_id']}_scan.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([np.asarray(i.dataobj) for i in images], -1), images[0].affine), path)
    return path


def test_a_second_model_into_the_same_folder_is_refused_then_predicts_with_overwrite(pristine, trained, commands,
                                                                                        counts, tmp_path):
    data = copy_set(pristine, tmp_path / "data")
    out, case = tmp_path / "out", _testing_case(data)
    assert _infer(commands, tmp_path / "log", [data.datalist], out, trained / "models").rc == 0
    prediction = out / f"{case['case_id']}_pred.nii.gz"
    before = prediction.read_bytes()
    other = _retrained(trained, tmp_path / "other")
    result = _infer(commands, tmp_path / "log", [data.datalist], out, other)
    line = result.last_line
    assert result.rc == 1 and line.startswith("FAILED: ") and str(prediction) in line, result.stderr[-3000:]
    assert "another model" in line and "--overwrite true" in line, line
    assert prediction.read_bytes() == before
    summary = _summary(out)
    assert summary["model_sha256"] == file_sha256(other / "model.pt")
    assert not [r for r in summary["records"] if r["outputs"]]  # it lists no output it did not write
    counts["quiet"] += 1

    result = _bundle_infer(commands, tmp_path / "log", [data.datalist], out, other, overwrite=True)
    assert result.rc == 0, result.stderr[-3000:]
    assert _summary(out)["counts"]["done"] == 1 and prediction.read_bytes() != before
    record = json.loads((out / f"{case['case_id']}_record.json").read_text())
    assert record["model"]["model_sha256"] == file_sha256(other / "model.pt")
    assert record["outputs"][prediction.name]["sha256"] == file_sha256(prediction)


def test_a_brats_case_folder_as_output_keeps_its_ground_truth(pristine, trained, commands, counts, tmp_path):
    data = copy_set(pristine, tmp_path / "data")
    case = _testing_case(data)
    folder, truth = case["label"].parent, case["label"]
    original = truth.read_bytes()
    for extra in ((), ("--overwrite", "true")):
        result = _infer(commands, tmp_path / "log", [data.datalist], folder, trained / "models", *extra)
        assert result.rc == 0, result.stderr[-3000:]
        assert truth.read_bytes() == original, extra
        assert (folder / f"{case['case_id']}_pred.nii.gz").is_file()
    assert _summary(folder)["counts"]["done"] == 1  # predicted again with --overwrite true
    counts["quiet"] += 2  # reported 'exists' without predicting; replaced the ground truth with --overwrite


def test_a_folder_as_input_and_output_runs_its_scans_once(pristine, trained, commands, counts, tmp_path):
    data = copy_set(pristine, tmp_path / "data")
    folder = tmp_path / "scan"
    _four_channel_scan(_testing_case(data), folder)
    first = _infer(commands, tmp_path / "log", [folder], folder, trained / "models")
    assert first.rc == 0 and _summary(folder)["counts"]["done"] == 1, first.stderr[-3000:]
    again = _bundle_infer(commands, tmp_path / "log", [folder], folder, trained / "models")
    counts_again = _summary(folder)["counts"]
    assert again.rc == 0 and counts_again["exists"] == 1 and counts_again["done"] == 0, (counts_again, again.stderr)
    assert counts_again["skipped"] == 0 and counts_again["failed"] == 0  # its own outputs are not inputs
    counts["quiet"] += 1


def test_an_empty_run_exits_non_zero(trained, commands, counts, tmp_path):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "README.txt").write_text("the scans are elsewhere\n")
    for run in (_infer, _bundle_infer):
        result = run(commands, tmp_path / "log", [tmp_path / "nothing"], tmp_path / "out", trained / "models")
        assert result.rc == 2, result.stderr[-3000:]
        assert result.last_line.startswith(f"ERROR: no input found in {tmp_path / 'nothing'}"), result.last_line
    counts["quiet"] += 1


def test_a_symlink_loop_fails_only_itself_and_hidden_files_are_listed(pristine, trained, commands, counts, tmp_path):
    data = copy_set(pristine, tmp_path / "data")
    folder = tmp_path / "scans"
    scan = _four_channel_scan(_testing_case(data), folder)
    os.symlink("b.nii.gz", folder / "a.nii.gz")
    os.symlink("a.nii.gz", folder / "b.nii.gz")
    shutil.copy(scan, folder / ".scan_copy.nii.gz")
    result = _infer(commands, tmp_path / "log", [folder], tmp_path / "out", trained / "models")
    assert result.rc == 1, result.stderr[-3000:]
    records = {Path(r["input"]).name: r for r in _summary(tmp_path / "out")["records"]}
    assert records[scan.name]["status"] == "done"
    for link in ("a.nii.gz", "b.nii.gz"):
        assert records[link]["status"] == "failed" and "symbolic link loop" in records[link]["reason"]
    counts["refused"] += 1
    assert records[".scan_copy.nii.gz"]["status"] == "skipped" and "hidden" in records[".scan_copy.nii.gz"]["reason"]
    counts["quiet"] += 1


def _restore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Python then raises KeyboardInterrupt, as on a terminal


def test_ctrl_c_leaves_the_summary_of_what_was_done(pristine, trained, counts, tmp_path):
    data = copy_set(pristine, tmp_path / "data")
    case = _testing_case(data)
    entries = []
    for i in range(30):  # 30 cases of distinct files (a datalist naming one file twice runs it once)
        (tmp_path / "many" / f"{i}").mkdir(parents=True)
        images = [shutil.copy(p, tmp_path / "many" / f"{i}" / p.name) for p in case["images"]]
        entries.append({"case_id": f"copy_{i:02d}", "image": [str(p) for p in images]})
    datalist = tmp_path / "many.json"
    datalist.write_text(json.dumps({"training": [], "validation": [], "testing": entries}))
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "bundle.inference.cli", "--input", str(datalist), "--output", str(out), "--model",
            str(trained / "models"), "--prior_cache", str(tmp_path / "cache")]
    with open(tmp_path / "stderr.txt", "w") as err:
        process = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=err,
                                   preexec_fn=_restore_sigint)
        deadline = time.monotonic() + 240
        while not list(out.glob("copy_01_pred.nii.gz")) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)  # copy_00 is done: copy_01 has been written
        rc = process.wait(timeout=120)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert rc == 130, stderr[-3000:]
    summary = _summary(out)
    assert summary["exit_code"] == 130 and summary["counts"]["done"] >= 1 and summary["counts"]["interrupted"] >= 1
    assert summary["counts"]["done"] + summary["counts"]["interrupted"] == len(entries), summary["counts"]
    assert stderr.strip().splitlines()[-1].startswith("INTERRUPTED: ")
    counts["quiet"] += 1
