"""Quiet datalist failures (issue 21, items 5, 7 and 14): each ran to exit 0 doing something other than what was asked.

- a label file edited after ``prepare_datalist``: WeakMedSAM and SAMAug-C trained on the per-slice labels stored in
  the datalist, computed from the old file; now refused, naming the label file and saying to rewrite the datalist;
- an empty test split: WeakMedSAM found it at its last stage, after every training; now refused before the first
  stage (no SAM feature is computed);
- SAM-Mix's ``--num_labelled 2.5`` trained with 2 labelled slices; now refused naming the option;
- SAM-Mix's ``zero_shot`` baseline (which uses no labelled slice) was refused with ``--num_labelled 0``; now it runs.

Every drill runs the real ``python -m monai.bundle run ...`` command (:mod:`forkserver`) on a private copy of the
phantom data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from drill_utils import bundle_argv, copy_set, training_argv

_TESTS = Path(__file__).resolve().parents[1]
for _folder in ("workflows/weak", "workflows/semisup"):
    if str(_TESTS / _folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / _folder))

from semisup_utils import mix_files, mix_overrides  # noqa: E402
from weak_utils import weak_files, weak_overrides  # noqa: E402
from workflow_utils import make_phantom_set  # noqa: E402


@pytest.fixture(scope="module")
def lits(tmp_path_factory):
    """4 LiTS phantoms (32 x 32 slices, 2 / 1 / 1 datalist) for SAM-Mix."""
    return make_phantom_set("lits", tmp_path_factory.mktemp("lits"))


def _training_label(data) -> Path:
    return data.root / json.loads(data.datalist.read_text())["training"][0]["label"]


def _edit_label(path: Path) -> None:
    """An annotator's fix after the datalist was written: tumour (value 2) drawn into an empty slice."""
    image = nib.load(str(path))
    array = np.asarray(image.dataobj).copy()
    empty = [d for d in range(array.shape[-1]) if not array[..., d].any()]
    array[10:14, 10:14, empty[0]] = 2
    nib.save(nib.Nifti1Image(array, image.affine, image.header), str(path))


def _weak_argv(data, work: Path, checkpoint: Path, run_id: str) -> list[str]:
    overrides = weak_overrides(data, work, **{"priors#sam_checkpoint": str(checkpoint)})
    return bundle_argv(run_id, weak_files(data.preset), overrides)


def test_label_edited_after_prepare_datalist_is_caught_by_weakmedsam(commands, counts, pristine, tmp_path,
                                                                     tiny_sam_checkpoint):
    data = copy_set(pristine, tmp_path / "data")
    label = _training_label(data)
    _edit_label(label)
    result = commands.run(_weak_argv(data, tmp_path / "work", tiny_sam_checkpoint, "sam_features"), tmp_path / "out")
    assert result.rc != 0, result.stderr[-2000:]
    assert result.last_line.startswith(f"ERROR: {label}: ") and "prepare_datalist" in result.last_line
    assert not list((tmp_path / "work").rglob("partition.json"))  # no SAM feature was computed
    counts["quiet"] += 1


def test_label_edited_after_prepare_datalist_is_caught_by_samaug_c(commands, counts, pristine, tmp_path):
    data = copy_set(pristine, tmp_path / "data")
    label = _training_label(data)
    _edit_label(label)
    work = tmp_path / "work"
    result = commands.run(training_argv(data.root, data.datalist, work, "samaug_c"), tmp_path / "out")
    assert result.rc != 0, result.stderr[-2000:]
    assert result.last_line.startswith(f"ERROR: {label}: ") and "prepare_datalist" in result.last_line
    assert not (work / "models" / "model.pt").exists()
    counts["quiet"] += 1


def test_empty_test_split_is_refused_before_the_first_weakmedsam_stage(commands, counts, pristine, tmp_path,
                                                                       tiny_sam_checkpoint):
    data = copy_set(pristine, tmp_path / "data")
    datalist = json.loads(data.datalist.read_text())
    datalist["testing"] = []
    data.datalist.write_text(json.dumps(datalist, indent=1))
    work = tmp_path / "work"
    result = commands.run(_weak_argv(data, work, tiny_sam_checkpoint, "training"), tmp_path / "out")
    assert result.rc != 0, result.stderr[-2000:]
    assert result.last_line.startswith(f"ERROR: {data.datalist}: ") and "testing" in result.last_line
    assert not list(work.rglob("partition.json")) and not (work / "models").exists()  # refused before any stage
    counts["quiet"] += 1


def test_sam_mix_refuses_a_fractional_num_labelled(commands, counts, lits, tmp_path, tiny_sam_checkpoint):
    work = tmp_path / "work"
    argv = bundle_argv("training", mix_files("lits"), mix_overrides(lits, work, tiny_sam_checkpoint, num_labelled=2.5))
    result = commands.run(argv, tmp_path / "out")
    assert result.rc != 0, result.stderr[-2000:]
    assert result.last_line.startswith("ERROR: ") and "num_labelled" in result.last_line
    assert "2.5" in result.last_line
    assert not list(work.rglob("model.pt"))
    counts["quiet"] += 1


def test_sam_mix_zero_shot_runs_without_labelled_slices(commands, counts, lits, tmp_path, tiny_sam_checkpoint):
    work = tmp_path / "work"
    overrides = mix_overrides(lits, work, tiny_sam_checkpoint, method="zero_shot", num_labelled=0)
    result = commands.run(bundle_argv("training", mix_files("lits"), overrides), tmp_path / "out")
    assert result.rc == 0, result.stderr[-2000:]
    card = torch.load(work / "models" / "model.pt", weights_only=True)["card"]
    assert card["method"] == "zero_shot" and card["num_labelled"] == 0 and card["labelled_slices"] == []
    counts["quiet"] += 1
