"""Per-case reports of the task workflows: one row per evaluated case, a per-class summary, written atomically.

A task workflow scores each case class by class (segmentation: Dice, HD95, ... per region; classification: whatever
it measures per class) and hands over *records*::

    {"case_id": str, "source": str | None, "metrics": {class: {metric: float}}, ...}

Extra fields of a record (e.g. the ``spacing`` of a segmentation case) go into the per-case JSON as they are and,
when named in ``info_columns``, into the CSV. :class:`CaseReport` is the thin ignite handler that collects the
records of an evaluator run and writes them; a task subclasses it and says how one case is scored
(:meth:`CaseReport.score_case`). The functions below (:func:`summarise`, :func:`write_report`,
:func:`format_summary_table`) also work on records computed outside an engine.

Files written into ``output_dir``:

- ``metrics_per_case.csv``: ``case_id, source``, one column per ``info_columns`` entry (lists joined with ``x``), then
  one column ``"{class}/{metric}"`` per value.
- ``metrics_per_case.json``: ``{"class_names", "metrics", "cases": [record, ...]}``.
- ``metrics_summary.json``: ``{"tags", "n_cases", "class_names", "metric_definitions",
  "metrics": {class: {metric: {"mean", "std", "median", "n"}}}}`` (read by :mod:`bundle.workflows.common.compare`).

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
from monai.utils import IgniteInfo, min_version, optional_import, string_list_all_gather

from bundle import distributed
from bundle.atomic import write_text_atomic
from bundle.data.case_ids import case_id_from_files, source_files_of

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = [
    "PER_CASE_CSV",
    "PER_CASE_JSON",
    "SUMMARY_JSON",
    "sources_from_meta",
    "case_id_from_meta",
    "summarise",
    "json_safe",
    "per_case_csv",
    "write_report",
    "format_summary_table",
    "gather_records",
    "CaseReport",
]

PER_CASE_CSV = "metrics_per_case.csv"
PER_CASE_JSON = "metrics_per_case.json"
SUMMARY_JSON = "metrics_summary.json"


def sources_from_meta(*tensors) -> list[str]:
    """Source file names of the first ``MetaTensor`` that carries them (``filename_or_obj``); ``[]`` if none does."""
    for t in tensors:
        if isinstance(t, MetaTensor) and source_files_of(t):
            return source_files_of(t)
    return []


def case_id_from_meta(*tensors) -> str | None:
    """Case id from the first ``MetaTensor`` carrying its source file names (``/data/LiTS/segmentation-3.nii.gz`` ->
    ``segmentation-3``, see :mod:`bundle.data.case_ids`); ``None`` if there is none."""
    files = sources_from_meta(*tensors)
    return case_id_from_files(files) if files else None


def _finite(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


def _pooled(records: Sequence[Mapping[str, Any]], name: str, metric: str, weight: str) -> dict:
    """A per-case mean pooled over the units it averages (e.g. slices): mean weighted by the ``weight`` metric.

    An infinite case value makes the pooled mean infinite (an authors' convention, e.g. an empty prediction)."""
    pairs = [(r["metrics"][name][metric], r["metrics"][name][weight]) for r in records]
    vals = np.asarray([np.nan if v is None else v for v, _ in pairs], dtype=np.float64)
    w = np.asarray([0.0 if x is None else x for _, x in pairs], dtype=np.float64)
    keep = ~np.isnan(vals) & (w > 0)
    vals, w = vals[keep], w[keep]
    n = int(vals.size)
    finite = vals[np.isfinite(vals)]
    mean = None
    if n:
        mean = float("inf") if finite.size < n else float((vals * w).sum() / w.sum())
    return {"mean": mean, "std": float(vals.std(ddof=1)) if n >= 2 and finite.size == n else None,
            "median": float(np.median(vals)) if n else None, "n": n, "pooled_by": weight}


def summarise(
    records: Sequence[Mapping[str, Any]], class_names: Sequence[str], metric_names: Sequence[str],
    pooling: Mapping[str, str] | None = None,
) -> dict[str, dict[str, dict]]:
    """Per class and metric over the cases: mean, sample std, median and n (non-NaN values only).

    Args:
        pooling: ``{metric: weight_metric}`` for metrics whose per-case value is a mean over units (e.g. slices)
            counted by ``weight_metric``: their ``mean`` is pooled over those units (weighted by the count; infinite
            if a case value is), ``std`` and ``median`` stay over cases, and the entry says ``"pooled_by"``.

    Returns:
        ``{class: {metric: {"mean", "std", "median", "n"}}}``; statistics are ``None`` when ``n`` is too small.
    """
    out: dict[str, dict[str, dict]] = {}
    pooling = dict(pooling or {})
    for name in class_names:
        out[name] = {}
        for metric in metric_names:
            if metric in pooling:
                out[name][metric] = _pooled(records, name, metric, pooling[metric])
                continue
            vals = _finite([r["metrics"][name][metric] for r in records])
            n = int(vals.size)
            out[name][metric] = {
                "mean": float(vals.mean()) if n else None,
                "std": float(vals.std(ddof=1)) if n >= 2 else None,
                "median": float(np.median(vals)) if n else None,
                "n": n,
            }
    return out


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by ``None`` (JSON has no NaN) and mapping keys as strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _info_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "x".join(f"{v:g}" if isinstance(v, (int, float)) else str(v) for v in value)
    return str(value)


def per_case_csv(
    records: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    metric_names: Sequence[str],
    info_columns: Sequence[str] = (),
) -> str:
    """The per-case CSV text: ``case_id, source, *info_columns`` then ``"{class}/{metric}"`` columns."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = [f"{c}/{m}" for c in class_names for m in metric_names]
    writer.writerow(["case_id", "source", *info_columns] + columns)
    for r in records:
        info = [_info_cell(r.get(k)) for k in info_columns]
        values = [r["metrics"][c][m] for c in class_names for m in metric_names]
        writer.writerow([r["case_id"], r.get("source") or "", *info] + [repr(float(v)) for v in values])
    return buf.getvalue()


def write_report(
    records: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    class_names: Sequence[str],
    metric_names: Sequence[str],
    metric_definitions: Mapping[str, str] | None = None,
    tags: Mapping[str, Any] | None = None,
    info_columns: Sequence[str] = (),
    pooling: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write the per-case CSV and JSON and the summary JSON into ``output_dir`` (each atomically).

    Args:
        records: one per case (see the module docstring).
        output_dir: folder of the three files (created if missing).
        class_names: the classes, in column order.
        metric_names: the metrics of every class, in column order.
        metric_definitions: ``{metric: one-line definition}`` written into the summary (units, empty-case rules).
        tags: JSON-serialisable run description copied into the summary.
        info_columns: record fields written as CSV columns after ``source``.
        pooling: metrics whose summary mean is pooled over units, see :func:`summarise`.

    Returns:
        the summary written to ``metrics_summary.json`` (NaN as ``None``).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    class_names, metric_names = list(class_names), list(metric_names)
    summary = json_safe(
        {
            "tags": dict(tags or {}),
            "n_cases": len(records),
            "class_names": class_names,
            "metric_definitions": dict(metric_definitions or {}),
            "metrics": summarise(records, class_names, metric_names, pooling),
        }
    )
    per_case = json_safe({"class_names": class_names, "metrics": metric_names, "cases": [dict(r) for r in records]})
    write_text_atomic(out / PER_CASE_CSV, per_case_csv(records, class_names, metric_names, info_columns))
    write_text_atomic(out / PER_CASE_JSON, json.dumps(per_case, indent=2, allow_nan=False) + "\n")
    write_text_atomic(out / SUMMARY_JSON, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def format_summary_table(summary: Mapping[str, Any], title: str = "report") -> str:
    """Plain-text table of a summary: one line per class and metric, ``mean +/- std (median, n)``."""
    lines = [f"{title}: {summary['n_cases']} cases, tags {summary.get('tags', {})}"]
    lines.append(f"{'class':<16}{'metric':<15}{'mean':>10}{'std':>10}{'median':>10}{'n':>6}")

    def fmt(v):
        return f"{v:10.4f}" if v is not None else f"{'n/a':>10}"

    for name, metrics in summary["metrics"].items():
        for metric, s in metrics.items():
            lines.append(f"{name:<16}{metric:<15}{fmt(s['mean'])}{fmt(s['std'])}{fmt(s['median'])}{s['n']:>6}")
    return "\n".join(lines)


def gather_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The records of every rank, in rank order (each rank's own list outside a process group).

    Records travel as JSON strings, so they must be JSON-serialisable (plain floats, NaN allowed).
    """
    if distributed.world_size() <= 1:
        return [dict(r) for r in records]
    gathered = string_list_all_gather([json.dumps(r) for r in records])
    return [json.loads(s) for s in gathered if s]


def _to_cpu(x):
    return x.detach().cpu() if isinstance(x, torch.Tensor) else x


class CaseReport:
    """Ignite handler: score every evaluated case, write per-case and summary files when the run ends.

    At ``ITERATION_COMPLETED`` it reads the post-processed ``pred`` and ``label`` of each case of the batch
    (``engine.state.output`` is the list of per-case dicts that MONAI's decollate + post-processing leave) and the
    case id from the batch data's ``case_id_key`` when present, else from ``filename_or_obj``, and asks
    :meth:`score_case` for the record. At ``COMPLETED`` it gathers the records of all ranks and, on ``save_rank``,
    writes the three files (see the module docstring) and logs the summary table.

    Subclasses set :attr:`metric_names` (and optionally :attr:`metric_definitions`, :attr:`info_columns`,
    :attr:`title`) and implement :meth:`score_case`.

    Args:
        output_dir: folder for ``metrics_per_case.csv``, ``metrics_per_case.json`` and ``metrics_summary.json``.
        class_names: names of the C classes of ``pred``; default ``class0, ...`` from its first dimension.
        tags: JSON-serialisable run description copied into the summary, e.g. ``{"prior_mode": "concat", "seed": 0}``.
        pred_key: key of the prediction in each output dict.
        label_key: key of the ground truth in each output dict.
        case_id_key: key of an explicit case id in the batch data (datalist ``case_id``).
        save_rank: the rank that writes the files in distributed evaluation.
        name: logger name; default the engine's logger.
    """

    metric_names: Sequence[str] = ()
    metric_definitions: Mapping[str, str] | None = None
    info_columns: Sequence[str] = ()
    title: str = "report"
    #: ``{metric: weight_metric}`` pooled in the summary (see :func:`summarise`)
    metric_pooling: Mapping[str, str] | None = None

    def case_extras(self, data: Any) -> dict[str, Any]:
        """Keyword arguments for :meth:`score_case` taken from a case's batch data; none by default."""
        return {}

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
        self.logger = logging.getLogger(name or type(self).__module__)
        self._records: list[dict[str, Any]] = []

    def score_case(self, pred: Any, label: Any, class_names: Sequence[str], case_id: str) -> dict[str, Any]:
        """The record of one case (``pred`` and ``label`` on the CPU); see the module docstring for its fields."""
        raise NotImplementedError(f"{type(self).__name__} must implement score_case().")

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
        """Score each case of the current batch."""
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
            names = self._class_names_for(pred)
            extras = self.case_extras(data)
            self._records.append(self.score_case(_to_cpu(pred), _to_cpu(label), names, str(case_id), **extras))

    def _class_names_for(self, pred) -> list[str]:
        if self.class_names is None:
            self.class_names = [f"class{c}" for c in range(pred.shape[0])]
        return self.class_names

    def _write(self, engine: Engine) -> None:
        world = distributed.world_size()
        if self.save_rank >= world:
            raise ValueError(f"save_rank {self.save_rank} is not a rank of this {world}-process group")
        records = gather_records(self._records)
        if distributed.rank() != self.save_rank:
            return
        duplicates = sorted(i for i, k in Counter(r["case_id"] for r in records).items() if k > 1)
        if duplicates:
            self.logger.warning(f"{type(self).__name__}: case ids seen more than once: {duplicates}")
        # a rank that saw no case learns the class names from the gathered records
        class_names = self.class_names or (list(records[0]["metrics"]) if records else [])
        summary = write_report(
            records,
            self.output_dir,
            class_names,
            self.metric_names,
            metric_definitions=self.metric_definitions,
            tags=self.tags,
            info_columns=self.info_columns,
            pooling=self.metric_pooling,
        )
        self.logger.info("%s\nwritten to %s", format_summary_table(summary, self.title), self.output_dir)
