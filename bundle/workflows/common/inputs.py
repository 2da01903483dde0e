"""The input files an inference run reads, given as a glob pattern or a list, checked before any work."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from bundle.data.case_check import check_case_files
from bundle.data.case_ids import case_id_from_files
from bundle.errors import MissingInputError

__all__ = ["file_cases"]


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
