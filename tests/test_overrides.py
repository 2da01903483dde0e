"""Command-line overrides are checked against the merged configs (bundle/overrides.py)."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bundle.overrides import OverrideError, check_command_line, check_overrides, parse_command_line

REPO = Path(__file__).resolve().parents[1]
SEG = [str(REPO / "configs" / f) for f in ("sam_priors.json", "train_samaug_seg.json")]
SAM_MIX = [str(REPO / "configs" / f) for f in ("sam_priors.json", "train_sam_mix.json", "presets/lits.json")]
BATCH = [str(REPO / "configs" / "batch_inference.json")]
CHECK = "$bundle.check_command_line()"

REFUSED = [
    (SEG, {"max_epoch": 2}, "--max_epoch: no option of that name in sam_priors.json, train_samaug_seg.json; "
                            "did you mean --max_epochs?"),
    (SEG, {"sam_model_type": "vit_b"}, "did you mean --priors#sam_model_type?"),
    (SEG, {"roi_sizes": [32, 32]}, "--roi_sizes: no option of that name"),
    (SEG, {"network_def#channelz": [8]}, None),  # a new argument of a component: the constructor checks it
    (SEG, {"validate#evaluatr#device": "cpu"}, "--validate#evaluatr#device: no option of that name"),
    (BATCH, {"overwite": True}, "did you mean --overwrite?"),
    (SEG, {"max_epochs": 0}, "--max_epochs: 0 is out of range: it must be at least 1"),
    (SEG, {"max_epochs": 2.5}, "--max_epochs: 2.5 is not a whole number (the default is 50)"),
    (SEG, {"val_interval": 0}, "--val_interval: 0 is out of range"),
    (SEG, {"cache_rate": 1.5}, "--cache_rate: 1.5 is out of range: it must be between 0 and 1"),
    (SEG, {"learning_rate": "fast"}, "--learning_rate: 'fast' is not a number"),
    (SEG, {"patch_size": 32}, "--patch_size: 32 is not a list"),
    (SAM_MIX, {"num_labelled": 2.5}, "--num_labelled: 2.5 is not a whole number"),
    (SAM_MIX, {"num_labelled": -1}, "--num_labelled: -1 is out of range: it must be 0 or more"),
    (BATCH, {"overwrite": "maybe"}, "--overwrite: 'maybe' is not true or false"),
]


@pytest.mark.parametrize("files, overrides, message", REFUSED)
def test_refused_or_allowed(files, overrides, message):
    if message is None:
        assert check_overrides(files, overrides) == {}
        return
    with pytest.raises(OverrideError, match=re.escape(message)):
        check_overrides(files, overrides)


ALLOWED = [
    (SEG, {"max_epochs": 2, "learning_rate": 1e-3, "patch_size": [32, 32, 16], "network_def#channels": [8, 16]}, {}),
    (SEG, {"learning_rate": "$1e-3 * 2", "prior_mode": "none", "config_file": SEG, "meta_file": "x"}, {}),
    (SEG, {"amp": "false"}, {"amp": False}),  # computed by the config: "false" would be a true-valued text
    (BATCH, {"overwrite": "true", "dicom_seg": "no"}, {"overwrite": True, "dicom_seg": False}),
    (BATCH, {"overwrite": True}, {}),
]


@pytest.mark.parametrize("files, overrides, normalised", ALLOWED)
def test_allowed(files, overrides, normalised):
    assert check_overrides(files, overrides) == normalised


def test_parse_command_line_reads_as_fire_does():
    run_id, flags = parse_command_line(["training", "--config_file", "['a.json', 'b.json']", "--max_epochs", "2",
                                        "--lr=0.5", "--name", "x", "--flag"])
    assert run_id == "training"
    assert flags == {"config_file": ["a.json", "b.json"], "max_epochs": 2, "lr": 0.5, "name": "x", "flag": True}


def test_other_programs_are_not_checked():
    # pytest's own command line, another bundle subcommand, or a workflow built in Python: nothing refused ...
    words = ["--config_file", json.dumps(SEG), "--max_epoch", "2"]
    check_command_line(["pytest", "-q", *words])
    check_command_line(["/x/monai/bundle/__main__.py", "verify_metadata", *words])
    # ... while the same words after `run` are
    with pytest.raises(OverrideError, match="--max_epoch: no option of that name"):
        check_command_line(["/x/monai/bundle/__main__.py", "run", "training", *words])


def _run(config: Path, *words: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config),
                           "--meta_file", str(REPO / "configs" / "metadata.json"), *words],
                          capture_output=True, text=True, timeout=120, cwd=config.parent)


def test_real_runner_normalises_booleans_and_refuses_typos(tmp_path):
    """Through ``python -m monai.bundle run``: the parser the run uses holds the booleans, a typo stops the run."""
    config = tmp_path / "c.json"
    config.write_text(json.dumps({
        "imports": ["$import bundle"], "flag": False, "computed": "$1 > 2", "count": 3,
        "initialize": [CHECK], "run": ["$print('VALUES', repr(@flag), repr(@computed), repr(@count))"]}))
    done = _run(config, "--flag", "false", "--computed", "true", "--count", "4")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "VALUES False True 4" in done.stdout
    refused = _run(config, "--flagg", "1")
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1] == "ERROR: --flagg: no option of that name in c.json; did you " \
                                                      "mean --flag?"
    assert "VALUES" not in refused.stdout


def _documented_config_lists() -> list[list[str]]:
    """Every ``--config_file "[...]"`` / ``--config_file configs/x.json`` of the README, docs and scripts."""
    lists = []
    texts = [p.read_text() for p in [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "scripts").glob("*.sh")]]
    for text in texts:
        for match in re.finditer(r"--config_file\s+(\"\[[^\]]*\]\"|configs/\S+\.json)", text):
            word = match.group(1).strip('"')
            files = ast.literal_eval(word) if word.startswith("[") else [word]
            if all((REPO / f).is_file() for f in files):
                lists.append(files)
    return lists


def test_every_documented_command_checks_its_overrides():
    """Whatever files a documented command merges, the ``initialize`` that runs starts with the check."""
    from monai.bundle import ConfigParser

    lists = _documented_config_lists()
    assert len(lists) >= 10
    for files in lists:
        parser = ConfigParser()
        parser.read_config([str(REPO / f) for f in files])
        assert parser.get("initialize", [None])[0] == CHECK, files
    for path in (REPO / "configs").glob("*.json"):
        init = json.loads(path.read_text()).get("initialize")
        assert init is None or init[0] == CHECK, path.name
