"""``sam-priors-infer``: batch inference from the command line (the console script of ``pyproject.toml``).

The same run as ``python -m monai.bundle run batch_inferring --config_file configs/batch_inference.json``; see
:mod:`bundle.inference.batch` for what it reads, writes and reports. Exit status: 0 when every input is done (or
already was), 1 when any input failed (or its outputs may not be written), 2 when the run could not start (bad
arguments, an unwritable output folder, a model folder without weights or card) or found no input, 130 after Ctrl-C
(the summary of what was done is written).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bundle.errors import error_line
from bundle.overrides import as_flag

__all__ = ["main", "parser"]


def _flag(text: str) -> bool:
    try:
        return as_flag(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sam-priors-infer",
        description="Run a trained model of the bundle over NIfTI files, folders, glob patterns, datalists and DICOM "
                    "exports; write NIfTI (and DICOM-SEG for DICOM inputs) or class probabilities, and a summary.")
    p.add_argument("--input", action="append", required=True, metavar="PATH",
                   help="a file, folder (searched recursively), glob pattern or datalist; repeat for several")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--model", required=True, metavar="DIR", help="trained model folder (model.pt + model_card.json)")
    p.add_argument("--section", default="testing", help="datalist section to run (default: testing)")
    p.add_argument("--overwrite", nargs="?", const=True, default=False, type=_flag, metavar="true|false",
                   help="run inputs whose outputs exist again, also those of another model or input version (never "
                        "writes over a file it did not write); '--overwrite' alone means true, as for the bundle "
                        "command's '--overwrite true'")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--prior_cache", default=None, metavar="DIR",
                   help="SAM prior cache (default: the model's training cache if writable, else OUTPUT/prior_cache)")
    p.add_argument("--sam_checkpoint", default=None, help="base SAM checkpoint of a SAM-Mix model, if it has moved")
    p.add_argument("--no_dicom_seg", action="store_true", help="write NIfTI only, also for DICOM inputs")
    p.add_argument("--allow_modality_mismatch", nargs="?", const=True, default=False, type=_flag,
                   metavar="true|false",
                   help="run inputs whose DICOM Modality or intensity range contradicts the model card's modality "
                        "(an MR scan for a CT model); recorded in each such input's summary record")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    from bundle.inference.batch import run_batch

    try:
        result = run_batch(args.input, args.output, args.model, section=args.section, overwrite=args.overwrite,
                           device=args.device, prior_cache_dir=args.prior_cache, sam_checkpoint=args.sam_checkpoint,
                           dicom_seg=not args.no_dicom_seg, allow_modality_mismatch=args.allow_modality_mismatch)
    except KeyboardInterrupt:  # before any input ran (loading the model): nothing to summarise
        print("INTERRUPTED: batch inference stopped (Ctrl-C) before any input ran", file=sys.stderr, flush=True)
        return 130
    except Exception as error:
        logging.getLogger(__name__).debug("batch inference could not start", exc_info=True)
        print(error_line(error), file=sys.stderr, flush=True)
        return 2
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
