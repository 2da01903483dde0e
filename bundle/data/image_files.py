"""Reading one image file completely, or one line saying why it cannot be read (:func:`check_image_file`).

Its own module so that the header reader (:mod:`bundle.data.headers`, which falls back to a full read) and the case
checks (:mod:`bundle.data.checks`, which import the headers) both use it without importing each other.
"""

from __future__ import annotations

import os
import re

from monai.data import MetaTensor
from monai.transforms import LoadImage

from bundle.errors import InputError, MissingInputError

__all__ = ["check_image_file", "read_failure_reason"]


def read_failure_reason(err: BaseException) -> str:
    """A one-line, user-facing reason for a reader failure (the original stays chained for debugging)."""
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # MONAI's LoadImage concatenates every reader's traceback; the last "XxxError: message" line is the cause
    causes = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    line = causes[-1] if causes else (lines[0] if lines else type(err).__name__)
    lowered = line.lower()
    if isinstance(err, EOFError) or "ended before" in lowered or re.search(r"expected \d+ bytes, got \d+", lowered):
        return f"it is truncated or corrupt ({line})"
    if "not a gzip file" in lowered:
        return "it is not an image: the name ends in .gz but the content is not gzip-compressed"
    if "cannot work out file type" in lowered or "suitable reader" in lowered:
        return f"it is not an image in a format the readers know ({line[:200]})"
    return line[:300]


def check_image_file(path: str | os.PathLike, **load_kwargs) -> MetaTensor:
    """Read an image file completely and return it, or raise an :class:`InputError` saying why it cannot be read.

    The whole voxel array is read because a truncated ``.nii.gz`` has an intact header and fails only on its data.

    Args:
        path: an image file, or a DICOM series folder.
        load_kwargs: passed to :class:`monai.transforms.LoadImage` (``image_only=True`` is always set).

    Returns:
        the loaded ``MetaTensor`` (no channel dimension added unless ``ensure_channel_first=True`` is passed).

    Raises:
        MissingInputError: the file does not exist (an :class:`InputError` and a ``FileNotFoundError``).
        InputError: empty, truncated, or not an image; the original exception is chained.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MissingInputError(path, "cannot be read: the file does not exist")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise InputError(path, "cannot be read: the file is empty (0 bytes)")
    loader = LoadImage(image_only=True, **{k: v for k, v in load_kwargs.items() if k != "image_only"})
    try:
        return loader(path)
    # readers raise EOFError, OSError, zlib.error, ImageFileError, RuntimeError, ...: all mean "unreadable"
    except Exception as err:  # noqa: BLE001 - re-raised with the file named, original chained
        raise InputError(path, f"cannot be read: {read_failure_reason(err)}") from err
