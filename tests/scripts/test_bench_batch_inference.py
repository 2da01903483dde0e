"""Smoke test of ``scripts/bench_batch_inference.py`` with the weight-free prior generator: 4 small phantoms."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_batch_inference.py"


def test_bench_batch_inference_fallback_run(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_batch_inference", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--sam_model_type", "fallback", "--cases", "4", "--size", "32", "--threads", "1",
                           "--work", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    values = dict(item.split("=") for item in last.split())
    assert list(values) == ["uncached_volumes_per_min", "cached_volumes_per_min", "speedup", "slices",
                            "dicom_over_nifti_cached"]
    assert all(float(v) > 0 for v in values.values())
    assert len(list((tmp_path / "out").glob("*_pred.dcm"))) == 4  # every DICOM series got its DICOM-SEG
