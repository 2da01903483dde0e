"""The cases an inference run reads (a glob pattern, a list of files, or a datalist section), checked before any
work: the one reader of inference inputs for every task's inference config."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from bundle.data.case_check import check_case_files
from bundle.data.case_ids import case_id_from_files, case_id_of
from bundle.data.datalist_io import load_checked_section
from bundle.errors import MissingInputError

__all__ = ["file_cases", "inference_cases"]


def file_cases(input_files: str | os.PathLike | Sequence[str | Sequence[str]]) -> list[dict]:
    """``[{"case_id", "image"}]`` of a glob pattern (``"/data/ct/*.nii.gz"``) or a list of images, each one file or a
    list of modality files; every case's files go through :func:`bundle.data.case_check.check_case_files` (headers:
    readable, complete, 3D, modalities on one grid) first.

    Raises:
        MissingInputError: the pattern matches nothing, or a listed file does not exist.
        InputError: a file fails the case check.
    """
    pattern = isinstance(input_files, (str, os.PathLike))
    files = sorted(glob.glob(os.fspath(input_files))) if pattern else list(input_files)
    if not files:
        raise MissingInputError(os.fspath(input_files) if pattern else "[]", "the input_files pattern matches no file")
    for f in files:
        check_case_files(f)
    return [{"case_id": case_id_from_files(f), "image": f} for f in files]


def inference_cases(input_files: str | os.PathLike | Sequence[str | Sequence[str]] | None,
                    datalist: str | os.PathLike | None = None, section: str = "testing",
                    data_root: str | os.PathLike | None = None) -> list[dict]:
    """The cases an inference run reads: ``[{"case_id", "image"}, ...]`` of ``input_files`` (:func:`file_cases`), or,
    when that is None or empty, of a datalist section (paths joined to ``data_root``; the label, which inference does
    not read, is not checked).

    Raises:
        ValueError: neither input files nor a datalist with its data root.
        MissingInputError: the pattern matches nothing, the datalist or a listed file does not exist.
        InputError: the datalist cannot be read or a case's files fail the check (the message names the file).
    """
    if input_files:
        return file_cases(input_files)
    if datalist is None or data_root is None:
        raise ValueError("give input_files, or a datalist and its data root.")
    entries = load_checked_section(datalist, section, data_root, required=("image",), label_key=None)
    return [{"case_id": case_id_of(e), "image": e["image"]} for e in entries]
