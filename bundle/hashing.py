"""Content hashes, the one home for them: files, DICOM series folders and configuration signatures.

Hashes key everything that is reused across runs: prior-cache entries (input files + generator signature), SAM
checkpoints (recorded next to every prior and model), datalist checks. A hash here never depends on where a file
lives or when it was written, only on its bytes (and, for a folder, on its files' names relative to it).
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import partial
from pathlib import Path
from typing import Any

__all__ = ["file_sha256", "path_sha256", "canonical_json", "json_sha256"]

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike, chunk_size: int = _CHUNK) -> str:
    """sha256 of a file, read in chunks (SAM checkpoints are 0.04 - 2.5 GB, CT volumes hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(partial(f.read, chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def path_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder (a DICOM series): every file below it in name order, with its name."""
    p = Path(path)
    if not p.is_dir():
        return file_sha256(p)
    digest = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        digest.update(str(f.relative_to(p)).encode())
        digest.update(file_sha256(f).encode())
    return digest.hexdigest()


def canonical_json(obj: Any) -> str:
    """Sorted-key, compact JSON of plain data (dict, list, str, int, float, bool, None).

    Raises:
        TypeError: a value is not plain JSON (a tensor, a path, an object). A signature that fell back to ``repr``
            would change with memory addresses or library versions and silently miss (or, worse, hit) the cache.
    """
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"not plain JSON data, cannot be hashed reproducibly: {err}") from err


def json_sha256(obj: Any) -> str:
    """sha256 of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()
