"""The files of a prior-cache entry checked against what the entry recorded: size on every read, sha256 once per
process per version of a file (see :mod:`bundle.priors.cache`).

A cached file's sha256 is remembered by ``(path, size, mtime_ns, inode)``: a file cut short, rewritten or copied
over changes one of them and is hashed again, while an unchanged file read every epoch (a training with
``cache_rate`` < 1) is hashed once. Hashing costs about what reading the file does (a few MB per case).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

from bundle.hashing import file_sha256

__all__ = ["CaseStatus", "verify_file", "read_verified", "remember"]

_VERIFIED: dict[tuple, str] = {}
"""sha256 of the cached files this process has hashed, by ``(path, size, mtime_ns, inode)``."""
_VERIFIED_MAX = 200_000
_CHANGED = "does not match the sha256 its cache entry recorded (changed or damaged since it was written)"


def verify_file(path: str | os.PathLike, size: int, sha256: str) -> str | None:
    """``None`` when ``path`` holds the bytes its entry recorded (``size``, ``sha256``), else what is wrong.

    The size is checked on every call; the sha256 once per process per version of the file (see the module
    docstring).

    Raises:
        FileNotFoundError: ``path`` does not exist (a reader may be racing a rewrite: see :meth:`PriorCache.load`).
    """
    stat = os.stat(path)
    if stat.st_size != size:
        return f"has {stat.st_size} bytes but its cache entry recorded {size} (cut short or replaced)"
    key = (os.fspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    digest = _VERIFIED.get(key)
    if digest is None:
        digest = file_sha256(path)
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()
        _VERIFIED[key] = digest
    if digest != sha256:
        return _CHANGED
    return None


def remember(path: Path, sha256: str) -> None:
    """A file this process has just written and hashed needs no second hashing."""
    stat = path.stat()
    _VERIFIED[(os.fspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)] = sha256


def read_verified(path: str | os.PathLike, size: int, sha256: str) -> tuple[bytes, str | None]:
    """``(bytes, problem)``: the file read once, and what is wrong with what was read (``None`` when it has the
    recorded size and sha256). The check and the use are one read, so a writer that removes or replaces the file
    after it was opened cannot change what is used.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        data = f.read()
    if len(data) != size:
        return data, f"has {len(data)} bytes but its cache entry recorded {size} (cut short or replaced)"
    key = (os.fspath(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    digest = _VERIFIED.get(key) or hashlib.sha256(data).hexdigest()
    if digest != sha256:
        return data, _CHANGED
    _VERIFIED[key] = digest
    return data, None


class CaseStatus(NamedTuple):
    """What the cache holds for a case: ``state`` is ``current`` (verified), ``missing`` (no entry), ``stale``
    (another configuration or other input files) or ``bad`` (an unreadable entry, one of an older bundle, or a file
    that is not what the entry recorded); ``path`` and ``problem`` name what is wrong (``None`` when current)."""

    state: str
    path: Path | None = None
    problem: str | None = None

    @property
    def current(self) -> bool:
        return self.state == "current"

    def describe(self) -> str:
        return "current" if self.current else f"{self.path}: {self.problem}"
