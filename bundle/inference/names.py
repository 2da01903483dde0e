"""Output names of batch inference: safe file-name stems from input file names and DICOM text.

Names come from places a user does not control: file names of a hospital export and DICOM text fields
(``SeriesDescription`` may hold ``../``, slashes, control characters or hundreds of characters). :func:`safe_stem`
keeps letters, digits, ``.``, ``-`` and ``_`` (``_`` for every run of anything else), never starts with a dot and
never contains ``..``, so a name can neither leave the output folder nor hide there. :func:`unique_stems` gives
inputs that share a stem (two series folders both named ``SE1``) distinct names that stay the same on a rerun.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

from bundle.hashing import json_sha256

__all__ = ["MAX_STEM", "safe_stem", "unique_stems"]

MAX_STEM = 96
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_stem(text: object, fallback: str = "input") -> str:
    """A file-name stem made from ``text``: ASCII letters, digits, ``.``, ``-``, ``_``; at most :data:`MAX_STEM`
    characters; no leading dot, no ``..``; ``fallback`` when nothing usable remains."""
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    stem = _UNSAFE.sub("_", ascii_text)
    stem = re.sub(r"\.{2,}", "_", stem)
    stem = re.sub(r"_{2,}", "_", stem).strip("._-")
    stem = stem[:MAX_STEM].rstrip("._-")
    return stem or fallback


def unique_stems(stems: Sequence[str], keys: Sequence[str]) -> list[str]:
    """``stems`` made unique: every stem shared by several inputs gets ``_<8 hex of sha256(key)>`` appended.

    Args:
        stems: safe stems, one per input.
        keys: a stable identity per input (its absolute path, or its SeriesInstanceUID): the suffix depends on it
            only, so an input keeps its name whatever other inputs a rerun lists, as long as the clash remains.
    """
    if len(stems) != len(keys):
        raise ValueError(f"{len(stems)} stems for {len(keys)} keys.")
    counts = Counter(s.lower() for s in stems)  # case-insensitive file systems would merge 'A' and 'a'
    return [f"{s}_{json_sha256(str(k))[:8]}" if counts[s.lower()] > 1 else s for s, k in zip(stems, keys)]
