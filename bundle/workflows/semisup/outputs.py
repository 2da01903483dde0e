"""The output folder of SAM-Mix inference: which cases to predict, and the masks written with their records.

``configs/inference_sam_mix.json`` runs MONAI's ``SupervisedEvaluator`` over the cases :meth:`OutputRecords.plan`
keeps; :class:`OutputRecords` is also the evaluator's handler that writes each predicted mask (in its input file's
grid, atomically) and the records, and :meth:`OutputRecords.finish` writes the run's summary.

An output is kept (``exists``) only when the folder's ``inference_records.json`` says this ``model.pt`` (sha256) wrote
it from this input file (sha256): another model or a changed scan predicts it again. A file of that name that no run
wrote, or one changed since, is never written over: the plan refuses it, naming it, before any prediction. A record
marked ``writing`` is an output of this workflow cut short by a kill: predicted again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from ignite.engine import Events
from monai.data import decollate_batch
from monai.utils import CommonKeys

from bundle.atomic import atomic_path, write_text_atomic
from bundle.data.writers import to_file_grid
from bundle.errors import InputError
from bundle.hashing import file_sha256, path_sha256

__all__ = ["OUTPUT_RECORDS", "OutputRecords"]

logger = logging.getLogger(__name__)

#: every output this workflow wrote into an output folder, by path: which model wrote it from which input
OUTPUT_RECORDS = "inference_records.json"
#: the summary of the last run: one record per input, ``written`` or ``exists``
SUMMARY = "inference_summary.json"


def _read_records(folder: Path) -> dict[str, dict]:
    """The output records of ``folder`` (none when the file is missing or unreadable: outputs are then not trusted)."""
    try:
        records = json.loads((folder / OUTPUT_RECORDS).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in records.items() if isinstance(v, dict)} if isinstance(records, dict) else {}


class OutputRecords:
    """The output folder of one inference run with one model (see the module docstring).

    Args:
        output_dir: where ``<case_id><suffix>.nii.gz`` go, with ``inference_summary.json`` (this run) and
            ``inference_records.json`` (every output written there).
        model_path: the ``model.pt`` that predicts (its sha256 is recorded with each output).
        suffix: of the output names.
    """

    def __init__(self, output_dir: str | os.PathLike, model_path: str | os.PathLike, suffix: str = "_pred") -> None:
        self.output_dir, self.suffix = Path(output_dir), str(suffix)
        self.model_sha256 = file_sha256(model_path)
        self._known: dict[str, dict] = {}
        self._order: list[str] = []  # the outputs of this run, in input order
        self._done: dict[str, dict] = {}  # output path -> this run's record
        self._started: dict[str, float] = {}

    def plan(self, cases: Sequence[Mapping]) -> list[dict]:
        """The cases to predict (``{"case_id", "image", "source", "output", "input_sha256"}``; ``source`` keeps the
        input's path once ``image`` is loaded); the others are kept as ``exists``.

        Raises:
            InputError: an output path holds a file this workflow did not write, or one changed since (named, before
                any prediction).
        """
        self._known, self._order, self._done = _read_records(self.output_dir), [], {}
        todo = []
        for case in cases:
            out_path = self.output_dir / f"{case['case_id']}{self.suffix}.nii.gz"
            before, input_sha = self._known.get(str(out_path)), path_sha256(case["image"])
            out_sha = file_sha256(out_path) if out_path.exists() else None
            if out_sha is not None and (before is None or (before.get("output_sha256") != out_sha
                                                           and not before.get("writing"))):
                raise InputError(out_path, "exists and was not written by this workflow (or was changed since): it "
                                           "is never written over; move it away or choose another --output_dir")
            self._order.append(str(out_path))
            if (before is not None and out_sha is not None and before.get("output_sha256") == out_sha
                    and before.get("model_sha256") == self.model_sha256 and before.get("input_sha256") == input_sha):
                self._done[str(out_path)] = {**before, "status": "exists", "seconds": 0.0}
            else:
                todo.append({"case_id": case["case_id"], "image": case["image"], "source": str(case["image"]),
                             "output": str(out_path), "input_sha256": input_sha})
        return todo

    # ---- the evaluator's handler ---------------------------------------------------------------------------------
    def attach(self, engine) -> None:
        """Mark outputs before each iteration and write them after it (an outputs' ``seconds``: prediction and
        writing, the loading before excluded)."""
        engine.add_event_handler(Events.ITERATION_STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.completed)

    def started(self, engine) -> None:
        """Mark the outputs of this batch ``writing`` before any of them is written."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for output in engine.state.batch["output"]:
            self._started[output] = time.perf_counter()
            self._known[output] = {"output": output, "model_sha256": self.model_sha256, "writing": True}
        write_text_atomic(self.output_dir / OUTPUT_RECORDS, json.dumps(self._known, indent=1))

    def completed(self, engine) -> None:
        """Write each predicted mask in its input file's grid (atomically) and record it."""
        # MONAI's workflows decollate batch and output (``decollate=True``) before the handlers see them
        items, outputs = engine.state.batch, engine.state.output
        items = decollate_batch(items) if isinstance(items, Mapping) else items
        outputs = decollate_batch(outputs) if isinstance(outputs, Mapping) else outputs
        for item, output in zip(items, outputs):
            pred = output[CommonKeys.PRED]
            image, out_path = item["image"], Path(item["output"])
            file_affine = np.asarray(image.meta.get("original_affine", image.affine), np.float64)
            volume = to_file_grid(np.asarray(pred.cpu())[0], np.asarray(image.affine, np.float64), file_affine)
            with atomic_path(out_path) as tmp:  # the temporary name keeps .nii.gz: nibabel picks the format from it
                nib.save(nib.Nifti1Image(volume.astype(np.uint8), file_affine), tmp)
            record = {"image": item["source"], "output": str(out_path),
                      "model_sha256": self.model_sha256, "input_sha256": item["input_sha256"],
                      "output_sha256": file_sha256(out_path)}
            self._known[str(out_path)] = record
            seconds = time.perf_counter() - self._started.pop(str(out_path), time.perf_counter())
            self._done[str(out_path)] = {**record, "status": "written", "seconds": round(seconds, 2)}
            logger.info("sam-mix inference: %d/%d %s -> %s (%.1f s)", len(self._done), len(self._order),
                        record["image"], out_path, seconds)
        write_text_atomic(self.output_dir / OUTPUT_RECORDS, json.dumps(self._known, indent=1))

    def finish(self) -> list[dict]:
        """Write ``inference_summary.json`` (every input of the run, in order) and return it.

        Raises:
            RuntimeError: an output planned for prediction was not written (the evaluator stopped early).
        """
        missing = [o for o in self._order if o not in self._done]
        if missing:
            raise RuntimeError(f"sam-mix inference: {len(missing)} planned output(s) not written, e.g. {missing[0]}")
        records = [self._done[o] for o in self._order]
        write_text_atomic(self.output_dir / SUMMARY, json.dumps(records, indent=1))
        return records
