"""The case check every workflow runs before any expensive work, and the record a datalist keeps of it.

:func:`check_case_files` is the one check of a case's files, called by datalist preparation, by the training,
evaluation and inference configs when they read their cases
(:func:`bundle.workflows.segmentation.workflow.load_datalist`,
:func:`bundle.workflows.common.inputs.inference_cases`) and by prior precompute, before any SAM or network runs:

- every file exists, is readable and complete (header read; file size or gzip trailer, see
  :mod:`bundle.data.headers`), 3D, with the declared number of channels (a 4D file only where declared);
- images and label share one grid: shape, and affine within ``affine_atol`` (the numbers are in the message);
- the label's values are in the dataset's label set (this reads the label's voxels: labels are small).

What needs every image voxel (finite values in every channel) is checked where the voxels are loaded anyway:
:class:`bundle.data.checks.LoadCheckedImaged`.

The check returns a **record** that datalist preparation stores in each entry under ``"checked"``::

    "checked": {"version": 1, "image_channels": 4, "affine_atol": 0.001, "label_values": [0, 1, 2, 4],
                "files": {"x/x_flair.nii.gz": {"size": 1234, "mtime_ns": 1700000000000000000,
                                               "verified": ["header", "grid"]}, ...,
                          "x/x_seg.nii.gz": {..., "verified": ["header", "grid", "label_values"]}}}

Given that record back, the check trusts every file whose size and modification time are unchanged and re-checks
the rest (the header checks of the whole case when any file changed; the label values when the label changed or
the label set grew stricter), so a workflow start costs one ``stat`` per file for an untouched dataset.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISDIR
from typing import Any

import numpy as np
from monai.data import MetaTensor

from bundle.data.checks import channels_per_file, check_case_headers, check_image_file, check_label
from bundle.data.headers import ImageHeader, read_header
from bundle.errors import InputError, MissingInputError

__all__ = ["RECORD_KEY", "RECORD_VERSION", "CaseCheck", "file_stat", "check_case_files", "check_entry"]

RECORD_KEY = "checked"
RECORD_VERSION = 1
_HEADER = ["header", "grid"]
_VALUES = "label_values"


@dataclass
class CaseCheck:
    """What :func:`check_case_files` found.

    Attributes:
        record: what was verified, per file (store it in the datalist entry under :data:`RECORD_KEY`).
        label: the label volume as read (native dtype, no channel axis) when this check read its voxels, else None;
            datalist preparation summarises it instead of reading the file again.
        read: the files whose headers or voxels were read this time (empty when the record vouched for all).
    """

    record: dict
    label: MetaTensor | None = None
    read: tuple[str, ...] = ()


def file_stat(path: str | os.PathLike) -> dict:
    """``{"size", "mtime_ns"}`` of a file, or of a folder (a DICOM series: total size, newest modification).

    Raises:
        MissingInputError: nothing at ``path``.
    """
    try:
        stat = os.stat(path)
    except FileNotFoundError as err:
        raise MissingInputError(os.fspath(path), "cannot be read: the file does not exist") from err
    except OSError as err:
        raise InputError(os.fspath(path), f"cannot be read: {err.strerror or err}") from err
    if not S_ISDIR(stat.st_mode):
        return {"size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}
    # a file rewritten in place changes its own mtime, not the folder's: take the newest of all
    stats = [f.stat() for f in Path(path).rglob("*") if f.is_file()]
    return {"size": int(sum(s.st_size for s in stats)),
            "mtime_ns": int(max([stat.st_mtime_ns, *(s.st_mtime_ns for s in stats)]))}


def _as_list(images: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(images, (str, os.PathLike)):
        return [os.fspath(images)]
    return [os.fspath(p) for p in images]


def _resolve(key: str, data_root: str | os.PathLike | None) -> str:
    return os.path.normpath(os.path.join(os.fspath(data_root), key)) if data_root and not os.path.isabs(key) else key


def _usable(record: Any, image_channels: int | None, affine_atol: float) -> dict | None:
    """The previous record when it was made by this version of the check with the same settings."""
    if not isinstance(record, Mapping) or record.get("version") != RECORD_VERSION:
        return None
    if record.get("image_channels") != image_channels or record.get("affine_atol") != affine_atol:
        return None
    return record if isinstance(record.get("files"), Mapping) else None


def _unchanged(record: Mapping | None, key: str, stat: Mapping, needs: Sequence[str]) -> bool:
    previous = (record or {}).get("files", {}).get(key)
    if not isinstance(previous, Mapping):
        return False
    same = all(previous.get(k) == stat[k] for k in ("size", "mtime_ns"))
    return same and set(needs) <= set(previous.get("verified", []))


def _header_of(image: MetaTensor, path: str) -> ImageHeader:
    """The header of a file read by ``LoadImage`` (no channel axis added), from its metadata."""
    spatial = tuple(int(v) for v in np.asarray(image.meta.get("spatial_shape", image.shape[:3])).ravel())
    return ImageHeader(path, tuple(int(v) for v in image.shape), spatial, np.asarray(image.affine, np.float64))


def check_case_files(
    images: str | os.PathLike | Sequence[str | os.PathLike],
    label: str | os.PathLike | None = None,
    *,
    label_values: Sequence[int] | None = None,
    image_channels: int | None = None,
    affine_atol: float = 1e-3,
    record: Mapping | None = None,
    data_root: str | os.PathLike | None = None,
) -> CaseCheck:
    """Check one case's files before any work on it; trust what ``record`` vouches for (see the module docstring).

    Args:
        images: the case's image file(s) in modality order (or a DICOM series folder), as the datalist writes
            them (relative to ``data_root``, or absolute).
        label: its label file, or None (inference).
        label_values: the dataset's label set (the datalist's ``labels`` table); None skips the value check.
        image_channels: channels of the whole image (``len(modalities)``): one per file for a list of modality
            files, all of them in a single 4D file (MSD); None accepts any number per file.
        affine_atol: largest absolute difference between affine entries (mm) still counted as the same grid.
        record: the entry's previous record (``entry["checked"]``), or None to check everything.
        data_root: folder relative paths are relative to.

    Returns:
        :class:`CaseCheck` with the new record (keyed by the paths exactly as given).

    Raises:
        MissingInputError: a file does not exist.
        InputError: unreadable, truncated, not 3D, wrong channel count, images and label on different grids, label
            not integer or with values outside ``label_values``; the message starts with the file at fault.
    """
    image_keys = _as_list(images)
    if not image_keys:
        raise ValueError("check_case_files needs at least one image file.")
    label_key = os.fspath(label) if label is not None else None
    keys = image_keys + ([label_key] if label_key is not None else [])
    paths = {k: _resolve(k, data_root) for k in keys}
    stats = {k: file_stat(paths[k]) for k in keys}
    previous = _usable(record, image_channels, affine_atol)
    wanted = None if label_values is None else sorted(int(v) for v in label_values)
    checked_values = (previous or {}).get("label_values")
    read: list[str] = []

    # the label values: read the label's voxels unless the record vouches for them (labels are small)
    label_voxels = None
    values_verified = False
    if label_key is not None and wanted is not None:
        trusted = (
            _unchanged(previous, label_key, stats[label_key], [_VALUES])
            and isinstance(checked_values, list)
            and set(checked_values) <= set(wanted)
        )
        if not trusted:
            label_voxels = check_image_file(paths[label_key], dtype=None)  # native dtype: a uint8 label stays 1 byte
            check_label(label_voxels, wanted)
            checked_values = wanted
            read.append(paths[label_key])
        values_verified = True
    elif label_key is not None and _unchanged(previous, label_key, stats[label_key], [_VALUES]):
        values_verified = True  # no label set asked for now: carry the earlier verification forward
    else:
        checked_values = None

    # the headers and the grid, unless every file is unchanged since the record
    if not all(_unchanged(previous, k, stats[k], _HEADER) for k in keys):
        headers = [read_header(paths[k]) for k in image_keys]
        label_header = None
        if label_key is not None:  # the voxels just read carry the header already
            label_header = _header_of(label_voxels, paths[label_key]) if label_voxels is not None else read_header(
                paths[label_key])
        per_file = channels_per_file([paths[k] for k in image_keys], image_channels)
        check_case_headers(headers, label_header, per_file, affine_atol)
        read = [paths[k] for k in keys]

    files = {k: {**stats[k], "verified": list(_HEADER)} for k in keys}
    if label is not None and values_verified:
        files[keys[-1]]["verified"].append(_VALUES)
    new_record = {
        "version": RECORD_VERSION,
        "image_channels": image_channels,
        "affine_atol": affine_atol,
        "label_values": checked_values if values_verified else None,
        "files": files,
    }
    return CaseCheck(new_record, label_voxels, tuple(read))


def check_entry(
    entry: Mapping,
    data_root: str | os.PathLike | None = None,
    *,
    label_values: Sequence[int] | None = None,
    image_channels: int | None = None,
    affine_atol: float = 1e-3,
    image_key: str = "image",
    label_key: str = "label",
) -> CaseCheck:
    """:func:`check_case_files` for a datalist entry (paths as the datalist writes them), trusting its record.

    Args:
        entry: ``{"image": ..., "label": ... (optional), "checked": ... (optional)}``.
        data_root: folder the entry's relative paths are relative to.
        label_values: the dataset's label set; None skips the value check.
        image_channels: channels of the whole image; None accepts any number per file.
        affine_atol: affine tolerance in mm.
        image_key: key of the image file(s).
        label_key: key of the label file (a missing key or None: no label).

    Returns:
        the :class:`CaseCheck` (its record can replace ``entry["checked"]``).

    Raises:
        KeyError: the entry has no ``image_key`` (:mod:`bundle.data.datalist_io` names the case and the datalist).
        MissingInputError, InputError: as :func:`check_case_files`.
    """
    return check_case_files(
        entry[image_key],
        entry.get(label_key),
        label_values=label_values,
        image_channels=image_channels,
        affine_atol=affine_atol,
        record=entry.get(RECORD_KEY),
        data_root=data_root,
    )
