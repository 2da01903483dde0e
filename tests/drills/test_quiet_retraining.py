"""Quiet retraining: a training run again into a folder that holds another run never exits 0 with the old model.

Each case runs the real ``run training`` command (tiny SAMAug / SAMAug-C settings, fallback priors) into the output
folder of a finished run with one setting changed. Before run settings were recorded, every one of them resumed the
old ``checkpoint_last.pt``, logged ``training is already complete``, trained nothing and exited 0 with the old
``model.pt`` (writing none into a new ``--ckpt_dir``). Now each is refused with one ``ERROR:`` line that names the
checkpoint's folder, the first differing setting (``old -> new``) and ``--resume false``; the same command is a no-op
that says so; ``--resume false`` trains afresh. SAM-Mix (like WeakMedSAM, whose pipeline is tested in
``tests/workflows/weak``) compared a card but then trained afresh and replaced the finished model, exit 0: now it
refuses the same way. ``counts["quiet"]`` counts the quiet failures shown fixed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from drill_utils import bundle_argv, copy_set, training_argv
from workflow_utils import make_phantom_set

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflows" / "semisup"))
from semisup_utils import mix_files, mix_overrides  # noqa: E402  (the SAM-Mix tests' tiny settings)

from bundle.checkpoint_files import load_checkpoint
from bundle.hashing import file_sha256


def _refused(result, *fragments: str) -> None:
    assert result.rc != 0, f"exit 0: {result.stdout[-2000:]}"
    line = result.last_line
    assert line.startswith("ERROR: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in line, (fragment, line)


def _settings(work: Path) -> dict:
    return load_checkpoint(work / "run" / "checkpoint_last.pt", what="resume checkpoint")["info"]["run_settings"]


@pytest.fixture
def finished(pristine, commands, tmp_path):
    """A private copy of the phantom set and a finished one-epoch SAMAug run of it; ``argv(**overrides)``."""
    data = copy_set(pristine, tmp_path / "data")
    work = tmp_path / "work"

    def argv(workflow: str = "samaug", datalist: Path = data.datalist, **overrides):
        return training_argv(data.root, datalist, work, workflow, **overrides)

    result = commands.run(argv(), tmp_path / "log" / "first")
    assert result.rc == 0, result.stderr[-3000:]
    return data, work, argv


def test_samaug_rerun_with_other_settings_is_refused(finished, commands, counts, tmp_path):
    data, work, argv = finished
    model = work / "models" / "model.pt"
    stamp = file_sha256(model)
    folder = str(work / "run")

    # another learning rate into the same folder: refused, naming the setting and how to start afresh
    result = commands.run(argv(learning_rate=0.02), tmp_path / "log" / "lr")
    _refused(result, folder, "learning_rate 0.01 -> 0.02", "--resume false", "--run_name")
    assert file_sha256(model) == stamp
    counts["quiet"] += 1

    # another datalist (one training case fewer): refused naming the datalist
    datalist = json.loads(data.datalist.read_text())
    datalist["training"] = datalist["training"][:1]
    other = data.root / "datalist_one_case.json"
    other.write_text(json.dumps(datalist, indent=1))
    result = commands.run(argv(datalist=other), tmp_path / "log" / "datalist")
    _refused(result, folder, "datalist ")
    counts["quiet"] += 1

    # another SAM prior configuration (the fallback generator's settings): refused naming the prior setting
    result = commands.run(argv(**{"priors#fallback": {"nbins": 16}}), tmp_path / "log" / "prior")
    _refused(result, folder, "prior.")
    counts["quiet"] += 1

    # the same run into a new --ckpt_dir: refused (it would train nothing and write no model there)
    result = commands.run(argv(ckpt_dir=str(work / "other_models")), tmp_path / "log" / "ckpt_dir")
    _refused(result, "ckpt_dir", str(work / "other_models"))
    assert not (work / "other_models" / "model.pt").exists()
    counts["quiet"] += 1

    # the same command: a no-op that says so, exit 0, the model untouched
    result = commands.run(argv(), tmp_path / "log" / "same")
    assert result.rc == 0, result.stderr[-3000:]
    assert "already complete" in result.stdout
    assert "Epoch: 1/1, Iter" not in result.stdout
    assert file_sha256(model) == stamp

    # new weights beside the old card (a kill between the two writes): refused, not "complete" with a model that
    # batch inference would then refuse
    original = model.read_bytes()
    state = torch.load(model, weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, model)
    result = commands.run(argv(), tmp_path / "log" / "unbound")
    _refused(result, "already complete", "model_card.json", "--resume false")
    model.write_bytes(original)
    counts["quiet"] += 1

    # the same command with the model gone: refused naming it, not a silent exit 0 without a model
    model.unlink()
    result = commands.run(argv(), tmp_path / "log" / "no_model")
    _refused(result, str(model), "--resume false")
    counts["quiet"] += 1

    # --resume false: trains afresh with the new settings and replaces the run
    result = commands.run(argv(learning_rate=0.02, resume=False), tmp_path / "log" / "afresh")
    assert result.rc == 0, result.stderr[-3000:]
    assert "resume=false" in result.stdout and "Epoch: 1/1, Iter: 1/" in result.stdout
    assert _settings(work)["learning_rate"] == 0.02
    assert model.is_file()


def test_samaug_c_rerun_with_other_learning_rate_is_refused(pristine, commands, counts, tmp_path):
    data = copy_set(pristine, tmp_path / "data")
    work = tmp_path / "work"

    def argv(**overrides):
        return training_argv(data.root, data.datalist, work, "samaug_c", **overrides)

    result = commands.run(argv(learning_rate=0.0003), tmp_path / "log" / "first")
    assert result.rc == 0, result.stderr[-3000:]
    stamp = file_sha256(work / "models" / "model.pt")

    result = commands.run(argv(learning_rate=0.0006), tmp_path / "log" / "lr")
    _refused(result, str(work / "run"), "learning_rate 0.0003 -> 0.0006", "--resume false")
    assert file_sha256(work / "models" / "model.pt") == stamp
    counts["quiet"] += 1

    result = commands.run(argv(learning_rate=0.0003), tmp_path / "log" / "same")
    assert result.rc == 0 and "already complete" in result.stdout, result.stderr[-3000:]


def test_sam_mix_rerun_with_other_learning_rate_is_refused(commands, counts, tmp_path, tiny_sam_checkpoint):
    data = make_phantom_set("lits", tmp_path / "data")
    work = tmp_path / "work"

    def argv(**overrides):
        return bundle_argv("training", mix_files("lits"), mix_overrides(data, work, tiny_sam_checkpoint, **overrides))

    result = commands.run(argv(), tmp_path / "log" / "first")
    assert result.rc == 0, result.stderr[-3000:]
    model = work / "models" / "model.pt"
    stamp = file_sha256(model)

    result = commands.run(argv(learning_rate=0.0003), tmp_path / "log" / "lr")
    _refused(result, str(model), "training.learning_rate 0.0001 -> 0.0003", "--resume false")
    assert file_sha256(model) == stamp
    counts["quiet"] += 1

    result = commands.run(argv(), tmp_path / "log" / "same")
    assert result.rc == 0 and "reusing it" in result.stdout, result.stderr[-3000:]
    assert file_sha256(model) == stamp
