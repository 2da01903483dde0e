import json

import numpy as np
import pytest
from scipy import stats

from bundle.workflows.common.compare import compare_table, load_runs, main, parse_run_spec

RAW = {"dice": [0.80, 0.82, 0.84], "hd95": [10.0, 12.0, 14.0]}
SAMAUG = {"dice": [0.85, 0.86, 0.87], "hd95": [9.0, 9.5, 10.0]}


def _write_summaries(root, label, values, cls="liver"):
    dirs = []
    for seed in range(len(values["dice"])):
        d = root / f"{label}_seed{seed}"
        d.mkdir()
        metrics = {cls: {m: {"mean": v[seed], "std": 0.1, "median": v[seed], "n": 5} for m, v in values.items()}}
        summary = {"tags": {"prior_mode": label, "seed": seed}, "n_cases": 5, "class_names": [cls], "metrics": metrics}
        (d / "metrics_summary.json").write_text(json.dumps(summary))
        dirs.append(d)
    return dirs


def _rows(table):
    """``{(class, metric): [cells...]}`` of the markdown table's body."""
    rows = {}
    for line in table.splitlines():
        if line.startswith("| liver"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[(cells[0], cells[1])] = cells
    return rows


def test_table_has_exact_means_std_difference_and_welch(tmp_path):
    raw = _write_summaries(tmp_path, "raw", RAW)
    sam = _write_summaries(tmp_path, "samaug", SAMAUG)
    runs = load_runs(["raw=" + ",".join(map(str, raw)), "samaug=" + ",".join(map(str, sam))])
    table = compare_table({k: [s for _, s in v] for k, v in runs.items()})

    header = table.splitlines()[0]
    assert "| raw | samaug |" in header and "Δ samaug − raw" in header and "Welch p (samaug vs raw)" in header
    rows = _rows(table)
    assert rows[("liver", "dice")][2:5] == ["0.8200 ± 0.0200 (n=3)", "0.8600 ± 0.0100 (n=3)", "+0.0400"]
    assert rows[("liver", "hd95")][2:5] == ["12.0000 ± 2.0000 (n=3)", "9.5000 ± 0.5000 (n=3)", "-2.5000"]
    p = stats.ttest_ind(SAMAUG["dice"], RAW["dice"], equal_var=False).pvalue
    assert rows[("liver", "dice")][5] == f"{p:.3g}"
    assert "Welch t-test" in table  # the legend says what the p-value is
    assert "each seed's mean over cases" in table


def test_cli_with_globs_metric_filter_and_out_file(tmp_path, capsys):
    _write_summaries(tmp_path, "raw", RAW)
    _write_summaries(tmp_path, "samaug", SAMAUG)
    out = tmp_path / "tables" / "compare.md"
    argv = ["--run", f"raw={tmp_path}/raw_seed*", "--run", f"samaug={tmp_path}/samaug_seed*"]
    rc = main(argv + ["--metric", "dice", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed
    rows = _rows(printed)
    assert list(rows) == [("liver", "dice")]
    assert rows[("liver", "dice")][2] == f"{np.mean(RAW['dice']):.4f} ± {np.std(RAW['dice'], ddof=1):.4f} (n=3)"
    assert "raw_seed2" in printed and "seed=2" in printed  # sources and tags listed under the table


def test_single_seed_has_no_std_and_no_p(tmp_path):
    raw = _write_summaries(tmp_path, "raw", {"dice": [0.8]})
    sam = _write_summaries(tmp_path, "samaug", {"dice": [0.9, 0.92]})
    runs = load_runs([f"raw={raw[0]}", "samaug=" + ",".join(map(str, sam))])
    rows = _rows(compare_table({k: [s for _, s in v] for k, v in runs.items()}))
    assert rows[("liver", "dice")][2:] == ["0.8000 (n=1)", "0.9100 ± 0.0141 (n=2)", "+0.1100", "n/a"]


def test_missing_summary_names_the_path(tmp_path, capsys):
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_run/metrics_summary.json"):
        load_runs([f"raw={tmp_path}/empty_run"])
    with pytest.raises(FileNotFoundError, match="no path matches"):
        load_runs([f"raw={tmp_path}/nothing_*"])
    with pytest.raises(SystemExit):
        main(["--run", f"raw={tmp_path}/empty_run"])
    assert "empty_run" in capsys.readouterr().err


def test_bad_specs_and_metric_names(tmp_path):
    with pytest.raises(ValueError, match="LABEL=DIR"):
        parse_run_spec("raw")
    assert parse_run_spec("raw = a, b") == ("raw", ["a", "b"])
    raw = _write_summaries(tmp_path, "raw", RAW)
    runs = load_runs([f"raw={raw[0]}"])
    with pytest.raises(ValueError, match="dice"):
        compare_table({k: [s for _, s in v] for k, v in runs.items()}, metrics=["dic"])


def test_legend_quotes_the_reports_metric_definitions(tmp_path):
    dirs = _write_summaries(tmp_path, "raw", RAW)
    path = dirs[0] / "metrics_summary.json"
    summary = json.loads(path.read_text())
    summary["metric_definitions"] = {"dice": "3D Dice", "hd95": "HD95 in mm", "other": "not shown"}
    path.write_text(json.dumps(summary))
    runs = load_runs(["raw=" + ",".join(map(str, dirs))])
    table = compare_table({k: [s for _, s in v] for k, v in runs.items()}, metrics=["hd95"])
    assert "- hd95: HD95 in mm" in table and "3D Dice" not in table and "not shown" not in table
    plain = compare_table({"raw": [json.loads((d / "metrics_summary.json").read_text()) for d in dirs[1:]]})
    assert "as the reports define them" not in plain


def test_item_level_summaries_compare_like_per_case_ones(tmp_path):
    """A classification report's summary (one value per class and metric, plus the mean over classes) is read as the
    per-seed value of that class and metric."""
    dirs = {}
    for label, aucs in {"raw": [0.70, 0.80], "dual": [0.90, 0.94]}.items():
        dirs[label] = []
        for seed, auc in enumerate(aucs):
            d = tmp_path / f"{label}{seed}"
            d.mkdir()
            summary = {"tags": {"seed": seed}, "per_class": {"tumour": {"auc": auc, "f1": 0.5}},
                       "mean": {"auc": auc - 0.1, "f1": 0.5}, "n": 40}
            (d / "metrics_summary.json").write_text(json.dumps(summary))
            dirs[label].append(str(d))
    runs = load_runs([f"{k}={','.join(v)}" for k, v in dirs.items()])
    table = compare_table({k: [s for _, s in v] for k, v in runs.items()}, metrics=["auc"])
    cells = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): [c.strip() for c in line.strip("|").split("|")]
             for line in table.splitlines() if line.startswith("| tumour") or line.startswith("| mean")}
    assert cells[("tumour", "auc")][2:5] == ["0.7500 ± 0.0707 (n=2)", "0.9200 ± 0.0283 (n=2)", "+0.1700"]
    assert cells[("mean", "auc")][2] == "0.6500 ± 0.0707 (n=2)"
    assert "each seed's value computed over all items at once" in table
