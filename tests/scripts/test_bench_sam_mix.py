"""Smoke test of ``scripts/bench_sam_mix.py`` with the tiny SAM checkpoint: two 256 x 256 phantom slices."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_sam_mix.py"


def test_bench_sam_mix_tiny_run(tiny_sam_checkpoint, capsys):
    spec = importlib.util.spec_from_file_location("bench_sam_mix", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--model", "tiny", "--checkpoint", str(tiny_sam_checkpoint), "--slices", "2",
                           "--repeat", "1", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    values = dict(item.split("=") for item in last.split())
    assert list(values) == ["reference_s_per_slice", "ours_s_per_slice", "speedup", "train_s_per_slice",
                            "merged_s_per_slice", "unmerged_s_per_slice", "mask_agreement"]
    assert float(values["mask_agreement"]) > 0.999  # the batched path decodes what segment-anything decodes
    assert all(float(v) > 0 for v in values.values())
