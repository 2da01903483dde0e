"""Per-item predictions and metrics of SAMAug-C evaluation and inference, written atomically.

One row per item (slice tasks: ``case_id`` + ``slice_index``; volume tasks: ``case_id``, ``slice_index`` empty)
with one fused probability column per class (``p_<class>``) and the predicted class(es) (``predicted``: the argmax
class name, or the ``;``-joined names at or above 0.5 for multi-label); evaluation adds the true label(s).

Files in ``output_dir``: ``predictions.csv`` and ``predictions.json`` (always); with labels also
``metrics_summary.json`` (per-class and mean metrics of :func:`~bundle.workflows.classification.metrics.
classification_metrics`, confusion matrix, tags) and ``metrics_summary.md`` (a short markdown table).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import decollate_batch
from monai.utils import IgniteInfo, min_version, optional_import

from bundle.atomic import write_text_atomic
from bundle.distributed import is_main_process
from bundle.networks.fusion import fuse_probabilities
from bundle.workflows.classification.metrics import METRIC_DEFINITIONS, METRIC_NAMES, classification_metrics
from bundle.workflows.common.case_report import json_safe

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")

__all__ = ["PREDICTIONS_CSV", "PREDICTIONS_JSON", "SUMMARY_JSON", "SUMMARY_MD", "predicted_names",
           "write_predictions", "write_summary", "markdown_table", "ClassificationReport"]

PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
SUMMARY_JSON = "metrics_summary.json"
SUMMARY_MD = "metrics_summary.md"


def predicted_names(probs: Sequence[float], class_names: Sequence[str], multi_label: bool) -> list[str]:
    """The predicted class name(s) of one item's probabilities ``[K]``."""
    if multi_label:
        return [c for c, p in zip(class_names, probs) if p >= 0.5]
    return [class_names[int(np.argmax(probs))]]


def _label_names(label: Any, class_names: Sequence[str], multi_label: bool) -> list[str]:
    label = np.asarray(label)
    if multi_label:
        return [c for c, v in zip(class_names, label.reshape(-1)) if v >= 0.5]
    return [class_names[int(label.reshape(-1)[0])]]


def write_predictions(rows: Sequence[Mapping], class_names: Sequence[str], output_dir: str | Path) -> None:
    """Write ``predictions.csv`` / ``predictions.json`` (atomically) from rows of :class:`ClassificationReport`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with_truth = any("label" in r for r in rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case_id", "slice_index", *[f"p_{c}" for c in class_names], "predicted"]
                    + (["label"] if with_truth else []))
    for r in rows:
        cells = [r["case_id"], "" if r["slice_index"] is None else r["slice_index"],
                 *[repr(float(p)) for p in r["probabilities"]], ";".join(r["predicted"])]
        writer.writerow(cells + ([";".join(r.get("label", []))] if with_truth else []))
    write_text_atomic(out / PREDICTIONS_CSV, buf.getvalue())
    write_text_atomic(out / PREDICTIONS_JSON, json.dumps(
        json_safe({"class_names": list(class_names), "items": [dict(r) for r in rows]}), indent=2) + "\n")


def markdown_table(summary: Mapping) -> str:
    """A short markdown table: one row per class and one for the mean, one column per metric."""
    lines = [f"| class | {' | '.join(METRIC_NAMES)} |", "|---" * (len(METRIC_NAMES) + 1) + "|"]

    def fmt(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    for name, values in [*summary["per_class"].items(), ("**mean**", summary["mean"])]:
        lines.append(f"| {name} | " + " | ".join(fmt(values[m]) for m in METRIC_NAMES) + " |")
    return f"{summary['n']} items, fusion weight w = {summary.get('fusion_weight')}\n\n" + "\n".join(lines) + "\n"


def write_summary(summary: Mapping, output_dir: str | Path) -> None:
    """Write ``metrics_summary.json`` and ``metrics_summary.md`` atomically."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / SUMMARY_JSON, json.dumps(json_safe(dict(summary)), indent=2, allow_nan=False) + "\n")
    write_text_atomic(out / SUMMARY_MD, markdown_table(summary))


class ClassificationReport:
    """Ignite handler: fused probabilities of every evaluated item, then predictions (and metrics) files.

    Reads ``engine.state.output`` (decollated: ``pred`` ``[n_branches, K]`` logits, ``label`` when present) and the
    batch's ``case_id`` / ``slice_index``; fuses with ``fusion_weight`` (:func:`bundle.networks.fuse_probabilities`).

    Args:
        output_dir: folder of the files.
        class_names: the ``K`` class names.
        multi_label: sigmoid per class / 0-1 label vectors.
        fusion_weight: ``w`` of the fused prediction (the model card's).
        with_metrics: also score the items against their labels (evaluation); False for inference.
        tags: JSON-serialisable run description copied into the summary.
    """

    def __init__(self, output_dir: str | Path, class_names: Sequence[str], multi_label: bool = False,
                 fusion_weight: float = 0.5, with_metrics: bool = True, tags: Mapping | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = [str(c) for c in class_names]
        self.multi_label = bool(multi_label)
        self.fusion_weight = float(fusion_weight)
        self.with_metrics = bool(with_metrics)
        self.tags = dict(tags or {})
        json.dumps(self.tags, default=str)
        self.rows: list[dict] = []
        self.summary: dict | None = None
        self._probs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self.logger = logging.getLogger(__name__)

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def _reset(self, engine=None) -> None:
        self.rows, self._probs, self._labels = [], [], []

    def __call__(self, engine) -> None:
        outputs, batch = engine.state.output, engine.state.batch
        if isinstance(batch, Mapping):  # an evaluator built with decollate=False
            batch, outputs = decollate_batch(batch), decollate_batch(outputs)
        for data, item in zip(batch, outputs):
            probs = fuse_probabilities(torch.as_tensor(item["pred"]).detach().float().cpu()[None],
                                       self.fusion_weight, self.multi_label)[0]
            slice_index = None if data.get("slice_index") is None else int(data["slice_index"])
            row = {"case_id": str(data["case_id"]), "slice_index": slice_index, "probabilities": probs.tolist(),
                   "predicted": predicted_names(probs.tolist(), self.class_names, self.multi_label)}
            label = item.get("label")
            if self.with_metrics and label is not None:
                label = torch.as_tensor(label).detach().cpu()
                row["label"] = _label_names(label, self.class_names, self.multi_label)
                self._labels.append(label.reshape(-1) if self.multi_label else label.reshape(()))
            self._probs.append(probs)
            self.rows.append(row)

    def write(self, engine=None) -> None:
        """Write the files (main process only)."""
        if not is_main_process():
            return
        write_predictions(self.rows, self.class_names, self.output_dir)
        if self.with_metrics:
            if len(self._labels) != len(self._probs):
                raise ValueError("ClassificationReport: some items have no label; run inference instead.")
            probs, labels = torch.stack(self._probs), torch.stack(self._labels)
            scores = classification_metrics(probs, labels, self.class_names, self.multi_label)
            self.summary = {"tags": self.tags, "fusion_weight": self.fusion_weight, "class_names": self.class_names,
                            "metric_definitions": METRIC_DEFINITIONS, **scores}
            write_summary(self.summary, self.output_dir)
            self.logger.info("classification report (%s):\n%s", self.output_dir, markdown_table(self.summary))
        self.logger.info("wrote %d predictions to %s", len(self.rows), self.output_dir)
