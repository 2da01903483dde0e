"""Batch inference: one trained model over many inputs, each input on its own.

:func:`run_batch` checks the output folder and loads the model (a failure there stops the run: nothing could be
done), collects the inputs (:mod:`bundle.inference.sources`), then for each input loads and checks it
(:mod:`bundle.inference.volumes`), predicts and writes its outputs (:mod:`bundle.inference.outputs`). A failing input
is logged with its file and reason and the run goes on.

Every input's outputs carry a record of the model and the input content that made them
(:mod:`bundle.inference.records`): outputs of this model and this input are not run again (``exists``) unless
``overwrite``; outputs of another model or input version are replaced only with ``overwrite``; a file the bundle did
not write (an input or label of the run, a file without a record) is never written over. The output folder may be
an input folder too: the files the bundle wrote there are not taken for inputs.

Every input's headers are checked first (:func:`~bundle.inference.volumes.check_input`), so files that cannot work
are reported before any SAM prior is computed; the loaded voxels are checked again when the input runs.

The run ends with ``batch_summary.json`` (written atomically) and a console table listing every input with its status:

- ``done``: predicted and written in this run;
- ``exists``: its outputs were already there (an earlier run); not run again;
- ``skipped``: not an input the model can read, on purpose (a DICOM structured report, a segmentation, a text file);
- ``failed``: meant as an input but unusable (unreadable, corrupt, a 4D or RGB image, missing slices), or its
  outputs may not be written (see above); the reason says which file and why;
- ``interrupted``: not run because the run was interrupted (Ctrl-C) first.

The exit code (:attr:`BatchResult.exit_code`) is 130 after Ctrl-C (the summary says what was done), 1 when any input
failed, 2 when no input was found (nothing to run: the summary lists what was skipped), 0 otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bundle import __version__
from bundle.atomic import write_text_atomic
from bundle.errors import BundleError, error_line
from bundle.folders import check_writable_folder
from bundle.hashing import file_sha256
from bundle.inference.modality import check_input_modality
from bundle.inference.models import BatchModel, load_model, prior_cache_for
from bundle.inference.outputs import expected_outputs, write_classes, write_label_dicom_seg, write_label_nifti
from bundle.inference.records import (claimed_files, input_identity, model_identity, plan_outputs, record_path,
                                      write_record)
from bundle.inference.sources import InputSource, collect_inputs, datalist_files
from bundle.inference.volumes import check_input, load_input

__all__ = ["STATUSES", "SUMMARY_NAME", "BatchResult", "InputRecord", "console_table", "repeated_flag", "run_and_exit",
           "run_batch"]

logger = logging.getLogger(__name__)

SUMMARY_NAME = "batch_summary.json"
STATUSES = ("done", "exists", "skipped", "failed", "interrupted")
INTERRUPTED_EXIT = 130  # the shell's code for a process ended by SIGINT
NOTHING_FOUND_EXIT = 2


@dataclass
class InputRecord:
    """One line of the summary."""

    input: str
    status: str
    name: str | None = None
    kind: str | None = None
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)
    reason: str | None = None
    record: str | None = None
    modality_mismatch: str | None = None


@dataclass
class BatchResult:
    """What a run did: the records in input order, the summary file, the exit code."""

    records: list[InputRecord]
    summary_path: Path
    model: dict[str, Any]
    found: int = 0
    interrupted: bool = False

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.records) for s in STATUSES}

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return INTERRUPTED_EXIT
        if self.counts["failed"]:
            return 1
        return 0 if self.found else NOTHING_FOUND_EXIT


def _reason(error: BaseException, source: InputSource) -> str:
    """The problem, without the input's own path in front (the summary names the input already)."""
    line = error_line(error)
    line = line.removeprefix("ERROR: ")
    for own in (source.label, *source.files):
        if line.startswith(f"{own}: "):
            return line[len(own) + 2:]
    return line


def _fail(record: InputRecord, error: Exception, source: InputSource) -> None:
    record.status, record.reason = "failed", _reason(error, source)
    if not isinstance(error, BundleError):  # not a known input fault: keep the traceback for a bug report
        logger.error("%s: unexpected error", source.label)


def _log(record: InputRecord, source: InputSource, prefix: str = "") -> None:
    log = logger.error if record.status == "failed" else logger.info
    log("%s%s: %s%s (%.1f s)", prefix, source.label, record.status, f": {record.reason}" if record.reason else "",
        record.seconds)


def _progress_bar(total: int, desc: str, unit: str, leave: bool = True):
    from tqdm.auto import tqdm

    # disable=None: shown on a terminal, silent in log files and CI
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr, dynamic_ncols=True, disable=None)


def _remove_stale(previous: dict | None, record_file: Path, written: list[Path]) -> None:
    """Remove the outputs an earlier complete record lists and this run did not write again (a DICOM-SEG of the
    model replaced, say), when they are still exactly what that record says: no prediction of another model stays."""
    if not previous or previous.get("state") != "complete":
        return
    for name, entry in previous["outputs"].items():
        stale = record_file.parent / str(name)
        if stale in written or "/" in str(name) or not stale.is_file() or stale.is_symlink():
            continue
        if isinstance(entry, dict) and entry.get("sha256") == file_sha256(stale):
            stale.unlink()


def _check_modality(model: BatchModel, source: InputSource, record: InputRecord, image=None) -> None:
    """Refuse an input whose DICOM Modality or intensities contradict the model's (:mod:`bundle.inference.modality`),
    or record why it runs anyway (``allow_modality_mismatch``)."""
    if record.modality_mismatch:  # allowed at the header check already: said once
        return
    reason = check_input_modality(model.modality, source.label, image,
                                  source.series.modality if source.series is not None else None,
                                  allow=model.allow_modality_mismatch)
    if reason:
        record.modality_mismatch = reason.split("; pass --allow_modality_mismatch")[0]
        logger.warning("%s: %s (allowed by allow_modality_mismatch)", source.label, record.modality_mismatch)


def _run_one(model: BatchModel, source: InputSource, output_dir: Path, dicom_seg: bool, identity: dict,
             previous: dict | None, record: InputRecord | None = None) -> tuple[list[str], Path]:
    """Predict one input and write its outputs and their record; returns the outputs and the record's path."""
    paths = expected_outputs(output_dir, source, model.kind, dicom_seg)
    record_file = record_path(output_dir, source.name)
    source_input = input_identity(source.files, (previous or {}).get("input"))
    loaded = load_input(source, model.channel_names)
    if record is not None:
        _check_modality(model, source, record, loaded.image)
    depth = int(loaded.image.shape[-1])
    with _progress_bar(depth, f"{source.name} SAM priors", "slice", leave=False) as bar:
        prediction = model.predict(loaded.image, source.name, progress=bar.update if model.uses_priors else None)
    # claimed before the first output lands: a kill part way leaves outputs a rerun knows as the bundle's
    write_record(record_file, "writing", identity, source_input, paths, source.label)
    written = []
    if model.kind == "classification":
        written += write_classes(prediction, model.class_names, model.multi_label, paths[0], paths[1])
    else:
        written.append(write_label_nifti(prediction, loaded.affine, loaded.spatial_shape, paths[0]))
        if len(paths) > 1:
            written.append(write_label_dicom_seg(prediction, source, model.segments, paths[1],
                                                 f"{model.kind} ({Path(model.model_dir).name})"[:64]))
    write_record(record_file, "complete", identity, source_input, written, source.label)
    _remove_stale(previous, record_file, written)
    return [str(p) for p in written], record_file


def run_batch(inputs: Sequence[str | os.PathLike], output_dir: str | os.PathLike, model_dir: str | os.PathLike, *,
              section: str = "testing", overwrite: bool = False, device: Any = None,
              prior_cache_dir: str | None = None, sam_checkpoint: str | None = None, dicom_seg: bool = True,
              allow_modality_mismatch: bool = False) -> BatchResult:
    """Run the model in ``model_dir`` over ``inputs`` and write the outputs and the summary to ``output_dir``.

    Args:
        inputs: files, glob patterns, folders, datalists (see :mod:`bundle.inference.sources`).
        output_dir: where outputs and ``batch_summary.json`` go (created).
        model_dir: a trained model folder (``model.pt`` + ``model_card.json``).
        section: the datalist section run for datalist inputs.
        overwrite: run inputs again even when their outputs exist, also outputs of another model or input version
            (never a file the bundle did not write).
        device: torch device; default CUDA when available.
        prior_cache_dir: the SAM prior cache; default the cache the model was trained with when it is writable here,
            else ``<output_dir>/prior_cache``.
        sam_checkpoint: the base SAM checkpoint of a SAM-Mix model whose recorded path has moved.
        dicom_seg: also write a DICOM-SEG for DICOM inputs.
        allow_modality_mismatch: run inputs whose DICOM Modality or intensity range contradicts the model card's
            modality (:mod:`bundle.inference.modality`); the reason is recorded in their ``modality_mismatch``.
            Without it such an input fails with that reason.

    Returns:
        the records and the exit code; after Ctrl-C (``KeyboardInterrupt``) while inputs are checked or run, the
        summary of what was done with the rest ``interrupted`` and :data:`INTERRUPTED_EXIT` as the exit code.

    Raises:
        OutputFolderError: the output folder cannot be created or written (before any work).
        BundleError: the model cannot be loaded.
    """
    start = time.perf_counter()
    quiet = logging.getLogger("highdicom")  # logs every attribute it copies into a DICOM-SEG at INFO
    if quiet.level < logging.WARNING:
        quiet.setLevel(logging.WARNING)
    if not inputs:
        raise ValueError("no inputs: pass at least one file, folder, glob pattern or datalist.")
    output = check_writable_folder(output_dir, what="output folder")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(model_dir, device, prior_cache_dir, sam_checkpoint, fallback_cache_dir=output / "prior_cache")
    if not isinstance(allow_modality_mismatch, bool):
        raise ValueError(f"allow_modality_mismatch: {allow_modality_mismatch!r} is not true or false")
    model.allow_modality_mismatch = allow_modality_mismatch
    identity = model_identity(model_dir, model.card, model.kind)
    # the output folder may be searched for inputs too: what the bundle wrote there (and its prior cache) is not one
    caches = [output / "prior_cache", prior_cache_for(model.card, prior_cache_dir, output / "prior_cache")]
    ours = claimed_files(output) | {os.path.realpath(output / SUMMARY_NAME)}
    sources, skipped = collect_inputs(inputs, section=section, exclude=caches, exclude_files=ours)
    protected = {os.path.realpath(f) for f in [*datalist_files(inputs), *(f for s in sources for f in s.files),
                                               *(p for p in map(os.fspath, inputs) if os.path.isfile(p))]}
    logger.info("batch inference: %s from %s on %s; %d input(s), %d other path(s)", model.description, model_dir,
                device, len(sources), len(skipped))
    records = [InputRecord(s.path, s.status, reason=s.reason) for s in skipped]
    for s in skipped:
        (logger.error if s.status == "failed" else logger.info)("%s: %s (%s)", s.status, s.path, s.reason)
    if not sources:
        logger.warning("no input found in %s: nothing to run", ", ".join(map(str, inputs)))
    # every input starts 'interrupted' (not reached) and leaves that state when checked or run: after Ctrl-C the
    # summary tells what was done and what was not
    pending = [(source, InputRecord(source.label, "interrupted", source.name, source.kind)) for source in sources]
    records += [record for _, record in pending]
    interrupted = False
    try:
        _check_and_run(pending, model, output, identity, protected, overwrite, dicom_seg)
    except KeyboardInterrupt:
        interrupted = True
        for record in records:
            if record.status == "interrupted":
                record.reason = "not run: the run was interrupted (Ctrl-C) first"
        logger.warning("interrupted (Ctrl-C): writing the summary of what was done")
    model_info = {"model_dir": str(model_dir), "kind": model.kind, "description": model.description,
                  "model_sha256": identity["model_sha256"], "card_sha256": identity["card_sha256"],
                  "device": str(device), "bundle_version": __version__}
    result = BatchResult(records, output / SUMMARY_NAME, model_info, found=len(sources), interrupted=interrupted)
    summary = {**model_info, "inputs": [str(p) for p in inputs], "output_dir": str(output),
               "counts": result.counts, "seconds": round(time.perf_counter() - start, 2), "exit_code": result.exit_code,
               "records": [asdict(r) for r in records]}
    _write_summary(result.summary_path, summary)
    print(console_table(records, result.counts), flush=True)
    for record in records:  # one clear line per failure at the very end of the log
        if record.status == "failed":
            print(f"FAILED: {record.input}: {record.reason}", file=sys.stderr, flush=True)
    if interrupted:
        print(f"INTERRUPTED: {result.counts['interrupted']} input(s) not run (Ctrl-C); {result.summary_path} lists "
              "what was done; the same command runs the rest", file=sys.stderr, flush=True)
    elif not sources and not result.counts["failed"]:
        print(f"ERROR: no input found in {', '.join(map(str, inputs))}: no NIfTI, MHA, NRRD or DICOM image "
              f"({len(skipped)} other path(s) skipped, listed in {result.summary_path})", file=sys.stderr, flush=True)
    return result


def _check_and_run(pending: list[tuple[InputSource, InputRecord]], model: BatchModel, output: Path, identity: dict,
                   protected: set[str], overwrite: bool, dicom_seg: bool) -> None:
    """Pre-flight every input (where its outputs may go, its headers), then run those left to run."""
    # pre-flight: every input's headers are checked before any prior is computed, so bad files are reported at once
    todo: list[tuple[InputSource, InputRecord, dict | None]] = []
    for source, record in pending:
        paths = expected_outputs(output, source, model.kind, dicom_seg)
        try:
            plan = plan_outputs(paths, record_path(output, source.name), protected, identity, source.files, overwrite)
            if plan.action == "exists":
                record.status, record.outputs = "exists", [str(p) for p in paths]
                record.record = str(record_path(output, source.name))
            else:
                check_input(source, model.channel_names)
                _check_modality(model, source, record)
                todo.append((source, record, plan.record))
        except Exception as error:  # noqa: BLE001 - reported like a failure while running
            _fail(record, error, source)
        if record.status != "interrupted":
            _log(record, source)
    if todo:
        logger.info("%d input(s) to run, %d failed the pre-flight check, %d already done", len(todo),
                    sum(r.status == "failed" for _, r in pending), sum(r.status == "exists" for _, r in pending))
    with _progress_bar(len(todo), "inputs", "input") as bar:
        for i, (source, record, previous) in enumerate(todo, 1):
            t0 = time.perf_counter()
            try:
                outputs, written = _run_one(model, source, output, dicom_seg, identity, previous, record)
                record.status, record.outputs, record.record = "done", outputs, str(written)
            except Exception as error:  # noqa: BLE001 - one input's failure must not stop the others
                _fail(record, error, source)
            record.seconds = round(time.perf_counter() - t0, 2)
            _log(record, source, f"[{i}/{len(todo)}] ")
            bar.update(1)


def _write_summary(path: Path, summary: dict) -> None:
    """Write the summary; a second Ctrl-C while it is written waits (the summary is what the first one asked for)."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: signals cannot be handled here anyway
        previous = None
    try:
        write_text_atomic(path, json.dumps(summary, indent=1) + "\n")
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def console_table(records: Sequence[InputRecord], counts: dict[str, int], width: int = 60) -> str:
    """The summary as a fixed-width table: status, seconds, output name, input (shortened from the left)."""

    def short(text: str) -> str:
        return text if len(text) <= width else "..." + text[-(width - 3):]

    lines = [f"{'status':<8} {'seconds':>8}  {'name':<28} input", "-" * (50 + width)]
    for r in records:
        lines.append(f"{r.status:<8} {r.seconds:>8.1f}  {(r.name or '-')[:28]:<28} {short(r.input)}")
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)


def repeated_flag(argv: Sequence[str], flag: str = "--input") -> list[str]:
    """Every value of ``flag`` on a command line (``--input a --input b`` and ``--input=a``)."""
    values = []
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(flag + "="):
            values.append(arg[len(flag) + 1:])
    return values


def run_and_exit(inputs, output_dir, model_dir, **kwargs) -> None:
    """:func:`run_batch` for ``python -m monai.bundle run batch_inferring``: ends the process with the exit code
    (1 when any input failed, 2 when none was found, 130 after Ctrl-C). ``inputs`` may be one path or a list.

    The bundle command line (python-fire) keeps only the last of a repeated ``--input``; the values of every
    ``--input`` on the command line are used instead, so ``--input a --input b`` runs both.
    """
    if inputs is None or output_dir is None:
        raise ValueError("batch inference needs --input PATH (a file, folder, glob or datalist; repeat it or give a "
                         "list for several) and --output DIR.")
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    repeated = repeated_flag(sys.argv[1:])
    if len(repeated) > 1:
        inputs = repeated
    result = run_batch(inputs, output_dir, model_dir, **kwargs)
    sys.exit(result.exit_code)
