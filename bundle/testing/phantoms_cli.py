"""Command line: write phantom datasets in the real datasets' on-disk layouts.

    python scripts/make_phantoms.py --dataset lits --out data/lits --cases 4 --size 64 --seed 0 --dicom
"""

from __future__ import annotations

import argparse
import logging
from typing import Sequence

from bundle.testing.phantom_writers import DATASETS, PhantomCase, make_phantoms

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make_phantoms",
        description="Write phantom CT/MRI datasets in the exact layouts of BraTS, LiTS, AbdomenCT-1K and MSD.",
    )
    parser.add_argument("--dataset", required=True, choices=DATASETS, help="which dataset layout to write")
    parser.add_argument("--out", required=True, help="output folder (the dataset root)")
    parser.add_argument("--cases", type=int, default=4, help="number of cases (default 4)")
    parser.add_argument("--size", type=int, default=64, help="in-plane matrix size; slice counts scale with it")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    parser.add_argument(
        "--dicom", action="store_true", help="CT datasets: also write the first case as a DICOM series in OUT/dicom/"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point (``sam-priors-phantoms``); returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def report(case: PhantomCase) -> None:
        extra = f"  dicom: {case.dicom_dir}" if case.dicom_dir else ""
        print(f"{case.case_id}: shape {case.shape}  label {case.label}{extra}", flush=True)

    try:
        make_phantoms(
            args.dataset, args.out, cases=args.cases, size=args.size, seed=args.seed, dicom=args.dicom, progress=report
        )
    except ValueError as err:
        parser.error(str(err))
    return 0
