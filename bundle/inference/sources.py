"""What a batch-inference run reads: NIfTI (and other ITK) image files, glob patterns, folders, Decathlon datalists and
DICOM exports, turned into one :class:`InputSource` per volume.

Every argument of ``--input`` is one of:

- an image file (``.nii``, ``.nii.gz``, ``.mha``, ``.mhd``, ``.nrrd``): one input;
- a glob pattern (``scans/*.nii.gz``, ``**`` allowed): every match, as if listed;
- a folder: walked recursively; DICOM files (found by their ``DICM`` preamble, whatever their name, ``.nii.gz``
  included) are grouped into series by ``SeriesInstanceUID`` (:mod:`bundle.data.dicom_input`), other image files are
  inputs, anything else is reported as skipped: hidden files and folders (a name starting with ``.``, not searched),
  what is not a regular file (a pipe, a socket); a symbolic link that leads nowhere (a loop, a missing target) is a
  failed input of its own;
- a datalist (``.json``): the entries of one section (``testing`` by default), paths relative to the datalist's
  folder; an entry with several image files (one per modality) is one multi-channel input;
- a DICOM file: its series, with the other DICOM files given or found next to it.

Nothing is read beyond DICOM headers here: volumes are loaded one at a time by the runner, so a bad file fails its
own input only. Each input gets a safe output stem (:mod:`bundle.inference.names`): the datalist's ``case_id``, or the
case id of its files (:func:`bundle.data.case_ids.case_id_from_files`: the file name without suffix), the
series description and number for DICOM series (:func:`series_stem`); stems shared by several inputs get a suffix
from their path or ``SeriesInstanceUID``, stable across reruns.
"""

from __future__ import annotations

import errno
import glob
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundle.data.case_ids import case_id_from_files, case_id_problem
from bundle.data.datalist_io import read_datalist
from bundle.data.dicom_input import DicomSeries, is_dicom_file, scan_dicom_files
from bundle.inference.names import safe_stem, unique_stems

__all__ = ["VOLUME_SUFFIXES", "InputSource", "Skipped", "collect_inputs", "datalist_files", "series_stem"]

#: files read as one volume each (by MONAI's readers); DICOM files are found by content, not by suffix
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
_GLOB_CHARS = set("*?[")


@dataclass
class InputSource:
    """One volume to run the model on.

    Attributes:
        name: the output stem (safe, unique in the run).
        kind: ``image`` (files read by MONAI's readers) or ``dicom`` (a series read by :mod:`bundle.data.dicom_input`).
        files: the image file(s) (several: one per modality, stacked as channels) or the series' files.
        label: how messages and the summary name it (a path, or the series folder and UID).
        series: the DICOM series (``dicom`` only).
        checked: what :func:`bundle.inference.volumes.check_input` read (the series' geometry, the files' headers),
            handed to the loader so that an input is read and checked once; None before the check.
    """

    name: str
    kind: str
    files: list[str]
    label: str
    series: DicomSeries | None = None
    checked: Any = field(default=None, repr=False)
    stem: str = field(default="", repr=False)
    key: str = field(default="", repr=False)


@dataclass(frozen=True)
class Skipped:
    """A path that is not an input: ``status`` ``skipped`` (not an image: a DICOM SR, a text file) or ``failed``
    (meant as an input but unreadable: a corrupt DICOM file, a missing path, a broken datalist)."""

    path: str
    status: str
    reason: str


def series_stem(series: DicomSeries) -> str:
    """The stem of a DICOM series' outputs: its description and number (``CT_abdomen_3``), sanitised; the
    ``SeriesInstanceUID`` when it has neither."""
    number = getattr(series.datasets[0], "SeriesNumber", None) if series.datasets else None
    text = "_".join(str(v) for v in (series.description, number) if v not in (None, ""))
    return safe_stem(text, fallback=safe_stem(series.series_uid, "series"))


def _kind_of(path: str) -> str:
    suffix = "".join(Path(path).suffixes[-2:]).lower()
    return f"'{suffix}' file" if suffix else "no suffix, no DICOM preamble"


def _is_image_file(path: str) -> bool:
    return path.lower().endswith(VOLUME_SUFFIXES)


def _datalist_entries(path: str, section: str) -> list[tuple[list[str], str | None]]:
    data = read_datalist(path)
    if section not in data:
        raise ValueError(f"has no {section!r} section (sections: {sorted(data)})")
    root = Path(path).resolve().parent
    entries = []
    for i, entry in enumerate(data[section]):
        image: Any = entry.get("image") if isinstance(entry, dict) else entry
        files = image if isinstance(image, list) else [image]
        if not files or not all(isinstance(f, str) and f for f in files):
            raise ValueError(f"entry {i} of {section!r} has no image path")
        case_id = entry.get("case_id") if isinstance(entry, dict) else None
        problem = None if case_id is None else case_id_problem(case_id)
        if problem:
            raise ValueError(f"entry {i} of {section!r}: {problem}")
        entries.append(([str(root / f) for f in files], case_id))
    return entries


def datalist_files(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Every image and label file that the datalists among ``paths`` list, in any section (the files a run must never
    write over); a datalist that cannot be read adds nothing (:func:`collect_inputs` reports it)."""
    found = []
    for raw in paths:
        text = os.fspath(raw)
        if not text.lower().endswith(".json") or not os.path.isfile(text):
            continue
        try:
            data = read_datalist(text)
        except Exception:  # noqa: BLE001 - reported as a failed input by collect_inputs
            continue
        root = Path(text).resolve().parent
        for entries in (v for v in data.values() if isinstance(v, list)):
            for entry in (e for e in entries if isinstance(e, dict)):
                for key in ("image", "label"):
                    values = entry.get(key)
                    for value in values if isinstance(values, list) else [values]:
                        if isinstance(value, str) and value:
                            found.append(str(root / value))
    return found


def _walk(folder: Path, skipped: list[Skipped]) -> list[str]:
    """The files below ``folder``; hidden files and folders are added to ``skipped`` instead (said, not dropped)."""
    found = []
    for base, dirs, files in os.walk(folder):
        hidden = sorted(d for d in dirs if d.startswith("."))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        skipped += [Skipped(os.path.join(base, d), "skipped", "hidden folder (its name starts with '.'); not searched")
                    for d in hidden]
        for f in sorted(files):
            path = os.path.join(base, f)
            if f.startswith("."):
                skipped.append(Skipped(path, "skipped", "hidden file (its name starts with '.'); not read: rename it "
                                                        "or list it as --input to run it"))
            else:
                found.append(path)
    return found


def _link_problem(path: str) -> str | None:
    """Why ``path`` cannot be opened when it is a symbolic link that leads nowhere; ``None`` otherwise."""
    if not os.path.islink(path) or os.path.exists(path):
        return None
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symbolic link loop (too many levels of symbolic links); it leads to no file"
        return f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
    return None


def collect_inputs(paths: Sequence[str | os.PathLike], section: str = "testing",
                   exclude: Sequence[str | os.PathLike] = (), exclude_files: Collection[str] = ()
                   ) -> tuple[list[InputSource], list[Skipped]]:
    """The inputs named by ``paths`` (files, globs, folders, datalists; see the module docstring).

    Args:
        paths: what the user passed as ``--input``.
        section: the datalist section to run.
        exclude: folders never read (a prior cache inside an input folder).
        exclude_files: real paths (``os.path.realpath``) of files never read: what batch inference wrote into its
            output folder when that folder is also searched for inputs.

    Returns:
        ``(inputs, skipped)``: inputs in a stable order (images as listed, then DICOM series), and every path that is
        not an input with its status and reason.
    """
    excluded = [Path(os.path.realpath(p)) for p in exclude]  # realpath: never raises, even on a symlink loop
    images: list[tuple[list[str], str | None]] = []
    dicom_files: list[str] = []
    skipped: list[Skipped] = []

    def is_excluded(path: str) -> bool:
        resolved = os.path.realpath(path)
        return resolved in exclude_files or any(e == Path(resolved) or e in Path(resolved).parents for e in excluded)

    def add_file(path: str, listed: bool) -> None:
        if is_excluded(path):
            return
        link = _link_problem(path)
        if link:
            skipped.append(Skipped(path, "failed", link))
        elif not os.path.isfile(path):  # a pipe would block the first read for good
            skipped.append(Skipped(path, "failed" if listed else "skipped", "is not a regular file (a pipe, socket or "
                                                                             "device); not read"))
        elif is_dicom_file(path):  # by content first: a DICOM file named .nii.gz is DICOM, as the docs promise
            dicom_files.append(path)
        elif _is_image_file(path):
            images.append(([path], None))
        elif path.lower().endswith(".dcm"):
            dicom_files.append(path)  # no preamble: the scan reports it as a failed DICOM file
        elif listed:
            skipped.append(Skipped(path, "failed", "not a NIfTI, MHA, NRRD or DICOM file, nor a datalist "
                                                   f"({_kind_of(path)})"))
        else:
            skipped.append(Skipped(path, "skipped", f"not a file batch inference reads ({_kind_of(path)}): NIfTI, MHA, "
                                                    "NRRD and DICOM are"))

    for raw in paths:
        text = os.fspath(raw)
        if any(c in _GLOB_CHARS for c in text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                skipped.append(Skipped(text, "failed", "the pattern matches no file"))
            for match in matches:
                if os.path.isdir(match):
                    for path in _walk(Path(match), skipped):
                        add_file(path, listed=False)
                else:
                    add_file(match, listed=True)
        elif os.path.isdir(text):
            for path in _walk(Path(text), skipped):
                add_file(path, listed=False)
        elif not os.path.exists(text):
            skipped.append(Skipped(text, "failed", _link_problem(text) or "does not exist"))
        elif text.lower().endswith(".json"):
            try:
                images += _datalist_entries(text, section)
            except Exception as err:  # noqa: BLE001 - a broken datalist fails itself, the other inputs still run
                skipped.append(Skipped(text, "failed", f"datalist: {getattr(err, 'problem', None) or err}"))
        else:
            add_file(text, listed=True)

    inputs = []
    seen: set[tuple[str, ...]] = set()
    for files, case_id in images:
        key = tuple(os.path.abspath(f) for f in files)
        if key in seen:  # the same file reached twice (a folder and a glob): run it once
            continue
        seen.add(key)
        label = files[0] if len(files) == 1 else ", ".join(files)
        stem = safe_stem(case_id or case_id_from_files(files))
        inputs.append(InputSource("", "image", list(files), label, stem=stem, key="\n".join(key)))

    unique_dicom = sorted({os.path.abspath(f) for f in dicom_files})
    if unique_dicom:
        scan = scan_dicom_files(unique_dicom)
        skipped += [Skipped(p, "skipped", reason) for p, reason in scan.skipped]
        skipped += [Skipped(p, "failed", reason) for p, reason in scan.failed]
        for series in scan.series:
            inputs.append(InputSource("", "dicom", list(series.files), series.label, series=series,
                                      stem=series_stem(series), key=series.series_uid))
    for source, name in zip(inputs, unique_stems([s.stem for s in inputs], [s.key for s in inputs])):
        source.name = name
    return inputs, skipped
