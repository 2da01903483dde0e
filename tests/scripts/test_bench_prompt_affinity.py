"""Smoke test of ``scripts/bench_prompt_affinity.py`` with the tiny SAM checkpoint: two 64 x 64 slices, G = 2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_prompt_affinity.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_prompt_affinity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("placement", ["auto", "boxes"])
def test_bench_prompt_affinity_tiny_run(bench, tiny_sam_checkpoint, tmp_path, capsys, placement):
    out = tmp_path / "bench.json"
    argv = ["--model", "tiny", "--checkpoint", str(tiny_sam_checkpoint), "--size", "64", "--slices", "2",
            "--grid", "2", "--placement", placement, "--affinity-size", "16", "--threads", "1", "--json", str(out)]
    threads = torch.get_num_threads()
    try:
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)  # --threads sets it for the whole test process
    lines = capsys.readouterr().out.strip().splitlines()
    assert [item.split("=")[0] for item in lines[-1].split()] == list(bench.KEYS)
    header = next(i for i, line in enumerate(lines) if line.startswith("| method"))
    assert [c.strip() for c in lines[header].strip("|").split("|")] == ["method", "encoder runs per slice", "s / slice"]
    assert lines[header + 3].startswith("| encoder per prompt (authors) | 4 |")
    results = json.loads(out.read_text())
    assert results["placement"] == ("grid" if placement == "auto" else "boxes") and results["prompts_per_slice"] == 4
    assert len(results["slices"]) == 2 and results["max_abs_m"] > 0
    assert results["max_abs_diff"] <= 1e-4 * results["max_abs_m"] + 1e-5  # the same M, to float rounding
