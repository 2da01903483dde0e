"""Smoke tests of ``scripts/bench_random_walk.py`` at tiny grids (no timing asserts)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_random_walk.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_random_walk", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _table(out: str) -> list[list[str]]:
    rows = [line for line in out.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def _run(bench, capsys, argv):
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("CPU: ") and "torch" in out and "thread(s)" in out
    return _table(out)


def test_bench_prints_the_table(capsys):
    bench = _load()
    table = _run(bench, capsys, ["--sizes", "16", "24", "--repeat", "1", "--no-memory"])
    header, rule, *rows = table
    assert tuple(header) == bench.COLUMNS
    assert set(rule) == {"---"}
    assert [row[:2] for row in rows] == [["16 x 16", "256"], ["24 x 24", "576"]]
    for row in rows:
        assert len(row) == len(bench.COLUMNS)
        stencil_ms, dense_ms, ratio, diff = float(row[2]), float(row[4]), row[7], float(row[8])
        assert stencil_ms > 0 and dense_ms > 0 and ratio.endswith("x")
        assert diff < 1e-5  # both functions on the same inputs
        assert row[3] == row[5] == "n/a"


def test_bench_reports_what_does_not_fit(capsys, monkeypatch):
    bench = _load()
    monkeypatch.setattr(bench, "DENSE_MAX_PIXELS", 16 * 16)
    _, _, small, large = _run(bench, capsys, ["--sizes", "16", "24", "--repeat", "1", "--no-memory"])
    assert small[4] != "-" and large[4].startswith("does not fit (needs ") and large[4].endswith(" GiB)")
    assert large[7] == large[8] == "-"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memory is read from /proc")
def test_bench_measures_memory_in_child_processes(capsys):
    bench = _load()
    _, _, row = _run(bench, capsys, ["--sizes", "24", "--repeat", "1"])
    assert float(row[3]) >= 0 and float(row[5]) >= 0
