"""Faults a user meets with real files, run through the real configs: each stops before any work with one error
naming the file and the problem, and leaves no model, checkpoint or prediction behind (prior_mode none: no SAM)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import namedtuple

import nibabel as nib
import numpy as np
import pytest
from workflow_utils import (METADATA, REPO, TINY, config_files, evaluate, infer, make_phantom_set, train,
                            untrained_model)

from bundle.errors import FileError, error_line, exception_chain

RAW = {"prior_mode": "none"}


@pytest.fixture
def brats(tmp_path):
    """A private phantom BraTS set (4 cases, size 32) whose files a test may damage."""
    return make_phantom_set("brats", tmp_path / "data")


def project_error(err: BaseException) -> FileError:
    """The project's own error under MONAI's wrappers (what the ERROR line reports)."""
    return next(e for e in exception_chain(err) if isinstance(e, FileError))


def assert_nothing_written(work):
    assert not (work / "models" / "model.pt").exists()
    assert not (work / "run" / "checkpoint_last.pt").exists()


def _entry(data, section="training", index=0):
    with open(data.datalist) as f:
        return json.load(f)[section][index]


def _rewrite(path, change):
    image = nib.load(path)
    array = np.asarray(image.dataobj, dtype=np.float32)  # phantoms store int16: inf and NaN need floats
    affine = change(array, image.affine.copy())
    nib.save(nib.Nifti1Image(array, image.affine if affine is None else affine), path)


def test_inf_in_t1_stops_training_before_any_epoch(brats, tmp_path):
    t1 = str(brats.root / _entry(brats)["image"][1])  # FLAIR, T1, T1ce, T2: SAM sees FLAIR only
    _rewrite(t1, lambda a, _: a.__setitem__((10, 10, slice(2, 5)), np.inf))
    with pytest.raises(Exception) as info:
        train(brats, tmp_path / "work", **RAW)
    err = project_error(info.value)
    assert err.path == t1 and err.problem.startswith("contains 3 non-finite values (0 NaN, 3 inf)")
    assert error_line(info.value) == f"ERROR: {t1}: {err.problem}"
    assert_nothing_written(tmp_path / "work")


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda a, aff: aff.__setitem__((0, 3), aff[0, 3] + 4.0) or aff, "label affine differs from"),
        (lambda a, aff: None, "label shape"),
    ],
    ids=["affine", "shape"],
)
def test_mismatched_label_stops_before_work(brats, tmp_path, change, fragment):
    entry = _entry(brats, "validation")
    label = str(brats.root / entry["label"])
    if fragment == "label shape":
        image = nib.load(label)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, 1:], image.affine), label)
    else:
        _rewrite(label, change)
    with pytest.raises(Exception) as info:
        train(brats, tmp_path / "work", **RAW)
    err = project_error(info.value)
    assert err.path == label and fragment in err.problem and str(brats.root / entry["image"][0]) in err.problem
    assert_nothing_written(tmp_path / "work")


Usage = namedtuple("Usage", "total used free")


def test_full_ckpt_dir_fails_at_start(brats, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(1 << 40, 1 << 40, 1 << 20))
    with pytest.raises(Exception) as info:
        train(brats, tmp_path / "work", **RAW)
    err = project_error(info.value)
    assert err.path == str(tmp_path / "work" / "models") and "ckpt_dir has 1.0 MiB free" in err.problem
    assert not (tmp_path / "work" / "run").exists() or not any((tmp_path / "work" / "run").iterdir())


def test_ckpt_dir_that_cannot_be_written(brats, tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "models").write_text("a file where the folder should be")
    with pytest.raises(Exception) as info:
        train(brats, tmp_path / "work", **RAW)
    assert error_line(info.value) == f"ERROR: {tmp_path / 'work' / 'models'}: ckpt_dir is a file, not a folder"


def test_diverging_training_stops_without_saving(brats, tmp_path):
    with pytest.raises(Exception) as info:
        train(brats, tmp_path / "work", learning_rate=1e30, max_epochs=2, **RAW)
    message = error_line(info.value)
    assert message.startswith("ERROR: training stopped: the loss is nan at epoch 1, iteration "), message
    cases = re.search(r"batch cases: ([\w, ]+)\.", message).group(1).split(", ")
    assert set(cases) <= set(brats.cases["training"]) and cases
    assert_nothing_written(tmp_path / "work")


def test_inference_on_inf_image_writes_no_prediction(brats, tmp_path):
    work = tmp_path / "work"
    untrained_model(work, **RAW)
    flair = str(brats.root / _entry(brats, "testing")["image"][0])
    _rewrite(flair, lambda a, _: a.__setitem__((1, 1, 1), np.nan))
    with pytest.raises(Exception) as info:
        infer(brats, work, **RAW)
    err = project_error(info.value)
    assert err.path == flair and "1 non-finite values (1 NaN, 0 inf)" in err.problem
    assert not (work / "predictions").exists() or list((work / "predictions").iterdir()) == []


def test_truncated_model_named_by_inference_and_evaluation(brats, tmp_path):
    work = tmp_path / "work"
    untrained_model(work, **RAW)
    model = work / "models" / "model.pt"
    model.write_bytes(model.read_bytes()[:5000])
    with pytest.raises(Exception) as info:  # inference reads the card first: its sha256 binding catches it
        infer(brats, work)
    assert error_line(info.value).startswith(f"ERROR: {model}: is not the model the card "), error_line(info.value)
    with pytest.raises(Exception) as info:  # evaluation loads the weights the training config names
        evaluate(brats, work, **RAW)
    assert error_line(info.value) == f"ERROR: {model}: network weights is truncated: the zip archive's directory " \
        f"at its end is missing (5000 bytes)"


def test_bundle_command_ends_with_one_error_line(brats, tmp_path):
    """``python -m monai.bundle run training`` on a datalist entry without a label: traceback, then the ERROR line."""
    datalist = json.loads(brats.datalist.read_text())
    case_id = datalist["training"][1].pop("label") and datalist["training"][1]["case_id"]
    broken = tmp_path / "datalist.json"
    broken.write_text(json.dumps(datalist))
    overrides = {**TINY, **brats.overrides(tmp_path / "work"), **RAW, "datalist": str(broken)}
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
               json.dumps(config_files(None)), "--meta_file", METADATA]
    for key, value in overrides.items():
        command += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and "Traceback (most recent call last)" in result.stderr
    assert lines[-1].startswith(f"ERROR: {broken}: training[1] ({case_id}): missing key 'label' (it has "), lines[-3:]
    assert_nothing_written(tmp_path / "work")
