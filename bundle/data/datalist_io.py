"""Reading datalists for the workflows: one clear error per fault, and the case check before any work.

``monai.data.load_decathlon_datalist`` fails on a truncated file with a bare ``JSONDecodeError`` and on an entry
without ``label`` with a ``KeyError: 'label'``, naming neither file nor case. Here every fault names the datalist
and, where it is one case's, the section and index (``training[3]``) and the case id:

- :func:`read_datalist`: missing, unreadable, truncated or not a JSON object;
- :func:`section_entries`: a missing, empty or malformed section, an entry without a required key;
- :func:`check_case_ids`: two different cases under one id (they would share a prior-cache slot and an output
  name);
- :func:`load_checked_section`: all of that, then :func:`bundle.data.case_check.check_entry` on every case of the
  section (cheap for files unchanged since the datalist recorded its checks), for the workflows that train on the
  label summaries :func:`bundle.data.summaries.check_summaries` (each label unchanged since it was summarised), then
  paths joined to the data root.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bundle.data.case_check import RECORD_KEY, check_entry
from bundle.data.case_ids import case_id_of, case_id_problem
from bundle.data.summaries import check_summaries
from bundle.errors import InputError, MissingInputError

__all__ = [
    "SECTIONS",
    "read_datalist",
    "datalist_label_values",
    "datalist_image_channels",
    "section_entries",
    "check_case_ids",
    "join_paths",
    "load_checked_section",
]

logger = logging.getLogger(__name__)

SECTIONS = ("training", "validation", "testing")
_PATH_KEYS = ("image", "label")


def read_datalist(path: str | os.PathLike) -> dict:
    """Read a datalist JSON file.

    Raises:
        MissingInputError: no file (the message says how to make one).
        InputError: unreadable, not valid JSON (e.g. truncated by an interrupted copy), or not a JSON object.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingInputError(
            os.path.abspath(path),
            "datalist not found; make it with scripts/prepare_datalist.py (and the data with scripts/make_phantoms.py "
            "for a trial run)",
        )
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(path, f"datalist cannot be read: {getattr(err, 'strerror', None) or err}") from err
    if not text.strip():
        raise InputError(path, "datalist is empty (0 bytes of JSON); write it again with scripts/prepare_datalist.py")
    try:
        datalist = json.loads(text)
    except json.JSONDecodeError as err:
        cut = " (the file ends there: it is truncated)" if err.pos >= len(text.rstrip()) else ""
        raise InputError(
            path,
            f"datalist is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}{cut}; write it again "
            "with scripts/prepare_datalist.py",
        ) from err
    if not isinstance(datalist, dict):
        raise InputError(
            path, f"is not a datalist: expected a JSON object with {list(SECTIONS)} lists, got a {type(datalist).__name__}"
        )
    return datalist


def datalist_label_values(datalist: Mapping | str | os.PathLike) -> list[int] | None:
    """The dataset's label set from a datalist's ``labels`` table (``{"0": "background", ...}``), or None without one.

    Raises:
        InputError: the table has keys that are not integers (or the datalist cannot be read).
    """
    where = "<datalist>" if isinstance(datalist, Mapping) else os.fspath(datalist)
    data = datalist if isinstance(datalist, Mapping) else read_datalist(datalist)
    table = data.get("labels")
    if not isinstance(table, Mapping) or not table:
        return None
    try:
        return sorted(int(k) for k in table)
    except (TypeError, ValueError) as err:
        raise InputError(where, f"datalist 'labels' must map label values to names, got keys {list(table)}") from err


def datalist_image_channels(datalist: Mapping) -> int | None:
    """Channels of every case's image from the datalist's ``modalities`` list, or None without one."""
    modalities = datalist.get("modalities")
    return len(modalities) if isinstance(modalities, (list, tuple)) and modalities else None


def _describe(entry: Mapping, image_key: str) -> str:
    try:
        return f" ({case_id_of(entry, image_key)})"
    except (ValueError, TypeError):
        return ""


def section_entries(
    datalist: Mapping, section: str, path: str | os.PathLike, required: Sequence[str] = _PATH_KEYS
) -> list[dict]:
    """The entries of one section, each checked to be an object holding the ``required`` keys.

    Args:
        datalist: the parsed datalist.
        section: ``training``, ``validation`` or ``testing`` (any key holding a list of cases).
        path: the datalist file, for the messages.
        required: keys every entry must have (non-empty).

    Raises:
        InputError: no such section, not a list, empty, or an entry is malformed: ``<datalist>: training[3]
            (BraTS2021_00012): missing key 'label' (it has case_id, image)``.
    """
    path = os.fspath(path)
    if section not in datalist:
        present = [k for k, v in datalist.items() if isinstance(v, list)]
        raise InputError(path, f"datalist has no section {section!r} (its sections: {present})")
    entries = datalist[section]
    if not isinstance(entries, list):
        raise InputError(path, f"datalist section {section!r} is not a list of cases (a {type(entries).__name__})")
    if not entries:
        raise InputError(path, f"datalist section {section!r} is empty")
    out = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InputError(path, f"{section}[{index}] is not a case object but a {type(entry).__name__}: {entry!r:.80}")
        missing = [k for k in required if entry.get(k) in (None, "", [])]
        if missing:
            what = "key" if len(missing) == 1 else "keys"
            names = ", ".join(repr(k) for k in missing)
            has = ", ".join(sorted(entry)) or "nothing"
            who = _describe(entry, "image")
            raise InputError(path, f"{section}[{index}]{who}: missing {what} {names} (it has {has})")
        out.append(entry)
    return out


def _files_of(entry: Mapping, image_key: str) -> tuple[str, ...]:
    image = entry.get(image_key)
    files = [image] if isinstance(image, (str, os.PathLike)) else list(image or [])
    return tuple(os.path.normpath(os.fspath(f)) for f in files)


def check_case_ids(
    sections: Mapping[str, Iterable[Mapping]], path: str | os.PathLike, image_key: str = "image"
) -> dict[str, tuple[str, ...]]:
    """Raise when an entry's ``case_id`` is not a plain name (:func:`case_id_problem`: ``../x``, ``a b``) or two entries
    with different image files share a case id (derived from the files without one).

    The same case listed twice (same files) is allowed: repeating a case is a way to oversample it.

    Args:
        sections: ``{section name: entries}``.
        path: the datalist file, for the message.
        image_key: key of the image file(s).

    Returns:
        ``{case id: image files}``.

    Raises:
        InputError: naming the entry whose case id is not a plain name, or listing every colliding id with the
            places that use it.
    """
    seen: dict[str, tuple[tuple[str, ...], str]] = {}
    clashes: dict[str, list[str]] = {}
    for name, entries in sections.items():
        for index, entry in enumerate(entries):
            problem = case_id_problem(entry["case_id"]) if entry.get("case_id") not in (None, "") else None
            if problem:
                raise InputError(os.fspath(path), f"{name}[{index}]: {problem}")
            case_id = case_id_of(entry, image_key)
            files = _files_of(entry, image_key)
            where = f"{name}[{index}]"
            if case_id not in seen:
                seen[case_id] = (files, where)
            elif seen[case_id][0] != files:
                clashes.setdefault(case_id, [f"{seen[case_id][1]} ({seen[case_id][0][0]})"]).append(
                    f"{where} ({files[0] if files else '?'})"
                )
    if clashes:
        listed = "; ".join(f"{cid!r} names {' and '.join(places)}" for cid, places in sorted(clashes.items()))
        raise InputError(
            os.fspath(path),
            f"{len(clashes)} case id(s) name different cases: {listed}. Cases sharing an id would share one "
            "prior-cache slot and one output name; give each a distinct 'case_id'",
        )
    return {cid: files for cid, (files, _) in seen.items()}


def join_paths(entry: Mapping, data_root: str | os.PathLike | None, keys: Sequence[str] = _PATH_KEYS) -> dict:
    """A copy of ``entry`` with the relative paths of ``keys`` (a string or a list of strings) joined to the root."""
    out = dict(entry)
    if not data_root:
        return out
    root = os.fspath(data_root)

    def join(p: Any) -> Any:
        if isinstance(p, str) and not os.path.isabs(p):
            return os.path.normpath(os.path.join(root, p))
        return p

    for key in keys:
        value = out.get(key)
        out[key] = [join(v) for v in value] if isinstance(value, list) else join(value)
    return out


def load_checked_section(
    datalist: str | os.PathLike,
    section: str,
    data_root: str | os.PathLike | None,
    *,
    required: Sequence[str] = _PATH_KEYS,
    label_values: Sequence[int] | None | str = "datalist",
    image_channels: int | None | str = "datalist",
    affine_atol: float = 1e-3,
    image_key: str = "image",
    label_key: str = "label",
    summaries: bool = False,
) -> list[dict]:
    """Read one section of a datalist, check it and every case in it, and return its entries with joined paths.

    The case check runs on every entry of ``section`` before anything is loaded (see
    :func:`bundle.data.case_check.check_case_files`), trusting the entry's ``"checked"`` record for files unchanged
    since the datalist was written; case ids are checked for collisions across every section of the datalist.

    Args:
        datalist: the datalist file.
        section: the section to return.
        data_root: folder the relative paths are relative to.
        required: keys every entry of the section must have (``("image",)`` for inference).
        label_values: the label set to check labels against; ``"datalist"`` (default) takes the datalist's
            ``labels`` table; None skips the value check.
        image_channels: channels of each case's image; ``"datalist"`` takes ``len(modalities)``; None: any.
        affine_atol: affine tolerance in mm.
        image_key: key of the image file(s).
        label_key: key of the label file (checked when present in an entry).
        summaries: the caller trains on the entries' label summaries (``slice_labels``, ``volume_labels``, ...):
            check that each was computed from its ``label`` file as it is now
            (:func:`bundle.data.summaries.check_summaries`), whatever ``label_key`` is.

    Returns:
        the entries, with ``image`` / ``label`` paths joined to ``data_root`` (the check record left in place).

    Raises:
        MissingInputError, InputError: naming the datalist (and the case) or the file at fault.
    """
    path = os.fspath(datalist)
    data = read_datalist(path)
    entries = section_entries(data, section, path, required)
    others = {name: section_entries(data, name, path, (image_key,)) for name in SECTIONS
              if name != section and isinstance(data.get(name), list) and data.get(name)}
    check_case_ids({section: entries, **others}, path, image_key)
    values = datalist_label_values(data) if label_values == "datalist" else label_values
    channels = datalist_image_channels(data) if image_channels == "datalist" else image_channels
    read = 0
    for entry in entries:
        result = check_entry(entry, data_root, label_values=values, image_channels=channels, affine_atol=affine_atol,
                             image_key=image_key, label_key=label_key)
        read += bool(result.read)
    if read:
        hint = "" if all(RECORD_KEY in e for e in entries) else (
            " (the datalist has no check records: write it again with scripts/prepare_datalist.py to make this "
            "start-up check a stat per file)")
        logger.info("%s: checked %d %s case(s), %d re-read%s", path, len(entries), section, read, hint)
    if summaries:
        check_summaries(entries, section, path, data_root, data)
    return [join_paths(e, data_root, (image_key, label_key)) for e in entries]
