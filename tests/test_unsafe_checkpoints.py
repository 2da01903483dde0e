"""Checkpoint safety: every file the bundle reads with ``torch.load`` is read with ``weights_only=True``.

A pickle that runs a shell command when unpickled (the classic ``__reduce__`` -> ``os.system``) is written in the
shape of each kind of file the bundle loads; every loader refuses it with a message naming the file, and the command
never runs. A control load without ``weights_only`` shows the file really would run it.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

from bundle.checkpoint_files import CheckpointError, load_checkpoint
from bundle.errors import error_line
from bundle.sam.adapter import read_adapter
from bundle.sam.loading import load_sam
from bundle.workflows.common.checkpoints import load_network_weights
from bundle.workflows.weak.classifier import load_classifier
from bundle.workflows.weak.extractors import NetworkFeatures

REPO = Path(__file__).resolve().parents[1]


class RunsACommand:
    """Unpickling this object runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _hostile(tmp_path: Path, wrap) -> tuple[Path, Path]:
    marker = tmp_path / "the_command_ran"
    path = tmp_path / "model.pt"
    torch.save(wrap(RunsACommand(marker)), path)
    return path, marker


LOADERS = {
    "checkpoint (resume, model weights)": (lambda p: load_checkpoint(p), lambda x: {"network": {"w": x}}),
    "network weights": (lambda p: load_network_weights(torch.nn.Linear(2, 2), p), lambda x: {"weight": x}),
    "SAM checkpoint": (lambda p: load_sam("tiny", checkpoint=p), lambda x: {"image_encoder.x": x}),
    "SAM adapter": (lambda p: read_adapter(p), lambda x: {"format": "bundle-sam-adapter/1", "state": x}),
    "WeakMedSAM classifier": (lambda p: load_classifier(p), lambda x: {"network": x, "card": {}}),
    "feature extractor": (lambda p: NetworkFeatures(torch.nn.Linear(2, 2), p, None, [8, 8]),
                          lambda x: {"state_dict": x}),
}


@pytest.mark.parametrize("kind", list(LOADERS))
def test_code_executing_pickle_is_refused(kind, tmp_path):
    load, wrap = LOADERS[kind]
    path, marker = _hostile(tmp_path, wrap)
    with pytest.raises(Exception) as caught:
        load(path)
    assert not marker.exists(), "the pickle's command ran"
    line = error_line(caught.value)
    assert str(path) in line, line
    assert "weights_only" in line or "unsafe" in line.lower() or "not allowed" in line.lower() \
        or "Unsupported global" in line, line


def test_the_hostile_file_really_runs_a_command_without_weights_only(tmp_path):
    path, marker = _hostile(tmp_path, lambda x: {"network": x})
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_refusal_names_the_global_it_would_call(tmp_path):
    path, _ = _hostile(tmp_path, lambda x: {"network": x})
    with pytest.raises(CheckpointError, match=r"system"):
        load_checkpoint(path)


def _torch_load_calls(source: str):
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            yield node


def test_every_torch_load_of_the_project_passes_weights_only_true():
    files = [p for folder in ("bundle", "apps", "scripts") for p in sorted((REPO / folder).rglob("*.py"))]
    calls = 0
    for path in files:
        for call in _torch_load_calls(path.read_text()):
            calls += 1
            flags = {k.arg: k.value for k in call.keywords}
            assert isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True, \
                f"{path.relative_to(REPO)}:{call.lineno}: torch.load without weights_only=True"
    assert calls >= 3  # the scan finds the loaders it guards
