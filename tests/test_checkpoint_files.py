"""Tests of bundle.checkpoint_files: every kind of damaged checkpoint fails with the file and the problem named."""

from __future__ import annotations

import pickle
import random

import pytest
import torch

from bundle.checkpoint_files import CheckpointError, checkpoint_problem, load_checkpoint
from bundle.errors import MissingInputError, error_line


class NotAWeight:  # a Python object weights_only loading must refuse
    pass


def _good(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "good.pt"
    torch.save(torch.nn.Conv2d(1, 4, 3).state_dict(), path)
    return path


def _bytes_of(tmp_path):
    return _good(tmp_path).read_bytes()


def _write(tmp_path, name, data: bytes):
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x10
    return bytes(out)


def _tensor_offset(data: bytes) -> int:
    """An offset inside the stored tensor bytes (torch.load would read them without noticing a change)."""
    start = data.index(b"good/data/0") + len("good/data/0")
    return start + 80  # past the member's local header and padding, inside the weights


CASES = {
    "empty": (lambda t: _write(t, "empty.pt", b""), "is empty (0 bytes)"),
    "truncated": (lambda t: _write(t, "cut.pt", _bytes_of(t)[:1000]), "is truncated"),
    "random bytes": (
        lambda t: _write(t, "noise.pt", bytes(random.Random(0).randrange(256) for _ in range(3000))),
        "is not a PyTorch checkpoint",
    ),
    "text": (lambda t: _write(t, "notes.pt", b"hello\n"), "is not a PyTorch checkpoint"),
    "bit flip in the weights": (
        lambda t: _write(t, "flip.pt", _flip(_bytes_of(t), _tensor_offset(_bytes_of(t)))),
        "is corrupt: the data of 'good/data/0' fails its CRC32 check",
    ),
    "bit flip in the pickle": (lambda t: _write(t, "flip2.pt", _flip(_bytes_of(t), 100)),
                               "is corrupt: the data of 'good/data.pkl' fails its CRC32 check"),
    "unsafe pickle": (lambda t: torch.save({"a": NotAWeight()}, t / "unsafe.pt") or t / "unsafe.pt",
                      "is refused by safe loading (weights_only=True)"),
    "plain pickle": (lambda t: _write(t, "plain.pt", pickle.dumps({"a": 1})), "is not a PyTorch checkpoint"),
    "folder": (lambda t: (t / "dir.pt").mkdir() or t / "dir.pt", "is a folder"),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_damaged_checkpoint_named(kind, tmp_path):
    make, fragment = CASES[kind]
    path = make(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, what="network weights")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith(f"{path}: network weights "), message
    assert fragment in message, message
    assert "\n" not in message and len(message) < 600
    assert error_line(info.value) == f"ERROR: {message}"


def test_missing_checkpoint(tmp_path):
    with pytest.raises(MissingInputError, match=r"missing\.pt: resume checkpoint not found") as info:
        load_checkpoint(tmp_path / "missing.pt", what="resume checkpoint")
    assert isinstance(info.value, FileNotFoundError)


def test_good_checkpoint_loads(tmp_path):
    path = _good(tmp_path)
    assert checkpoint_problem(path) is None
    state = load_checkpoint(path)
    assert set(state) == {"weight", "bias"}


def test_unsafe_pickle_names_the_class(tmp_path):
    torch.save({"a": NotAWeight()}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="NotAWeight"):
        load_checkpoint(tmp_path / "unsafe.pt")
