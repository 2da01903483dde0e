"""Batch inference: one trained model over many inputs, each input on its own.

:func:`run_batch` checks the output folder and loads the model (a failure there stops the run: nothing could be
done), collects the inputs (:mod:`bundle.inference.sources`), then for each input loads and checks it
(:mod:`bundle.inference.volumes`), predicts and writes its outputs (:mod:`bundle.inference.outputs`). A failing input
is logged with its file and reason and the run goes on. Inputs whose outputs all exist are not run again (every
output is written under a temporary name and renamed, so an existing file is complete) unless ``overwrite``.

Every input's headers are checked first (:func:`~bundle.inference.volumes.check_input`), so files that cannot work
are reported before any SAM prior is computed; the loaded voxels are checked again when the input runs.

The run ends with ``batch_summary.json`` (written atomically) and a console table listing every input with its status:

- ``done``: predicted and written in this run;
- ``exists``: its outputs were already there (an earlier run); not run again;
- ``skipped``: not an input the model can read, on purpose (a DICOM structured report, a segmentation, a text file);
- ``failed``: meant as an input but unusable (unreadable, corrupt, a 4D or RGB image, missing slices); the reason
  says which file and why.

The exit code (:attr:`BatchResult.exit_code`) is 1 when any input failed, 0 otherwise.
"""

from __future__ import annotations

import json
import logging
import os
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
from bundle.inference.modality import check_input_modality
from bundle.inference.models import BatchModel, load_model
from bundle.inference.outputs import expected_outputs, write_classes, write_label_dicom_seg, write_label_nifti
from bundle.inference.sources import InputSource, collect_inputs
from bundle.inference.volumes import check_input, load_input

__all__ = ["STATUSES", "SUMMARY_NAME", "BatchResult", "InputRecord", "console_table", "repeated_flag", "run_and_exit",
           "run_batch"]

logger = logging.getLogger(__name__)

SUMMARY_NAME = "batch_summary.json"
STATUSES = ("done", "exists", "skipped", "failed")


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
    modality_mismatch: str | None = None


@dataclass
class BatchResult:
    """What a run did: the records in input order, the summary file, the exit code."""

    records: list[InputRecord]
    summary_path: Path
    model: dict[str, Any]

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.records) for s in STATUSES}

    @property
    def exit_code(self) -> int:
        return 1 if self.counts["failed"] else 0


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


def _check_modality(model: BatchModel, source: InputSource, record: InputRecord, image=None) -> None:
    """Refuse an input whose DICOM Modality or intensities contradict the model's (:mod:`bundle.inference.modality`),
    or record why it runs anyway (``allow_modality_mismatch``)."""
    reason = check_input_modality(model.modality, source.label, image,
                                  source.series.modality if source.series is not None else None,
                                  allow=model.allow_modality_mismatch)
    if reason:
        record.modality_mismatch = reason
        logger.warning("%s: %s (allowed by allow_modality_mismatch)", source.label, reason.split("; pass")[0])


def _run_one(model: BatchModel, source: InputSource, output_dir: Path, dicom_seg: bool,
             record: InputRecord | None = None) -> list[str]:
    loaded = load_input(source, model.channel_names)
    if record is not None:
        _check_modality(model, source, record, loaded.image)
    depth = int(loaded.image.shape[-1])
    with _progress_bar(depth, f"{source.name} SAM priors", "slice", leave=False) as bar:
        prediction = model.predict(loaded.image, source.name, progress=bar.update if model.uses_priors else None)
    written = []
    if model.kind == "classification":
        json_path, csv_path = expected_outputs(output_dir, source, model.kind)
        written += write_classes(prediction, model.class_names, model.multi_label, json_path, csv_path)
        return [str(p) for p in written]
    paths = expected_outputs(output_dir, source, model.kind, dicom_seg)
    written.append(write_label_nifti(prediction, loaded.affine, loaded.spatial_shape, paths[0]))
    if len(paths) > 1:
        written.append(write_label_dicom_seg(prediction, source, model.segments, paths[1],
                                             f"{model.kind} ({Path(model.model_dir).name})"[:64]))
    return [str(p) for p in written]


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
        overwrite: run inputs again even when their outputs exist.
        device: torch device; default CUDA when available.
        prior_cache_dir: the SAM prior cache; default the cache the model was trained with when it is writable here,
            else ``<output_dir>/prior_cache``.
        sam_checkpoint: the base SAM checkpoint of a SAM-Mix model whose recorded path has moved.
        dicom_seg: also write a DICOM-SEG for DICOM inputs.
        allow_modality_mismatch: run inputs whose DICOM Modality or intensity range contradicts the model card's
            modality (:mod:`bundle.inference.modality`); the reason is recorded in their ``modality_mismatch``.
            Without it such an input fails with that reason.

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
    sources, skipped = collect_inputs(inputs, section=section, exclude=[output])
    logger.info("batch inference: %s from %s on %s; %d input(s), %d other path(s)", model.description, model_dir,
                device, len(sources), len(skipped))
    records = [InputRecord(s.path, s.status, reason=s.reason) for s in skipped]
    for s in skipped:
        (logger.error if s.status == "failed" else logger.info)("%s: %s (%s)", s.status, s.path, s.reason)
    # pre-flight: every input's headers are checked before any prior is computed, so bad files are reported at once
    todo: list[tuple[InputSource, InputRecord]] = []
    for source in sources:
        record = InputRecord(source.label, "done", source.name, source.kind)
        paths = expected_outputs(output, source, model.kind, dicom_seg)
        if not overwrite and all(p.is_file() for p in paths):
            record.status, record.outputs = "exists", [str(p) for p in paths]
        else:
            try:
                check_input(source, model.channel_names)
                _check_modality(model, source, record)
                todo.append((source, record))
            except Exception as error:  # noqa: BLE001 - reported like a failure while running
                _fail(record, error, source)
        if record.status != "done":
            _log(record, source)
        records.append(record)
    if todo:
        logger.info("%d input(s) to run, %d failed the pre-flight check, %d already done", len(todo),
                    sum(r.status == "failed" for r in records), sum(r.status == "exists" for r in records))
    with _progress_bar(len(todo), "inputs", "input") as bar:
        for i, (source, record) in enumerate(todo, 1):
            t0 = time.perf_counter()
            try:
                record.outputs = _run_one(model, source, output, dicom_seg, record)
            except Exception as error:  # noqa: BLE001 - one input's failure must not stop the others
                _fail(record, error, source)
            record.seconds = round(time.perf_counter() - t0, 2)
            _log(record, source, f"[{i}/{len(todo)}] ")
            bar.update(1)
    model_info = {"model_dir": str(model_dir), "kind": model.kind, "description": model.description,
                  "device": str(device), "bundle_version": __version__}
    result = BatchResult(records, output / SUMMARY_NAME, model_info)
    summary = {**model_info, "inputs": [str(p) for p in inputs], "output_dir": str(output),
               "counts": result.counts, "seconds": round(time.perf_counter() - start, 2), "exit_code": result.exit_code,
               "records": [asdict(r) for r in records]}
    write_text_atomic(result.summary_path, json.dumps(summary, indent=1) + "\n")
    print(console_table(records, result.counts), flush=True)
    for record in records:  # one clear line per failure at the very end of the log
        if record.status == "failed":
            print(f"FAILED: {record.input}: {record.reason}", file=sys.stderr, flush=True)
    return result


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
    (1 when any input failed). ``inputs`` may be one path or a list.

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
