"""Compare evaluation runs across seeds: a markdown table of per-seed means, differences and Welch t-tests.

Each run label (e.g. ``raw``, ``samaug``) names several evaluation folders, one per training seed, each holding the
``metrics_summary.json`` of a per-case report (:mod:`bundle.workflows.common.case_report`, e.g. the segmentation
workflow's ``SegmentationReport``) or of an item-level report (``per_class`` and ``mean`` values computed over all
items, e.g. the classification workflow's; the spread is then seed-to-seed of those values). For every (class, metric) the table shows, per run, the mean and sample standard
deviation over the seeds of the per-seed mean (so the spread is seed-to-seed, not case-to-case), then for every run
after the first its difference to the first and, with at least two seeds on both sides, the two-sided Welch t-test
p-value over the per-seed means. The legend quotes each shown metric's definition (units, empty-case rules) from the
summaries' ``metric_definitions``.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.utils import look_up_option
from scipy import stats

from bundle.workflows.common.case_report import SUMMARY_JSON

__all__ = ["parse_run_spec", "resolve_summary_paths", "load_summary", "load_runs", "compare_table", "main"]

_GLOB_CHARS = ("*", "?", "[")
#: marks a summary read from an item-level report (see :func:`load_summary`)
ITEM_LEVEL = "item_level"


def parse_run_spec(spec: str) -> tuple[str, list[str]]:
    """Split ``"label=DIR1,DIR2,..."`` into ``("label", ["DIR1", "DIR2", ...])``.

    Raises:
        ValueError: no ``=``, an empty label or no folder.
    """
    label, sep, rest = spec.partition("=")
    entries = [e.strip() for e in rest.split(",") if e.strip()]
    if not sep or not label.strip() or not entries:
        raise ValueError(f"--run must look like LABEL=DIR1,DIR2,... (globs allowed), got {spec!r}")
    return label.strip(), entries


def resolve_summary_paths(entries: Sequence[str], label: str = "") -> list[Path]:
    """Expand globs and turn each folder into its ``metrics_summary.json`` (a ``.json`` file is taken as is).

    Raises:
        FileNotFoundError: a glob matches nothing, or a summary file does not exist (the message names the path).
    """
    where = f" (run {label!r})" if label else ""
    paths: list[Path] = []
    for entry in entries:
        if any(ch in entry for ch in _GLOB_CHARS):
            matches = sorted(glob.glob(entry))
            if not matches:
                raise FileNotFoundError(f"no path matches the pattern {entry!r}{where}")
        else:
            matches = [entry]
        for m in matches:
            path = Path(m)
            if path.suffix.lower() != ".json":
                path = path / SUMMARY_JSON
            if not path.is_file():
                raise FileNotFoundError(f"metrics summary not found: {path}{where}")
            paths.append(path)
    return paths


def load_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Read one ``metrics_summary.json``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not JSON or has no ``metrics`` mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics summary not found: {path}")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if isinstance(summary, Mapping) and "metrics" not in summary and isinstance(summary.get("per_class"), Mapping):
        summary = {**summary, "metrics": _item_level_metrics(summary), ITEM_LEVEL: True}
    if not isinstance(summary, Mapping) or not isinstance(summary.get("metrics"), Mapping):
        raise ValueError(f"{path} has no 'metrics' mapping: is it the metrics_summary.json of a report?")
    return dict(summary)


def _per_seed_value(summaries: Sequence[Mapping[str, Any]]) -> str:
    """What one seed's cell value is, for the legend."""
    item_level = {bool(s.get(ITEM_LEVEL)) for s in summaries}
    if item_level == {True}:
        return "value computed over all items at once"
    if item_level == {False}:
        return "mean over cases"
    return "mean over cases (per-case reports) or value over all items (item-level reports)"


def _item_level_metrics(summary: Mapping[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """An item-level summary (``per_class`` / ``mean`` of one value each, e.g. a classification report, whose metrics
    are computed over all items at once) in the per-case shape ``{class: {metric: {"mean": value}}}``; the mean over
    classes becomes the class ``mean``."""
    per_class = {str(c): dict(m) for c, m in summary["per_class"].items()}
    if isinstance(summary.get("mean"), Mapping):
        per_class["mean"] = dict(summary["mean"])
    return {c: {m: {"mean": v} for m, v in metrics.items()} for c, metrics in per_class.items()}


def load_runs(specs: Sequence[str]) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """Parse ``--run`` specs and load every summary: ``{label: [(path, summary), ...]}`` in the order given.

    Raises:
        ValueError: a label is used twice, or a spec is malformed.
        FileNotFoundError: see :func:`resolve_summary_paths`.
    """
    runs: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for spec in specs:
        label, entries = parse_run_spec(spec)
        if label in runs:
            raise ValueError(f"run label {label!r} given twice: put all its folders in one --run")
        runs[label] = [(p, load_summary(p)) for p in resolve_summary_paths(entries, label)]
    return runs


def _seed_means(summaries: Sequence[Mapping[str, Any]], cls: str, metric: str) -> np.ndarray:
    values = []
    for s in summaries:
        mean = s["metrics"].get(cls, {}).get(metric, {}).get("mean")
        if mean is not None and math.isfinite(mean):
            values.append(float(mean))
    return np.asarray(values, dtype=np.float64)


def _ordered_union(lists: Sequence[Sequence[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for items in lists:
        seen.update((i, None) for i in items)
    return list(seen)


def _cell(values: np.ndarray, digits: int) -> str:
    if values.size == 0:
        return "—"
    if values.size == 1:
        return f"{values[0]:.{digits}f} (n=1)"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f} (n={values.size})"


def _welch_p(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2 or b.size < 2:
        return float("nan")
    return float(stats.ttest_ind(b, a, equal_var=False).pvalue)


def _definitions(summaries: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, str]:
    """``{metric: definition}`` of the shown metrics, from the first summary that defines each."""
    found: dict[str, str] = {}
    for s in summaries:
        for name, text in (s.get("metric_definitions") or {}).items():
            found.setdefault(str(name), str(text))
    return {m: found[m] for m in metrics if m in found}


def _tags_text(summary: Mapping[str, Any]) -> str:
    tags = summary.get("tags") or {}
    return ", ".join(f"{k}={v}" for k, v in tags.items())


def compare_table(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    metrics: Sequence[str] | None = None,
    digits: int = 4,
    sources: Mapping[str, Sequence[str | os.PathLike]] | None = None,
) -> str:
    """Markdown comparison of runs (first run = baseline).

    Args:
        runs: ``{label: [summary per seed, ...]}``, at least one run; summaries as written by the report.
        metrics: metric names to show (e.g. ``["dice", "hd95"]``); default all, in the order of the first summary.
        digits: decimals of the cells.
        sources: optional ``{label: [path per seed]}`` listed under the table with each summary's tags.

    Returns:
        the table and its legend, as markdown text.

    Raises:
        ValueError: no run, or a metric name that no summary has (with the closest valid name).
    """
    if not runs:
        raise ValueError("give at least one run")
    labels = list(runs)
    all_summaries = [s for label in labels for s in runs[label]]
    classes = _ordered_union([list(s["metrics"]) for s in all_summaries])
    available = _ordered_union([list(m) for s in all_summaries for m in s["metrics"].values()])
    shown = available if not metrics else [look_up_option(m, available) for m in metrics]

    base = labels[0]
    header = ["class", "metric"] + [f"{label}" for label in labels]
    for label in labels[1:]:
        header += [f"Δ {label} − {base}", f"Welch p ({label} vs {base})"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    for cls in classes:
        for metric in shown:
            values = {label: _seed_means(runs[label], cls, metric) for label in labels}
            if all(v.size == 0 for v in values.values()):
                continue
            row = [cls, metric] + [_cell(values[label], digits) for label in labels]
            for label in labels[1:]:
                a, b = values[base], values[label]
                diff = f"{b.mean() - a.mean():+.{digits}f}" if a.size and b.size else "—"
                p = _welch_p(a, b)
                row += [diff, f"{p:.3g}" if math.isfinite(p) else "n/a"]
            lines.append("| " + " | ".join(row) + " |")

    lines += [
        "",
        f"Cells: mean ± sample std (ddof=1) over seeds of each seed's {_per_seed_value(all_summaries)}; n = number of "
        "seeds. "
        f"Δ: difference of those means, later run minus {base!r}. Welch p: two-sided Welch t-test over the "
        "per-seed means, only when both runs have ≥ 2 seeds (otherwise n/a).",
        "",
    ]
    definitions = _definitions(all_summaries, shown)
    if definitions:
        lines += ["Metrics, as the reports define them:"] + [f"- {m}: {d}" for m, d in definitions.items()] + [""]
    for label in labels:
        paths = list((sources or {}).get(label, []))
        lines.append(f"- **{label}**: {len(runs[label])} summaries")
        for i, s in enumerate(runs[label]):
            where = str(paths[i]) if i < len(paths) else f"#{i}"
            tags = _tags_text(s)
            lines.append(f"  - {where}" + (f" ({tags})" if tags else ""))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``compare_runs.py --run raw=D1,D2 --run samaug=D3,D4 [--metric dice ...] [--out t.md]``."""
    parser = argparse.ArgumentParser(
        prog="compare_runs.py",
        description="Compare evaluation runs over seeds from their metrics_summary.json files (markdown table).",
    )
    parser.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="LABEL=DIR[,DIR...]",
        help="a run label and its evaluation folders (one per seed; globs allowed); repeat for each run, "
        "the first is the baseline",
    )
    parser.add_argument("--metric", action="append", help="metric to show (repeatable); default all")
    parser.add_argument("--digits", type=int, default=4, help="decimals in the cells (default 4)")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    try:
        loaded = load_runs(args.run)
        table = compare_table(
            {label: [s for _, s in items] for label, items in loaded.items()},
            metrics=args.metric,
            digits=args.digits,
            sources={label: [p for p, _ in items] for label, items in loaded.items()},
        )
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    print(table, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table, encoding="utf-8")
    return 0
