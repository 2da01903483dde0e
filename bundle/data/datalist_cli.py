"""Command line: write a Decathlon-style datalist with slice labels and seeded splits for a dataset folder.

Example::

    sam-priors-datalist --dataset brats --root /data/MICCAI_BraTS_2019_Data_Training --out datalist.json
"""

from __future__ import annotations

import argparse
import sys

from bundle.data.checks import InputError
from bundle.data.datalist import build_datalist, split_sizes, write_datalist
from bundle.data.labels import DATASET_NAMES
from bundle.data.layouts import DatasetLayoutError
from bundle.errors import error_line

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam-priors-datalist",
        description="Find the cases of a BraTS / LiTS / AbdomenCT-1K / MSD folder, summarise their labels per "
        "axial slice and write a Decathlon-style datalist with seeded training/validation/testing splits.",
    )
    parser.add_argument("--dataset", required=True, choices=DATASET_NAMES, help="dataset layout to look for")
    parser.add_argument("--root", required=True, help="dataset root folder")
    parser.add_argument("--out", required=True, help="datalist JSON to write (written atomically)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="fraction of cases for validation")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="fraction of cases for testing")
    parser.add_argument("--seed", type=int, default=0, help="seed of the case permutation")
    parser.add_argument(
        "--skip-incomplete", action="store_true", help="leave out cases with problems (warned) instead of failing"
    )
    parser.add_argument("--absolute", action="store_true", help="absolute paths instead of paths relative to --root")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the tool; exits with status 2 when the dataset or a file is unusable.

    The error text comes without a traceback (a user error, not a bug): the list of problems when there are several,
    then one last line ``ERROR: <file>: <problem>`` like every bundle command.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        split_sizes(1, args.val_fraction, args.test_fraction)
    except ValueError as err:
        parser.error(str(err))
    try:
        datalist = build_datalist(
            args.dataset,
            args.root,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
            skip_incomplete=args.skip_incomplete,
            relative=not args.absolute,
            progress=not args.no_progress,
        )
        path = write_datalist(datalist, args.out)
    except (DatasetLayoutError, InputError, OSError) as err:
        details = f"{parser.prog}: error: {err}\n" if len(str(err).strip().splitlines()) > 1 else ""
        parser.exit(2, f"{details}{error_line(err)}\n")
    counts = ", ".join(f"{len(datalist[k])} {k}" for k in ("training", "validation", "testing"))
    print(f"wrote {path}: {counts} cases ({datalist['layout']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
