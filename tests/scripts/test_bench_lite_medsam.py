"""Smoke test of ``scripts/bench_lite_medsam.py``: one CT slice, a 2 x 2 point grid, one repeat (about 40 s on 2 cores)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_lite_medsam.py"
KEYS = ("encoder_ratio", "box_speedup", "box_seg_pearson", "box_boundary_dice", "point_speedup", "slices_per_s_box",
        "slices_per_s_point")


@pytest.mark.slow
def test_bench_lite_medsam_tiny_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_lite_medsam", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    argv = ["--slices", "1", "--repeat", "1", "--points-per-side", "2", "--box-stability-thresh", "0.8",
            "--permissive", "--json", str(out)]
    assert bench.main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert [item.split("=")[0] for item in last.split()] == list(KEYS)
    results = json.loads(out.read_text())
    # same model, same boxes, same semantics: the engine's box-grid priors equal the segment-anything reference's
    assert results["box_masks"] == results["box_masks_ref"]
    assert results["box_seg_pearson"] > 0.999 and results["box_boundary_dice"] > 0.999
    assert results["point_masks"] == results["point_masks_ref_nonempty"]
    assert results["encoder_max_abs_diff"] < 1e-3
