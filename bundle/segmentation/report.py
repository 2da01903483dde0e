"""Per-case segmentation reports: one row per evaluated case, a per-class summary, written atomically.

:class:`SegmentationReport` is the thin ignite handler; the work is done by the functions of this module
(:func:`case_record`, :func:`summarise`, :func:`write_report`, :func:`format_summary_table`), which can also be
used on predictions saved to disk.

Files written into ``output_dir`` at the end of an evaluator run:

- ``metrics_per_case.csv``: ``case_id, source, spacing`` then one column ``"{class}/{metric}"`` per value.
- ``metrics_per_case.json``: ``{"class_names", "metrics", "cases": [{"case_id", "source", "spacing", "metrics"}]}``.
- ``metrics_summary.json``: ``{"tags", "n_cases", "class_names", "metric_definitions",
  "metrics": {class: {metric: {"mean", "std", "median", "n"}}}}``.

Statistics ignore NaN (e.g. HD95 of a case with an empty side); ``n`` is the number of cases that had a value and
``std`` is the sample standard deviation (``ddof=1``, ``null`` when ``n < 2``). NaN is written as ``nan`` in the CSV
and ``null`` in JSON.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.data import MetaTensor, decollate_batch
from monai.data.utils import affine_to_spacing
from monai.utils import IgniteInfo, min_version, optional_import, string_list_all_gather

from bundle import distributed
from bundle.atomic import write_text_atomic
from bundle.data.case_ids import case_id_from_files, source_files_of
from bundle.segmentation.metrics import METRIC_DEFINITIONS, SLICE_METRICS, VOLUME_METRICS, case_metrics

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = [
    "PER_CASE_CSV",
    "PER_CASE_JSON",
    "SUMMARY_JSON",
    "SegmentationReport",
    "case_id_from_meta",
    "spacing_from_meta",
    "case_record",
    "summarise",
    "write_report",
    "format_summary_table",
]

PER_CASE_CSV = "metrics_per_case.csv"
PER_CASE_JSON = "metrics_per_case.json"
SUMMARY_JSON = "metrics_summary.json"
METRIC_NAMES = VOLUME_METRICS + SLICE_METRICS

def _sources_of(*tensors) -> list[str]:
    for t in tensors:
        if isinstance(t, MetaTensor) and source_files_of(t):
            return source_files_of(t)
    return []


def case_id_from_meta(*tensors) -> str | None:
    """Case id from the first ``MetaTensor`` carrying its source file names (``/data/LiTS/segmentation-3.nii.gz`` ->
    ``segmentation-3``, see :mod:`bundle.data.case_ids`); ``None`` if there is none."""
    files = _sources_of(*tensors)
    return case_id_from_files(files) if files else None


def spacing_from_meta(*tensors) -> list[float]:
    """Voxel spacing (mm per spatial axis) from the affine of the first ``MetaTensor`` given.

    Raises:
        ValueError: none of the tensors is a ``MetaTensor``, so distances in mm cannot be trusted.
    """
    for t in tensors:
        if isinstance(t, MetaTensor):
            affine = t.affine
            spatial = t.ndim - 1
            return [float(s) for s in affine_to_spacing(affine.detach().cpu(), r=spatial)]
    raise ValueError(
        "pred and label are plain tensors: the voxel spacing for HD95 in mm comes from a MetaTensor affine; "
        "keep MetaTensors through the post-processing (e.g. EnsureTyped(track_meta=True))"
    )


def case_record(
    pred,
    label,
    class_names: Sequence[str] | None = None,
    case_id: str | None = None,
    spacing: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Metrics of one ``[C, H, W, D]`` case as a report row.

    Args:
        pred: binary prediction; a ``MetaTensor`` supplies spacing and case id when those are not given.
        label: binary ground truth, same shape; its meta is preferred over the prediction's.
        class_names: names of the C channels.
        case_id: explicit case id; default from ``filename_or_obj`` (label first, then prediction).
        spacing: explicit voxel spacing in mm; default from the affine (label first, then prediction).

    Returns:
        ``{"case_id", "source", "spacing", "metrics": {class: {metric: float}}}``.
    """
    if spacing is None:
        spacing = spacing_from_meta(label, pred)
    return {
        "case_id": case_id if case_id is not None else case_id_from_meta(label, pred),
        "source": next(iter(_sources_of(label, pred)), None),
        "spacing": [float(s) for s in spacing],
        "metrics": case_metrics(pred, label, spacing=spacing, class_names=class_names),
    }


def _finite(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def summarise(records: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> dict[str, dict[str, dict]]:
    """Per class and metric over the cases: mean, sample std, median and n (non-NaN values only).

    Returns:
        ``{class: {metric: {"mean", "std", "median", "n"}}}``; statistics are ``None`` when ``n`` is too small.
    """
    out: dict[str, dict[str, dict]] = {}
    for name in class_names:
        out[name] = {}
        for metric in METRIC_NAMES:
            vals = _finite([r["metrics"][name][metric] for r in records])
            n = int(vals.size)
            out[name][metric] = {
                "mean": float(vals.mean()) if n else None,
                "std": float(vals.std(ddof=1)) if n >= 2 else None,
                "median": float(np.median(vals)) if n else None,
                "n": n,
            }
    return out


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _csv_text(records: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case_id", "source", "spacing"] + [f"{c}/{m}" for c in class_names for m in METRIC_NAMES])
    for r in records:
        spacing = "x".join(f"{s:g}" for s in r["spacing"])
        values = [r["metrics"][c][m] for c in class_names for m in METRIC_NAMES]
        writer.writerow([r["case_id"], r["source"] or "", spacing] + [repr(float(v)) for v in values])
    return buf.getvalue()


def write_report(
    records: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    class_names: Sequence[str],
    tags: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the per-case CSV and JSON and the summary JSON into ``output_dir`` (each atomically).

    Returns:
        the summary written to ``metrics_summary.json`` (NaN as ``None``).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_names = list(class_names)
    summary = _json_safe(
        {
            "tags": dict(tags or {}),
            "n_cases": len(records),
            "class_names": class_names,
            "metric_definitions": METRIC_DEFINITIONS,
            "metrics": summarise(records, class_names),
        }
    )
    per_case = _json_safe(
        {"class_names": class_names, "metrics": list(METRIC_NAMES), "cases": [dict(r) for r in records]}
    )
    write_text_atomic(out / PER_CASE_CSV, _csv_text(records, class_names))
    write_text_atomic(out / PER_CASE_JSON, json.dumps(per_case, indent=2, allow_nan=False) + "\n")
    write_text_atomic(out / SUMMARY_JSON, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def format_summary_table(summary: Mapping[str, Any]) -> str:
    """Plain-text table of a summary: one line per class and metric, ``mean +/- std (median, n)``."""
    lines = [f"segmentation report: {summary['n_cases']} cases, tags {summary.get('tags', {})}"]
    lines.append(f"{'class':<16}{'metric':<15}{'mean':>10}{'std':>10}{'median':>10}{'n':>6}")

    def fmt(v):
        return f"{v:10.4f}" if v is not None else f"{'n/a':>10}"

    for name, metrics in summary["metrics"].items():
        for metric, s in metrics.items():
            lines.append(f"{name:<16}{metric:<15}{fmt(s['mean'])}{fmt(s['std'])}{fmt(s['median'])}{s['n']:>6}")
    return "\n".join(lines)


class SegmentationReport:
    """Ignite handler: metrics of every evaluated case, written as per-case and summary files when the run ends.

    At ``ITERATION_COMPLETED`` it reads the post-processed ``pred`` and ``label`` of each case of the batch
    (``engine.state.output`` is the list of per-case dicts that MONAI's decollate + post-processing leave), takes
    the spacing from the label's (else the prediction's) ``MetaTensor`` affine and the case id from the batch
    data's ``case_id_key`` when present, else from ``filename_or_obj``. At ``COMPLETED`` it gathers the rows of all
    ranks and, on ``save_rank``, writes the three files (see the module docstring) and logs the summary table.

    Args:
        output_dir: folder for ``metrics_per_case.csv``, ``metrics_per_case.json`` and ``metrics_summary.json``.
        class_names: names of the C region channels (e.g. ``["WT", "TC", "ET"]``); default ``class0, ...``.
        tags: JSON-serialisable run description copied into the summary, e.g.
            ``{"prior_mode": "concat", "infer_mode": "aug_only", "seed": 0}``.
        pred_key: key of the binary prediction in each output dict.
        label_key: key of the binary ground truth in each output dict.
        case_id_key: key of an explicit case id in the batch data (datalist ``case_id``).
        save_rank: the rank that writes the files in distributed evaluation.
        name: logger name; default the engine's logger.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str] | None = None,
        tags: Mapping[str, Any] | None = None,
        pred_key: str = "pred",
        label_key: str = "label",
        case_id_key: str = "case_id",
        save_rank: int = 0,
        name: str | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names) if class_names is not None else None
        self.tags = dict(tags or {})
        json.dumps(self.tags)  # fail at construction, not after a long evaluation
        self.pred_key = pred_key
        self.label_key = label_key
        self.case_id_key = case_id_key
        self.save_rank = save_rank
        self._name = name
        self.logger = logging.getLogger(name or __name__)
        self._records: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        """Register the handler's callbacks on ``engine`` (an evaluator)."""
        if self._name is None:
            self.logger = engine.logger
        if not engine.has_event_handler(self._reset, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._reset)
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        if not engine.has_event_handler(self._write, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, _engine: Engine) -> None:
        self._records = []

    def __call__(self, engine: Engine) -> None:
        """Compute the metrics of each case of the current batch."""
        outputs, batch = engine.state.output, engine.state.batch
        if isinstance(outputs, dict):  # evaluator built with decollate=False
            outputs = decollate_batch(outputs)
        if isinstance(batch, dict):
            batch = decollate_batch(batch)
        batch = batch if isinstance(batch, list) and len(batch) == len(outputs) else [None] * len(outputs)
        for item, data in zip(outputs, batch):
            pred, label = item[self.pred_key], item[self.label_key]
            case_id = data.get(self.case_id_key) if isinstance(data, Mapping) else None
            if isinstance(case_id, (list, tuple)):
                case_id = case_id[0]
            if case_id is None:
                case_id = case_id_from_meta(label, pred)
            if case_id is None:
                case_id = f"rank{distributed.rank()}_case{len(self._records):04d}"
                warnings.warn(f"no {self.case_id_key!r} key and no filename_or_obj meta: naming the case {case_id}")
            record = case_record(
                _to_cpu(pred), _to_cpu(label), class_names=self._class_names_for(pred), case_id=str(case_id)
            )
            self._records.append(record)

    def _class_names_for(self, pred) -> list[str]:
        if self.class_names is None:
            self.class_names = [f"class{c}" for c in range(pred.shape[0])]
        return self.class_names

    def _write(self, engine: Engine) -> None:
        world = distributed.world_size()
        if self.save_rank >= world:
            raise ValueError(f"save_rank {self.save_rank} is not a rank of this {world}-process group")
        records = self._records
        if world > 1:
            gathered = string_list_all_gather([json.dumps(r) for r in records])
            records = [json.loads(s) for s in gathered if s]
        if distributed.rank() != self.save_rank:
            return
        duplicates = sorted(i for i, k in Counter(r["case_id"] for r in records).items() if k > 1)
        if duplicates:
            self.logger.warning(f"SegmentationReport: case ids seen more than once: {duplicates}")
        # a rank that saw no case learns the channel names from the gathered rows
        class_names = self.class_names or (list(records[0]["metrics"]) if records else [])
        summary = write_report(records, self.output_dir, class_names, tags=self.tags)
        self.logger.info("%s\nwritten to %s", format_summary_table(summary), self.output_dir)


def _to_cpu(x):
    return x.detach().cpu() if isinstance(x, torch.Tensor) else x
