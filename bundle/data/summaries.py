"""The record that ties a datalist entry's label summaries to the label file they were computed from.

``scripts/prepare_datalist.py`` stores per case what its label holds (``volume_labels``, ``num_slices``,
``slice_labels``, ``slice_foreground``: :func:`bundle.data.datalist.label_summary`), and WeakMedSAM, SAMAug-C and
SAM-Mix train on those summaries without opening the label. A label edited afterwards (an annotator's fix) would
leave them stale: the case check re-checks the file's values, but nothing would recompute the slice labels. So each
entry also records the label file's identity when its summaries were computed::

    "summarised": {"version": 1, "size": 5123, "mtime_ns": 1700000000000000000, "sha256": "9f2c..."}

and every workflow that reads the summaries calls :func:`check_summaries` before any training: an unchanged size and
modification time cost one ``stat``; otherwise the file's sha256 decides (a copy or a ``touch`` keeps its bytes).
A changed label, or an entry without the record (a datalist written before it existed), is **refused** with one
line naming the file and the command that writes the datalist again, rather than recomputed in memory: the datalist
stays the one description of what a run trains on (its digest is what a resumed run compares, and its summaries are
what the reports and the sub-class file were made from).
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Mapping, Sequence

from bundle.data.case_check import file_stat
from bundle.data.case_ids import case_id_of
from bundle.errors import InputError
from bundle.hashing import path_sha256

__all__ = ["SUMMARY_KEY", "SUMMARY_FIELDS", "SUMMARY_VERSION", "summary_record", "rewrite_command",
           "check_summaries"]

logger = logging.getLogger(__name__)

SUMMARY_KEY = "summarised"
"""Key of the record in a datalist entry."""
SUMMARY_FIELDS = ("volume_labels", "num_slices", "slice_labels", "slice_foreground")
"""The entry fields computed from the label file."""
SUMMARY_VERSION = 1


def summary_record(label_path: str | os.PathLike) -> dict:
    """``{"version", "size", "mtime_ns", "sha256"}`` of a label file (or DICOM folder), taken before it is summarised.

    Taking it before the read errs on the safe side: a file changed in between fails the later check.

    Raises:
        MissingInputError, InputError: no such file, or it cannot be read.
    """
    stat = file_stat(label_path)
    try:
        digest = path_sha256(label_path)
    except OSError as err:
        raise InputError(os.fspath(label_path), f"cannot be read: {err.strerror or err}") from err
    return {"version": SUMMARY_VERSION, **stat, "sha256": digest}


def rewrite_command(datalist: Mapping, path: str | os.PathLike, data_root: str | os.PathLike | None) -> str:
    """The ``prepare_datalist`` command that writes ``datalist`` again with its own dataset, split and seed."""
    fractions = datalist.get("fractions") if isinstance(datalist.get("fractions"), Mapping) else {}
    args = ["python", "scripts/prepare_datalist.py", "--dataset", str(datalist.get("dataset") or "<dataset>"),
            "--root", os.fspath(data_root) if data_root else "<dataset folder>", "--out", os.fspath(path)]
    for option, key in (("--val-fraction", "validation"), ("--test-fraction", "testing")):
        if isinstance(fractions.get(key), (int, float)):
            args += [option, str(fractions[key])]
    if isinstance(datalist.get("seed"), int):
        args += ["--seed", str(datalist["seed"])]
    return " ".join(shlex.quote(a) for a in args)


def _label_path(entry: Mapping, data_root: str | os.PathLike | None) -> str | None:
    label = entry.get("label")
    if not isinstance(label, (str, os.PathLike)) or not os.fspath(label):
        return None
    label = os.fspath(label)
    return os.path.normpath(os.path.join(os.fspath(data_root), label)) if data_root and not os.path.isabs(label) \
        else label


def _case(entry: Mapping) -> str:
    try:
        return case_id_of(entry)
    except (ValueError, TypeError):
        return "<unnamed>"


def check_summaries(
    entries: Sequence[Mapping],
    section: str,
    datalist_path: str | os.PathLike,
    data_root: str | os.PathLike | None,
    datalist: Mapping,
) -> None:
    """Check that every entry's label summaries were computed from its label file as it is now.

    Args:
        entries: the section's entries as the datalist writes them (paths relative to ``data_root``).
        section: their section, for messages.
        datalist_path: the datalist file, for messages.
        data_root: folder the relative paths are relative to.
        datalist: the parsed datalist (its dataset, fractions and seed give the command to write it again).

    Raises:
        InputError: naming the datalist (an entry without the record, or without a label to check it against) or
            the label file changed since its summaries were computed; the message gives the command to run.
        MissingInputError: the label file does not exist.
    """
    path = os.fspath(datalist_path)
    command = rewrite_command(datalist, path, data_root)
    hashed = 0
    for index, entry in enumerate(entries):
        where = f"{section}[{index}] ({_case(entry)})"
        record = entry.get(SUMMARY_KEY)
        if not isinstance(record, Mapping) or record.get("version") != SUMMARY_VERSION:
            raise InputError(path, f"{where}: its slice labels carry no record of the label file they were computed "
                                   f"from (a datalist of an older version); write it again: {command}")
        label = _label_path(entry, data_root)
        if label is None:
            raise InputError(path, f"{where}: no 'label' file to check its slice labels against")
        stat = file_stat(label)
        if all(stat[k] == record.get(k) for k in ("size", "mtime_ns")):
            continue  # the fast path: one stat per case
        hashed += 1
        if path_sha256(label) != record.get("sha256"):
            raise InputError(label, f"changed since {path} summarised it ({where}); its slice labels there are "
                                    f"stale: write the datalist again: {command}")
    if hashed:
        logger.info("%s: %d %s label file(s) have another modification time but the same bytes as when summarised "
                    "(write the datalist again to make this check a stat)", path, hashed, section)
