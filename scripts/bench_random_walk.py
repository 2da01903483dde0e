"""Benchmark the WeakMedSAM random walk: the stencil ``random_walk`` against the dense ``dense_random_walk``.

Examples (one line each; set ``OMP_WAIT_POLICY=PASSIVE`` on a CPU shared with other processes, so that idle OpenMP
threads sleep instead of spinning)::

    OMP_WAIT_POLICY=PASSIVE python scripts/bench_random_walk.py                      # 64^2, 128^2, 256^2 grids
    OMP_WAIT_POLICY=PASSIVE python scripts/bench_random_walk.py --threads 2 --classes 4
    OMP_WAIT_POLICY=PASSIVE python scripts/bench_random_walk.py --sizes 16 24 --repeat 1   # smoke

For each square grid side S it times whole calls (input conversion, affinities / matrix, ``--steps`` walk steps) of
both functions on the same random inputs (summed logits ~ N(0, 2^2), CAMs ~ U(0, 1)), ``--repeat`` times after one
untimed warm-up call on a 16 x 16 grid, and reports the median. The dense reference runs only where its N x N float64
matrix is allowed (``N <= DENSE_MAX_PIXELS``); elsewhere the table says how much memory it would need. Both run in
this process, so the ratio dense / stencil is measured in the same run. torch uses ``--threads`` threads (default 1),
and so does numpy's BLAS when ``threadpoolctl`` is installed.

Peak memory is the growth of the peak resident set size of a fresh child process during one call: the child imports,
makes one warm-up call and the inputs, resets its peak (``/proc/self/clear_refs``), reads ``VmRSS`` and, after the
call, ``VmHWM`` (``/proc/self/status``). This sees torch's allocations (which ``tracemalloc`` does not) and measures
both functions the same way. (``ru_maxrss`` is no use here: a child inherits its parent's resident size at the fork.)
Linux only; elsewhere the memory columns read ``n/a``. The dense matrix is written only on the band of rows within
reach, so zero pages that are only read may not count: the nominal size of ``T`` has its own column.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from monai.utils import optional_import

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`

from bundle.priors.random_walk import DENSE_MAX_PIXELS, dense_random_walk, random_walk

threadpool_limits, has_threadpoolctl = optional_import("threadpoolctl", name="threadpool_limits")

METHODS = {"stencil": random_walk, "dense": dense_random_walk}
COLUMNS = (
    "grid",
    "N",
    "stencil median (ms)",
    "stencil peak RSS (MiB)",
    "dense median (ms)",
    "dense peak RSS (MiB)",
    "dense T (GiB)",
    "dense / stencil",
    "max abs diff",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="grid sides S (S x S grids)")
    parser.add_argument("--classes", type=int, default=1, help="number of CAM classes C")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per method and size (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch (and BLAS) threads")
    parser.add_argument("--beta", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--radius", type=int, default=5)
    parser.add_argument("--border", default="all", choices=["all", "interior"])
    parser.add_argument(
        "--memory", action=argparse.BooleanOptionalAction, default=True, help="measure peak memory in child processes"
    )
    parser.add_argument("--seed", type=int, default=0)
    # internal: measure one call in this (child) process and print the peak RSS growth in bytes
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "SIZE"), help=argparse.SUPPRESS)
    return parser


def _inputs(size: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(size, size)).astype(np.float32)
    cams = rng.random((classes, size, size)).astype(np.float32)
    return logits, cams


def _call(method: str, size: int, args: argparse.Namespace):
    logits, cams = _inputs(size, args.classes, args.seed)
    return METHODS[method](logits, cams, args.beta, args.steps, args.radius, args.border)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    # "5" resets VmHWM to the current resident size (Linux >= 4.0); without it VmHWM counts from the exec
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _child(method: str, size: int, args: argparse.Namespace) -> int:
    _call(method, 16, args)
    logits, cams = _inputs(size, args.classes, args.seed)
    _reset_peak_rss()
    before = _status_bytes("VmRSS")
    METHODS[method](logits, cams, args.beta, args.steps, args.radius, args.border)
    print(_status_bytes("VmHWM") - before)
    return 0


def _peak_rss(method: str, size: int, args: argparse.Namespace) -> str:
    if not args.memory or not sys.platform.startswith("linux"):
        return "n/a"
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        method,
        str(size),
        "--classes",
        str(args.classes),
        "--threads",
        str(args.threads),
        "--beta",
        str(args.beta),
        "--steps",
        str(args.steps),
        "--radius",
        str(args.radius),
        "--border",
        args.border,
        "--seed",
        str(args.seed),
    ]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return f"failed ({result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode})"
    return f"{int(result.stdout.split()[-1]) / 2**20:.1f}"


def _median_ms(method: str, size: int, args: argparse.Namespace) -> tuple[float, np.ndarray]:
    logits, cams = _inputs(size, args.classes, args.seed)
    times, out = [], None
    for _ in range(args.repeat):
        start = time.perf_counter()
        out = METHODS[method](logits, cams, args.beta, args.steps, args.radius, args.border)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), np.asarray(out)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(args: argparse.Namespace) -> str:
    """One line describing the machine and the thread settings of the run."""
    blas = f"BLAS threads {args.threads}" if has_threadpoolctl else "BLAS threads not limited (no threadpoolctl)"
    return (
        f"CPU: {_cpu_model()}, {os.cpu_count()} logical cores; torch {torch.__version__} with "
        f"{torch.get_num_threads()} thread(s); numpy {np.__version__}, {blas}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; Python {platform.python_version()}"
    )


def _row(size: int, args: argparse.Namespace) -> list[str]:
    n = size * size
    stencil_ms, stencil_out = _median_ms("stencil", size, args)
    row = [f"{size} x {size}", str(n), f"{stencil_ms:.1f}", _peak_rss("stencil", size, args)]
    nominal = f"{8 * n * n / 2**30:.3g}"
    if n > DENSE_MAX_PIXELS:
        return [*row, f"does not fit (needs {nominal} GiB)", "-", nominal, "-", "-"]
    dense_ms, dense_out = _median_ms("dense", size, args)
    diff = float(np.abs(stencil_out - dense_out).max())
    return [
        *row,
        f"{dense_ms:.1f}",
        _peak_rss("dense", size, args),
        nominal,
        f"{dense_ms / stencil_ms:.3g}x",
        f"{diff:.1e}",
    ]


def _table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    blas = threadpool_limits(limits=args.threads) if has_threadpoolctl else contextlib.nullcontext()
    with blas:
        if args.child:
            return _child(args.child[0], int(args.child[1]), args)
        _call("stencil", 16, args)
        _call("dense", 16, args)
        print(machine_line(args))
        print(
            f"C = {args.classes}, beta = {args.beta:g}, steps = {args.steps}, radius = {args.radius}, "
            f"border = {args.border}, median of {args.repeat} call(s); peak RSS = growth of a child process's peak "
            "resident size (VmHWM) during the call"
        )
        print()
        print(_table([_row(size, args) for size in args.sizes]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
