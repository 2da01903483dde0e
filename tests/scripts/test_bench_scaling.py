"""``scripts/bench_scaling.py``: projection arithmetic on given numbers, datalist input and the CLI (no timing)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_scaling.py"
MEASURED = {"seconds_per_slice": 2.0, "bytes_per_slice": 1000.0, "entry_bytes": 500.0,
            "ram_bytes_per_voxel_channel": 4.0, "ram_intercept_bytes": 1e9}


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_scaling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_projection_of_equal_cases(bench):
    proj = bench.project(MEASURED, bench.uniform_cases(10, 100), (10, 10), channels=5, workers=(1, 3, 8))
    assert proj["cases"] == 10 and proj["slices"] == 1000
    # the slowest rank holds ceil(10 / W) cases of 100 slices, at 2 s per slice
    assert [(r["workers"], r["slowest_rank_cases"], r["slowest_rank_slices"], r["seconds"])
            for r in proj["precompute"]] == [(1, 10, 1000, 2000.0), (3, 4, 400, 800.0), (8, 2, 200, 400.0)]
    assert proj["disk_bytes"] == 1000 * 1000 + 10 * 500
    # 4 B x 5 channels x 10 x 10 pixels x 100 slices; the default 0.6 / 0.2 / 0.2 split keeps 6 + 2 cases in memory
    assert proj["ram_bytes_per_case"] == 200_000
    assert proj["ram_cached_cases"] == 8
    assert proj["ram_bytes"] == 1e9 + 8 * 200_000


def test_projection_follows_the_precompute_sharding(bench):
    # sorted ids a, b, c, d: rank 0 of 2 takes a and c (20 slices), rank 1 b and d (2 slices)
    slices = {"d": 1, "c": 10, "b": 1, "a": 10}
    assert bench.rank_loads(slices, 2) == [(2, 20.0), (2, 2.0)]
    (row,) = bench.project(MEASURED, slices, (4, 4), channels=1, workers=(2,))["precompute"]
    assert (row["slowest_rank_cases"], row["slowest_rank_slices"], row["seconds"]) == (2, 20.0, 40.0)


def test_brats_on_eight_workers(bench):
    spec = bench.DATASETS["brats2021"]
    (row,) = bench.project(MEASURED, bench.uniform_cases(spec.cases, spec.mean_slices), spec.in_plane, channels=9,
                           workers=(8,))["precompute"]
    assert row["slowest_rank_cases"] == math.ceil(1251 / 8) == 157
    assert row["slowest_rank_slices"] == 157 * 155


def test_projection_without_ram_measurement(bench):
    measured = {**MEASURED, "ram_bytes_per_voxel_channel": None, "ram_intercept_bytes": None}
    proj = bench.project(measured, bench.uniform_cases(3, 10), (2, 2), channels=3, workers=(1,))
    assert proj["ram_bytes"] is None and proj["ram_bytes_per_case"] is None
    assert proj["precompute"][0]["seconds"] == 60.0


def test_cached_channels_come_from_the_configs(bench):
    # image channels + prior kinds (2) + label regions of each preset
    assert bench.cached_channels("brats") == 4 + 2 + 3
    assert bench.cached_channels("lits") == 1 + 2 + 2
    assert bench.cached_channels("abdomenct1k") == 1 + 2 + 4


def test_slices_from_datalist(bench, tmp_path):
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": [{"case_id": "a", "num_slices": 74}],
                                "validation": [{"case_id": "b", "num_slices": 987}], "testing": []}))
    assert bench.slices_from_datalist(str(path)) == {"a": 74.0, "b": 987.0}
    path.write_text(json.dumps({"training": [{"case_id": "a"}]}))
    with pytest.raises(SystemExit, match=r"datalist\.json: case a has no num_slices"):
        bench.slices_from_datalist(str(path))


def test_projection_from_json_with_a_datalist(bench, tmp_path, capsys):
    results = {"device": "cpu", "machine": {"cpu": "x", "nproc": 2, "torch": "t", "threads": 2,
                                            "omp_wait_policy": "PASSIVE"},
               "priors": {"lits": {"dataset": "lits", "in_plane": [512, 512], "prior_seconds_per_slice": [3.0, 5.0],
                                   "io_seconds_per_slice": 0.5, "bytes_per_slice": 100.0, "entry_bytes": 10.0,
                                   "phantom_slices": 10, "io_seconds_case": 5.0, "slices": 2, "generator": "g",
                                   "window": "w"}}}
    source = tmp_path / "in.json"
    source.write_text(json.dumps(results))
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"case_id": f"c{i}", "num_slices": 100} for i in range(4)]}))
    out = tmp_path / "out.json"
    assert bench.main(["--from-json", str(source), "--datalist", f"lits={datalist}", "--json", str(out)]) == 0
    proj = json.loads(out.read_text())["projection"]
    # LiTS from the datalist: 4 cases of 100 slices at median 4.0 + 0.5 s; AbdomenCT-1K shares LiTS' 512 x 512
    assert proj["lits"]["cases"] == 4 and proj["lits"]["precompute"][0]["seconds"] == 400 * 4.5
    assert proj["abdomenct1k"]["cases"] == 1062 and "brats2021" not in proj
    assert "GPU (not measured here)" in capsys.readouterr().out
    # the least disturbed timing instead of the median: 3.0 + 0.5 s per slice
    assert bench.main(["--from-json", str(source), "--datalist", f"lits={datalist}", "--json", str(out),
                       "--statistic", "min"]) == 0
    assert json.loads(out.read_text())["projection"]["lits"]["precompute"][0]["seconds"] == 400 * 3.5


def test_bad_dataset_key_is_refused(bench):
    with pytest.raises(SystemExit, match="DATASET=VALUE"):
        bench.main(["--from-json", "x.json", "--mean-slices", "kits=100"])


def test_cli_help():
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    for flag in ("--device", "--prior-slices", "--ram-size", "--datalist", "--from-json"):
        assert flag in done.stdout
