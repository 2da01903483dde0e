"""Case ids, the one home for them: what a case is called in datalists, cache folders, reports and outputs.

A datalist entry names its case (``case_id``, written by :mod:`bundle.data.datalist`); everything without one (a
list of input files, a loaded ``MetaTensor``) is named from its source files:

- one file: its name without image extensions (``/data/LiTS/volume-12.nii`` -> ``volume-12``);
- a folder (a DICOM series): the folder's name;
- several files of one case (modalities): the common start of their names without trailing separators
  (``x/BraTS2021_00001_flair.nii.gz`` + ``..._t1.nii.gz`` -> ``BraTS2021_00001``), or, when the names share no
  start (``flair.nii.gz``, ``t1.nii.gz``), the folder holding the first.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

__all__ = ["IMAGE_SUFFIXES", "SOURCE_FILES_KEY", "strip_image_suffix", "case_id_from_files", "source_files_of",
           "case_id_of", "case_id_problem"]

#: longest first: ``.nii.gz`` must win over ``.gz``
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".npy", ".npz", ".dcm", ".gz")

SOURCE_FILES_KEY = "source_filenames"
"""Meta key where :class:`bundle.data.checks.LoadCheckedImaged` records every file of a key that stacked several
(newline-joined): MONAI keeps only the first in ``filename_or_obj``."""

_SEPARATORS = "_-. "


def strip_image_suffix(name: str) -> str:
    """``volume-12.nii.gz`` -> ``volume-12`` (case-insensitive; names without a known suffix are kept)."""
    suffix = next((x for x in IMAGE_SUFFIXES if name.lower().endswith(x)), "")
    return name[: -len(suffix)] if suffix and len(name) > len(suffix) else name


def _basename(path: str | os.PathLike) -> str:
    return os.path.basename(os.path.normpath(os.fspath(path)))


def case_id_from_files(files: str | os.PathLike | Sequence[str | os.PathLike]) -> str:
    """The case id of one image file, a series folder, or the files of one multi-modal case (see module docstring)."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    files = [os.fspath(f) for f in files]
    if not files:
        raise ValueError("cannot name a case from an empty list of files")
    stems = [strip_image_suffix(_basename(f)) for f in files]
    if len(stems) == 1:
        return stems[0]
    prefix = os.path.commonprefix(stems)
    if any(len(s) > len(prefix) and s[len(prefix)] not in _SEPARATORS for s in stems):
        # the names part inside a word (``..._t2f`` / ``..._t1n``): the case is named up to the last separator
        prefix = prefix[: max(prefix.rfind(c) for c in _SEPARATORS) + 1]
    prefix = prefix.rstrip(_SEPARATORS)
    return prefix or _basename(os.path.dirname(os.path.abspath(files[0])))


def source_files_of(image) -> list[str]:
    """The files an image was loaded from (all modalities of a stacked image), from its MONAI metadata."""
    meta = getattr(image, "meta", None) or {}
    joined = meta.get(SOURCE_FILES_KEY)
    if joined:
        return [s for s in str(joined).split("\n") if s]
    name = meta.get("filename_or_obj")
    if isinstance(name, (list, tuple)):
        return [str(n) for n in name if n]
    return [str(name)] if name else []


def case_id_problem(value: object) -> str | None:
    """Why a datalist's ``case_id`` cannot name a case (a prior-cache folder, output files), or None when it can.

    A case id is a plain name: no path separator or ``..`` (it would name a folder outside the cache partition),
    no white space or control characters (it would not survive shell commands and reports unchanged).
    """
    if not isinstance(value, str) or not value.strip():
        return f"case id {value!r} is not a name (a non-empty string is needed)"
    if value in (".", "..") or "/" in value or "\\" in value:
        return f"case id {value!r} is not a plain name: it holds a path separator or '..'"
    if any(c.isspace() or not c.isprintable() for c in value):
        return f"case id {value!r} holds white space or control characters; use letters, digits, '_', '-' and '.'"
    return None


def case_id_of(data: Mapping, image_key: str = "image", case_id_key: str = "case_id") -> str:
    """Case id of a data dictionary: its ``case_id`` (basename: MONAI may have joined it to the data root) or, without
    one, the id of the files its image was loaded from (or names, for an entry not loaded yet).

    Raises:
        ValueError: neither a case id nor a source file name is available.
    """
    value = data.get(case_id_key)
    if value:
        return _basename(str(value))
    image = data.get(image_key)
    if isinstance(image, (str, os.PathLike)):
        files = [image]
    elif isinstance(image, (list, tuple)):
        files = list(image)
    else:
        files = source_files_of(image)
    if not files:
        raise ValueError(f"cannot name the case of '{image_key}': no '{case_id_key}' and no source file name")
    return case_id_from_files(files)
