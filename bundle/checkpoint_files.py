"""Reading PyTorch checkpoint files with errors that name the file and say what is wrong with it.

``torch.load`` reports a damaged file as ``PytorchStreamReader failed reading zip archive``, ``EOFError`` or
``invalid load key`` without naming it, and loads a file whose tensor bytes were flipped without a word (it does not
check the zip's CRC32). :func:`load_checkpoint` tells the cases apart before and after ``torch.load``:

- missing, a folder, unreadable, empty;
- truncated (a zip archive whose end is missing);
- corrupt (a member fails its CRC32 check: a bit flip or a bad copy);
- not a checkpoint (neither PyTorch's zip format nor its legacy pickle format: a text file, random bytes);
- an unsafe pickle refused by ``weights_only=True`` (the file holds Python objects, not only tensors and plain data).

Everything is read with ``weights_only=True`` and an explicit ``map_location``: a checkpoint never runs code.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Any

import torch

from bundle.errors import InputError, MissingInputError

__all__ = ["CheckpointError", "checkpoint_problem", "load_checkpoint", "load_problem"]

# the legacy (pre-1.6) torch.save format starts with the pickled magic number 0x1950a86a20f9469cfc6c
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(InputError):
    """A checkpoint file cannot be used: ``<path>: <problem>`` (also a ``ValueError``)."""


def _zip_problem(path: str) -> str | None:
    """Why a zip-format checkpoint is damaged (truncated or failing a CRC32 check), or None when it is whole."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member and checks its CRC32
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        return f"is truncated or corrupt: its zip archive cannot be read ({err})"
    if bad is not None:
        return f"is corrupt: the data of {bad!r} fails its CRC32 check (a flipped bit or a damaged copy)"
    return None


def checkpoint_problem(path: str | os.PathLike, verify_crc: bool = True) -> str | None:
    """What is wrong with a checkpoint file, judged from its bytes alone (None when nothing is found).

    Args:
        path: the file.
        verify_crc: read a zip-format file completely and check every member's CRC32 (costs one read of the file).

    Raises:
        MissingInputError: the file does not exist.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingInputError(path, "does not exist")
    if os.path.isdir(path):
        return "is a folder, not a checkpoint file"
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_MAGIC))
    except OSError as err:
        return f"cannot be read: {err.strerror or err}"
    if size == 0:
        return "is empty (0 bytes): the write that made it did not finish"
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return f"is truncated: the zip archive's directory at its end is missing ({size} bytes)"
        return _zip_problem(path) if verify_crc else None
    if head.startswith(_LEGACY_MAGIC):
        return None  # the legacy format has no checksums: only torch.load can judge it
    return f"is not a PyTorch checkpoint: it starts with {head[:8]!r}, neither a zip archive nor a legacy torch file"


def load_problem(err: BaseException) -> str:
    """What an exception of ``torch.load`` says about the file, as ``is ...`` / ``cannot ...`` (after its name)."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text:
        called = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
        other = re.search(r"Unsupported operand \d+|Unsupported class [\w.]+", text)
        what = f" (it asks for the Python global {called.group(1)})" if called else f" ({other.group(0)})" if other else ""
        return (
            f"is refused by safe loading (weights_only=True): it holds Python objects, not only tensors{what}. "
            "Re-save it as a state_dict (torch.save(model.state_dict(), path)) from code you trust"
        )
    if isinstance(err, EOFError) or "PytorchStreamReader" in text:
        return f"is truncated or corrupt ({type(err).__name__}: {text.splitlines()[0][:160] if text else 'no data'})"
    first = text.splitlines()[0][:200] if text else ""
    return f"cannot be read as a checkpoint ({type(err).__name__}: {first})"


def load_checkpoint(
    path: str | os.PathLike, map_location: Any = "cpu", what: str = "checkpoint", verify_crc: bool = True
) -> Any:
    """``torch.load(path, map_location, weights_only=True)`` with one clear error per kind of damage.

    Args:
        path: the checkpoint file.
        map_location: ``torch.load`` map_location.
        what: how the error calls the file (``"network weights"``, ``"resume checkpoint"``).
        verify_crc: check every member's CRC32 first (finds flipped bits ``torch.load`` would load silently).

    Returns:
        what ``torch.load`` returns.

    Raises:
        MissingInputError: no file at ``path``.
        CheckpointError: empty, truncated, corrupt, not a checkpoint, refused by ``weights_only``; the original
            exception is chained.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingInputError(path, f"{what} not found: the file does not exist")
    problem = checkpoint_problem(path, verify_crc=verify_crc)
    if problem is not None:
        raise CheckpointError(path, f"{what} {problem}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    # torch.load raises UnpicklingError, EOFError, RuntimeError, KeyError, UnicodeDecodeError, ... for damaged or
    # foreign files: each is re-raised once, naming the file, with the original chained
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(path, f"{what} {load_problem(err)}") from err
