"""Which model wrote an output of batch inference, and whether a rerun may keep, replace or must leave it.

Every input's outputs get one record next to them, ``<name>_record.json`` (:func:`record_path`), written atomically:

- ``model``: the sha256 of the model folder's ``model.pt`` and of its card (canonical JSON), the folder and kind;
- ``input``: the input's files with their size, mtime and sha256 (:func:`bundle.priors.cache.file_fingerprint`, which
  reuses a recorded sha256 while size and mtime are unchanged) and one ``sha256`` over them in input order;
- ``outputs``: each output file's name (in the record's folder), size and sha256;
- ``state``: ``writing`` from before the first output is written until the last one is renamed into place, then
  ``complete``. A kill in between leaves a ``writing`` record that still claims the outputs, so the rerun may
  replace them (they were written by the bundle) instead of taking them for someone else's files.

:func:`plan_outputs` decides, before an input runs, what its rerun does:

- ``run``: nothing there, or only files this bundle wrote for the same model and input (an interrupted write, an
  output deleted since), or ``overwrite``;
- ``exists``: a complete record of this model (same ``model.pt`` and card) and this input content, and every output
  still what was written (same sha256): not run again;
- refused (:class:`OutputRefused`, the input fails with one line): an output path that is an input or label file of
  the run; an existing file without a record claiming it, or that changed since it was written (never written over,
  with or without ``overwrite``); outputs of another model or of another version of the input, without
  ``overwrite``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bundle import __version__
from bundle.atomic import write_text_atomic
from bundle.errors import FileError
from bundle.hashing import file_sha256, json_sha256
from bundle.priors.cache import file_fingerprint

__all__ = ["RECORD_FORMAT", "RECORD_SUFFIX", "OutputRefused", "Plan", "claimed_files", "input_identity",
           "model_identity", "plan_outputs", "read_record", "record_path", "write_record"]

RECORD_SUFFIX = "_record.json"
RECORD_FORMAT = "sam-priors batch inference output record"
_OVERWRITE_HINT = "pass --overwrite true to predict it again with this model, or choose another --output"
_FOREIGN_HINT = ("batch inference never writes over a file it did not write, with or without --overwrite: move it "
                 "away or choose another --output")


class OutputRefused(FileError):
    """An input's outputs may not be written (the path at fault, and why)."""


@dataclass(frozen=True)
class Plan:
    """What to do with one input: ``action`` ``run`` or ``exists``; ``record`` the record read (or ``None``)."""

    action: str
    record: dict | None = None


def record_path(output_dir: Path, name: str) -> Path:
    """The record of the outputs named ``name`` (an input's output stem)."""
    return Path(output_dir) / f"{name}{RECORD_SUFFIX}"


def model_identity(model_dir: str | os.PathLike, card: Mapping[str, Any], kind: str) -> dict:
    """``{model_dir, kind, model_sha256, card_sha256}`` of a loaded model (``model.pt`` read once, in chunks)."""
    return {"model_dir": os.fspath(model_dir), "kind": kind,
            "model_sha256": file_sha256(Path(model_dir) / "model.pt"), "card_sha256": json_sha256(dict(card))}


def input_identity(files: Sequence[str], previous: Mapping | None = None) -> dict:
    """``{files: [fingerprint, ...], sha256}`` of an input's files; ``previous`` (an earlier record's ``input``) lets
    unchanged files (same path, size and mtime) keep their recorded sha256 instead of being read again."""
    known = {fp.get("path"): fp for fp in (previous or {}).get("files", []) if isinstance(fp, Mapping)}
    prints = []
    for f in files:
        prints.append(file_fingerprint(f, known.get(os.path.realpath(f))))
    return {"files": prints, "sha256": json_sha256([fp["sha256"] for fp in prints])}


def read_record(path: Path) -> dict | None:
    """The record at ``path``; ``None`` when there is none.

    Raises:
        OutputRefused: a file of that name that is not a record of this bundle (it is someone else's: never replaced).
    """
    if not path.exists() and not path.is_symlink():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise OutputRefused(path, f"exists and is not a batch-inference record ({type(err).__name__}); "
                                  f"{_FOREIGN_HINT}") from err
    if not (isinstance(record, dict) and record.get("format") == RECORD_FORMAT
            and isinstance(record.get("outputs"), dict) and isinstance(record.get("model"), dict)
            and isinstance(record.get("input"), dict)):
        raise OutputRefused(path, f"exists and is not a batch-inference record; {_FOREIGN_HINT}")
    return record


def write_record(path: Path, state: str, model: Mapping, source_input: Mapping, outputs: Sequence[Path],
                 label: str) -> dict:
    """Write the record of an input's outputs (``state`` ``writing``: their sha256 are not known yet)."""
    files = {}
    for p in outputs:
        files[Path(p).name] = ({"size": Path(p).stat().st_size, "sha256": file_sha256(p)} if state == "complete"
                               else {})
    record = {"format": RECORD_FORMAT, "state": state, "input_label": label, "model": dict(model),
              "input": dict(source_input), "outputs": files, "bundle_version": __version__,
              "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_text_atomic(path, json.dumps(record, indent=1) + "\n")
    return record


def claimed_files(output_dir: Path) -> set[str]:
    """Real paths of the files the bundle wrote in ``output_dir``: its records and the outputs they list (the files
    a run with ``output_dir`` among its inputs must not take for inputs)."""
    claimed: set[str] = set()
    if not Path(output_dir).is_dir():
        return claimed
    for path in Path(output_dir).glob(f"*{RECORD_SUFFIX}"):
        try:
            record = read_record(path)
        except OutputRefused:
            continue  # not ours: a file like any other
        if record is None:
            continue
        claimed.add(os.path.realpath(path))
        claimed.update(os.path.realpath(path.parent / name) for name in record["outputs"]
                       if isinstance(name, str) and "/" not in name and name not in ("", ".", ".."))
    return claimed


def _changed(record: Mapping, model: Mapping, current_input: Mapping) -> str:
    """What differs between the record and this run ('' when nothing): the model's weights, its card, the input."""
    written_by = record["model"]
    if written_by.get("model_sha256") != model["model_sha256"]:
        return (f"were written by another model (model.pt sha256 {str(written_by.get('model_sha256'))[:12]}... in "
                f"{written_by.get('model_dir')}; this model's is {model['model_sha256'][:12]}...)")
    if written_by.get("card_sha256") != model["card_sha256"]:
        return (f"were written with another model card (model_card.json of {written_by.get('model_dir')} differs from "
                f"this model's)")
    if record["input"].get("sha256") != current_input["sha256"]:
        return "were written from another version of this input (its content changed since)"
    return ""


def plan_outputs(paths: Sequence[Path], record_file: Path, protected: Collection[str], model: Mapping,
                 files: Sequence[str], overwrite: bool) -> Plan:
    """Decide whether an input runs, is kept (``exists``) or is refused (see the module docstring).

    Args:
        paths: the outputs a complete run writes for the input.
        record_file: their record (:func:`record_path`).
        protected: real paths of the run's input and label files (never written).
        model: :func:`model_identity` of this run's model.
        files: the input's files.
        overwrite: replace outputs of another model or input version.

    Raises:
        OutputRefused: names the output and why it is not written.
    """
    for p in (*paths, record_file):
        if os.path.realpath(p) in protected:
            raise OutputRefused(p, "is an input or label file of this run; batch inference never writes over it: "
                                   "choose another --output")
    record = read_record(record_file)
    existing = [p for p in paths if p.exists() or p.is_symlink()]
    if record is None:
        if existing:
            raise OutputRefused(existing[0], f"exists and was not written by batch inference (no {record_file.name} "
                                             f"claims it); {_FOREIGN_HINT}")
        return Plan("run")
    for p in existing:
        entry = record["outputs"].get(p.name)
        if entry is None or p.is_symlink() or not p.is_file():
            raise OutputRefused(p, f"exists and is not listed in {record_file.name} as written by batch inference; "
                                   f"{_FOREIGN_HINT}")
        if record.get("state") == "complete" and (entry.get("size") != p.stat().st_size
                                                  or entry.get("sha256") != file_sha256(p)):
            raise OutputRefused(p, "changed since batch inference wrote it (its sha256 differs from "
                                   f"{record_file.name}); {_FOREIGN_HINT}")
    current = input_identity(files, record["input"])
    changed = _changed(record, model, current)
    if changed and existing and not overwrite:
        raise OutputRefused(existing[0], f"not replaced: this input's outputs {changed}; {_OVERWRITE_HINT}")
    complete = record.get("state") == "complete" and len(existing) == len(paths)
    if complete and not changed and not overwrite:
        return Plan("exists", record)
    return Plan("run", record)
