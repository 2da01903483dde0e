"""Quiet failures of command-line overrides: a misspelled option, a bad value, a text boolean.

Before ``bundle.overrides`` each of these exited 0 having done something else than asked: ``--max_epoch 2`` trained
the default 50 epochs, ``--roi_sizes`` / ``--sam_model_typ`` were ignored, ``--overwite true`` kept old outputs and
``--overwrite false`` (the text ``"false"``, which Python treats as true) overwrote them. Each runs the real command
and must end with one ``ERROR: --<option>: ...`` line that names the option, before anything is built or written.
"""

from __future__ import annotations

import pytest
from drill_utils import bundle_argv, training_argv
from workflow_utils import REPO

TYPOS = [
    ({"max_epoch": 2}, "ERROR: --max_epoch: no option of that name", "did you mean --max_epochs?"),
    ({"patch_sizes": [16, 16, 8]}, "ERROR: --patch_sizes: no option of that name", "did you mean --patch_size or"),
    ({"sam_model_type": "vit_b"}, "ERROR: --sam_model_type: no option of that name",
     "did you mean --priors#sam_model_type?"),
    ({"max_epochs": 0}, "ERROR: --max_epochs: 0 is out of range: it must be at least 1", ""),
    ({"val_interval": 0}, "ERROR: --val_interval: 0 is out of range: it must be at least 1", ""),
    ({"learning_rate": "fast"}, "ERROR: --learning_rate: 'fast' is not a number", ""),
]


@pytest.mark.parametrize("override, start, hint", TYPOS)
def test_training_refuses_unknown_or_bad_overrides(override, start, hint, pristine, commands, counts, tmp_path):
    work = tmp_path / "work"
    result = commands.run(training_argv(pristine.root, pristine.datalist, work, **override), tmp_path / "out")
    assert result.rc != 0
    assert result.last_line.startswith(start), result.last_line
    assert hint in result.last_line
    assert not (work / "run").exists() and not (work / "models").exists()  # refused before any folder is made
    counts["quiet"] += 1


def _batch(pristine, trained, output, **overrides):
    keys = {"input": str(pristine.datalist), "output": str(output), "model": str(trained / "models"), **overrides}
    return bundle_argv("batch_inferring", [str(REPO / "configs" / "batch_inference.json")], keys, meta=False)


def test_batch_inference_refuses_a_misspelled_flag(pristine, trained, commands, counts, tmp_path):
    output = tmp_path / "predictions"
    result = commands.run(_batch(pristine, trained, output, overwite="true"), tmp_path / "out")
    assert result.rc != 0
    assert result.last_line == ("ERROR: --overwite: no option of that name in batch_inference.json; "
                                "did you mean --overwrite?"), result.last_line
    assert not output.exists()
    counts["quiet"] += 1


def test_overwrite_false_keeps_the_outputs(pristine, trained, commands, counts, tmp_path):
    """python-fire hands ``--overwrite false`` over as the text "false", which Python treats as true."""
    output = tmp_path / "predictions"
    first = commands.run(_batch(pristine, trained, output), tmp_path / "out1")
    assert first.rc == 0, first.stderr[-3000:]
    written = {p: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file() and p.name != "batch_summary.json"}
    assert written
    again = commands.run(_batch(pristine, trained, output, overwrite="false"), tmp_path / "out2")
    assert again.rc == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in written} == written
    counts["quiet"] += 1
