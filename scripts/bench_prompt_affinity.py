"""Benchmark WeakMedSAM's prompt affinity mining: one image embedding per slice against one per prompt.

Examples (one line each; set ``OMP_WAIT_POLICY=PASSIVE`` on a CPU shared with other processes)::

    OMP_WAIT_POLICY=PASSIVE python scripts/bench_prompt_affinity.py                      # LiteMedSAM, 4 CT slices
    OMP_WAIT_POLICY=PASSIVE python scripts/bench_prompt_affinity.py --kind brain --grid 3 --threads 2
    python scripts/bench_prompt_affinity.py --model tiny --checkpoint sam_tiny.pth --size 64 --slices 2  # smoke

On the same in-memory ``--size`` x ``--size`` phantom slices and the same SAM (default ``load_sam("lite_medsam")``,
packaged weights; ``--model`` / ``--checkpoint`` for another) it computes the summed prompt logits ``M`` of every
slice twice, float32, in one run:

1. ours: :class:`bundle.sam.prompt_affinity.PromptAffinityMiner`: one ``SamEngine.embed`` for all slices (batches of
   ``--batch-size``), then all ``G x G`` prompts of all slices decoded in batches, the low-resolution logits summed per
   slice and upscaled once (timed as its two parts: encoder and decoding);
2. the authors' approach: for every slice and every one of its ``G x G`` prompts, the image encoder runs again on the
   slice, the prompt is decoded alone (``SamEngine.predict``, single-mask output, logits upscaled to the slice) and
   the upscaled logits are summed.

Both use the same prompts (``--placement``, default the model's: boxes for LiteMedSAM) and resize ``M`` bilinearly to
the same affinity grid; the largest absolute difference of the two ``M`` is printed next to the largest ``|M|``.
Each time is the best of ``--repeat`` (interleaved). The last line is machine-readable:
``ours_s_per_slice=<x> reference_s_per_slice=<x> speedup=<reference/ours> max_abs_diff=<x> max_abs_m=<x>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`

import bundle.sam  # noqa: F401  (makes segment_anything importable)
from bundle.testing.phantoms import bench_phantom
from bundle.sam.engine import SamEngine
from bundle.sam.loading import SAM_MODELS, load_sam
from bundle.sam.prompt_affinity import PLACEMENTS, PromptAffinityMiner
from bundle.sam.slices import SliceWindow

KEYS = ("ours_s_per_slice", "reference_s_per_slice", "speedup", "max_abs_diff", "max_abs_m")


def phantom_slices(kind: str, size: int, count: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """``[count, size, size, 3]`` uint8 axial slices of a phantom that hold a label, spread evenly over them."""
    depth = max(16, size // 8)
    volume, labels, preset = bench_phantom(kind, size, depth, seed)
    window = SliceWindow(preset, channels=0)
    labelled = np.flatnonzero(np.asarray(labels).reshape(-1, depth).any(axis=0))
    if len(labelled) < count:
        raise SystemExit(f"the phantom has only {len(labelled)} labelled slices; ask for fewer")
    picked = labelled[np.round(np.linspace(0, len(labelled) - 1, count + 2)[1:-1]).astype(int)]
    return window.slices(volume, window.fit(volume), picked), picked.tolist()


def reference_maps(engine: SamEngine, miner: PromptAffinityMiner, images: np.ndarray) -> torch.Tensor:
    """The authors' ``M``: the encoder re-run for every prompt, each prompt decoded alone, upscaled logits summed."""
    maps = []
    size = (miner.affinity_size, miner.affinity_size)
    for image in images:
        prompts = miner.prompts(image.shape[:2])
        total = torch.zeros(1, 1, *image.shape[:2], device=engine.device)
        for k in range(len(next(iter(prompts.values())))):
            emb = engine.embed(image[None])
            one = {key: torch.as_tensor(value[k : k + 1]) for key, value in prompts.items()}
            logits, _, _ = engine.predict(emb, [0], multimask_output=False, return_logits=True, **one)
            total += logits
        maps.append(F.interpolate(total, size=size, mode="bilinear", align_corners=False)[0, 0])
    return torch.stack(maps)


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="lite_medsam", choices=sorted(SAM_MODELS), help="SAM model type")
    p.add_argument("--checkpoint", default=None,
                   help="SAM weights (default: the packaged weights of lite_medsam; random weights for tiny/small)")
    p.add_argument("--kind", choices=("ct", "brain"), default="ct", help="abdominal CT (default) or brain FLAIR")
    p.add_argument("--size", type=int, default=256, help="in-plane phantom size (slices are size x size)")
    p.add_argument("--slices", type=int, default=4, help="phantom slices")
    p.add_argument("--grid", type=int, default=4, help="G: G x G prompts per slice")
    p.add_argument("--placement", default="auto", choices=("auto",) + PLACEMENTS, help="prompt placement")
    p.add_argument("--affinity-size", type=int, default=64, help="side of the affinity grid M is resized to")
    p.add_argument("--batch-size", type=int, default=4, help="slices per encoder batch (ours)")
    p.add_argument("--repeat", type=int, default=1, help="interleaved repetitions, best time kept")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.slices, args.grid, args.repeat, args.batch_size, args.size, args.affinity_size) < 1:
        raise SystemExit("--slices, --grid, --repeat, --batch-size, --size and --affinity-size must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start, started = os.getloadavg(), time.perf_counter()
    model = load_sam(args.model, args.checkpoint).eval()
    engine = SamEngine(model, batch_size=args.batch_size, autocast="none", device="cpu")
    miner = PromptAffinityMiner(engine, args.placement, grid=args.grid, affinity_size=args.affinity_size)
    images, picked = phantom_slices(args.kind, args.size, args.slices, args.seed)
    n, prompts = len(images), args.grid * args.grid
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} CPUs, torch {info['torch']}, {info['threads']} threads, "
          f"OMP_WAIT_POLICY={info['omp_wait_policy']}; load average at start {' '.join(f'{x:.2f}' for x in load_start)}")
    print(f"model: {args.model} ({model.sam_info.checkpoint or 'random weights'}); placement {miner.placement}, "
          f"G = {args.grid} ({prompts} prompts per slice), affinity grid {args.affinity_size}; float32")
    print(f"slices: {n} axial slices {picked} of a {args.size}x{args.size} {args.kind} phantom; "
          f"repeat {args.repeat} (interleaved, best kept)", flush=True)

    engine.embed(images[:1])  # warm-up: first calls pay for kernel selection and allocations

    def ours():
        t0 = time.perf_counter()
        emb = engine.embed(images)
        t1 = time.perf_counter()
        maps = miner.logit_maps_from_embeddings(emb)
        return maps, {"encoder": t1 - t0, "decode": time.perf_counter() - t1}

    def reference():
        return reference_maps(engine, miner, images), {}

    best: dict = {}
    for r in range(args.repeat):
        for name, fn in ((("ours", ours), ("reference", reference))[:: 1 if r % 2 == 0 else -1]):
            t0 = time.perf_counter()
            maps, parts = fn()
            elapsed = time.perf_counter() - t0
            print(f"  run {r + 1}/{args.repeat} {name}: {elapsed:.2f} s", flush=True)
            if name not in best or elapsed < best[name][0]:
                best[name] = (elapsed, maps, parts)
    t_ours, m_ours, parts = best["ours"]
    t_ref, m_ref, _ = best["reference"]
    results = {
        "args": vars(args), "machine": info, "slices": picked, "placement": miner.placement,
        "prompts_per_slice": prompts, "ours_s_per_slice": t_ours / n, "reference_s_per_slice": t_ref / n,
        "ours_encoder_s_per_slice": parts["encoder"] / n, "ours_decode_s_per_slice": parts["decode"] / n,
        "speedup": t_ref / t_ours, "max_abs_diff": float((m_ours - m_ref).abs().max()),
        "max_abs_m": float(m_ref.abs().max()), "load_start": load_start, "load_end": os.getloadavg(),
    }
    print("\n| method | encoder runs per slice | s / slice |")
    print("|---|---|---|")
    print(f"| one embedding per slice (ours): encoder + batched decode | 1 | {results['ours_s_per_slice']:.3f} "
          f"({results['ours_encoder_s_per_slice']:.3f} + {results['ours_decode_s_per_slice']:.3f}) |")
    print(f"| encoder per prompt (authors) | {prompts} | {results['reference_s_per_slice']:.3f} |")
    print(f"\nspeedup (authors / ours): {results['speedup']:.2f}x; max |M ours - M authors| "
          f"{results['max_abs_diff']:.2e} (max |M| {results['max_abs_m']:.1f})")
    print(f"load average at end {' '.join(f'{x:.2f}' for x in results['load_end'])}; "
          f"wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(" ".join(f"{k}={results[k]:.6g}" for k in KEYS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
