"""Benchmark batch inference throughput: volumes per minute with the SAM priors computed (empty cache) against the
same run with every prior in the cache, and the cost of DICOM inputs (series read, DICOM-SEG written) against NIfTI.

Examples (one line each; set ``OMP_WAIT_POLICY=PASSIVE`` on a CPU shared with other processes)::

    OMP_WAIT_POLICY=PASSIVE python scripts/bench_batch_inference.py                      # LiteMedSAM, 4 LiTS phantoms
    OMP_WAIT_POLICY=PASSIVE python scripts/bench_batch_inference.py --cases 6 --size 64
    python scripts/bench_batch_inference.py --sam_model_type fallback                    # smoke, seconds

In one run: LiTS phantoms (``--cases`` NIfTI volumes) and a DICOM series of each, written with
:func:`bundle.testing.dicom_series.write_ct_series`; a SAMAug segmentation model trained for one epoch with the
chosen priors (its card next to it); then :func:`bundle.inference.batch.run_batch` over the NIfTI files and the DICOM
series

1. with an empty prior cache (priors computed: the reference),
2. again with ``overwrite`` (every prior read from the cache),

each pass timed as a whole and per input kind (the summary's per-input seconds). The last line is machine-readable:
``uncached_volumes_per_min=<x> cached_volumes_per_min=<x> speedup=<cached/uncached> slices=<n>
dicom_over_nifti_cached=<ratio of seconds per volume>``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`

from bundle.data.datalist import build_datalist, write_datalist
from bundle.testing.dicom_series import write_ct_series
from bundle.testing.phantom_writers import make_phantoms
from bundle.inference.batch import run_batch

CONFIGS = ROOT / "configs"
#: LiteMedSAM's box grid as the main job runs it (scripts/run_main_job.sh): minutes, not tens of minutes, on 2 cores
FAST_GRID = {"priors#box_grid#box_stride": 1.0, "priors#box_grid#refine_rounds": 0}


def _train(data_root: Path, datalist: Path, work: Path, sam_model_type: str) -> Path:
    from monai.bundle import ConfigWorkflow

    overrides = {"bundle_root": str(ROOT), "dataset_dir": str(data_root), "datalist": str(datalist),
                 "prior_cache_dir": str(work / "train_priors"), "output_dir": str(work / "run"),
                 "ckpt_dir": str(work / "models"), "priors#sam_model_type": sam_model_type, "max_epochs": 1,
                 "val_interval": 1, "slices_per_volume": 4, **FAST_GRID}
    files = [str(CONFIGS / "sam_priors.json"), str(CONFIGS / "train_samaug_seg.json"),
             str(CONFIGS / "presets" / "lits.json")]
    workflow = ConfigWorkflow(config_file=files, workflow_type="train", run_id="training", logging_file=False,
                              meta_file=str(CONFIGS / "metadata.json"), **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return work / "models"


def _per_kind(result) -> dict[str, float]:
    seconds: dict[str, list[float]] = {}
    for r in result.records:
        if r.status == "done":
            seconds.setdefault(r.kind, []).append(r.seconds)
    return {k: float(np.mean(v)) for k, v in seconds.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--sam_model_type", default="lite_medsam")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        data = work / "lits"
        make_phantoms("lits", data, cases=args.cases, size=args.size, seed=0)
        datalist = Path(write_datalist(build_datalist("lits", data, val_fraction=0.25, test_fraction=0.25, seed=0,
                                                      progress=False), data / "datalist.json"))
        start = time.perf_counter()
        model = _train(data, datalist, work, args.sam_model_type)
        train_s = time.perf_counter() - start
        volumes = sorted(data.glob("volume-*.nii"))
        for i, path in enumerate(volumes):
            image = nib.load(path)
            write_ct_series(np.rint(np.asarray(image.dataobj)).astype(np.int16), image.affine, work / "dicom" / f"s{i}",
                            uid_seed=f"bench{i}", series_description=f"bench {i}")
        inputs = [str(p) for p in volumes] + [str(work / "dicom")]
        slices = 2 * sum(nib.load(p).shape[2] for p in volumes)
        cache = work / "bench_cache"
        timings = {}
        for name, overwrite in (("uncached", False), ("cached", True)):
            start = time.perf_counter()
            result = run_batch(inputs, work / "out", model, overwrite=overwrite, prior_cache_dir=str(cache),
                               device="cpu")
            timings[name] = (time.perf_counter() - start, result)
            if result.exit_code or result.counts["done"] != 2 * len(volumes):
                raise SystemExit(f"{name} run failed: {result.counts}")
        n = 2 * len(volumes)
        print(f"trained in {train_s:.0f} s; {n} volumes ({len(volumes)} NIfTI + {len(volumes)} DICOM series), "
              f"{slices} slices, {args.sam_model_type} priors, {args.threads} threads")
        rates = {}
        for name, (seconds, result) in timings.items():
            kinds = _per_kind(result)
            rates[name] = n / seconds * 60.0
            print(f"{name:>9}: {seconds:7.1f} s, {rates[name]:7.2f} volumes/min, {slices / seconds:6.2f} slices/s; "
                  f"per volume: NIfTI {kinds.get('image', 0.0):.2f} s, DICOM {kinds.get('dicom', 0.0):.2f} s")
        cached_kinds = _per_kind(timings["cached"][1])
        dicom_ratio = cached_kinds.get("dicom", 0.0) / max(cached_kinds.get("image", 0.0), 1e-9)
        print(f"uncached_volumes_per_min={rates['uncached']:.3f} cached_volumes_per_min={rates['cached']:.3f} "
              f"speedup={rates['cached'] / rates['uncached']:.2f} slices={slices} "
              f"dicom_over_nifti_cached={dicom_ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
