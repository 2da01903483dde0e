"""Prior quality: how well each mask generator's masks cover the labelled structures of phantom BraTS, LiTS and
AbdomenCT-1K slices (``docs/prior_quality.md``).

Example::

    OMP_WAIT_POLICY=PASSIVE python scripts/prior_quality.py --out runs/prior_quality
    python scripts/prior_quality.py --datasets lits --cases 1 --slices-per-case 2 --box-grid '{"box_stride": 1.0}'

For every labelled structure (the dataset's regions: BraTS WT/TC/ET, LiTS liver/tumour, AbdomenCT-1K's four organs)
on every sampled slice, the coverage is the Dice of the best-matching mask
(:mod:`bundle.workflows.common.prior_quality`). Phantom cases are written to disk and read back through the
bundle's own loader and slice window, as precompute reads them.

Generators, all on the same slices:
- ``lite_medsam_boxes``: LiteMedSAM, box-grid masks with the box-grid settings of ``configs/sam_priors.json``
  (plus one row per ``--box-grid`` variant: those settings updated with the given JSON);
- ``lite_medsam_points``: LiteMedSAM, Meta's point-grid masks with the ``amg`` settings of ``configs/sam_priors.json``
  (``points_per_side`` from ``--points-per-side``);
- ``fallback``: the weight-free region-proposal generator.
LiteMedSAM's image embedding is computed once per slice and shared by its generators; ``encoder s/slice`` is that
shared cost, ``s/slice`` each generator's own.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # also runs from a checkout without `pip install -e .`

from bundle.data.labels import DATASETS  # noqa: E402
from bundle.testing.phantom_writers import make_phantoms  # noqa: E402
from bundle.priors.precompute import default_loader  # noqa: E402
from bundle.workflows.common.prior_quality import coverage_summary, structure_coverage  # noqa: E402
from bundle.sam.automatic import SamAutomaticMasks  # noqa: E402
from bundle.sam.box_grid import SamBoxGridMasks  # noqa: E402
from bundle.sam.engine import SamEngine  # noqa: E402
from bundle.sam.fallback import RegionProposalMasks  # noqa: E402
from bundle.sam.loading import sam_info  # noqa: E402
from bundle.sam.slices import SliceWindow  # noqa: E402

#: dataset -> (phantom layout, datalist dataset name, slice window of its preset)
DATASET_SETUPS = {
    "brats": ("brats2021", "brats", {"preset": "mr_percentile", "channels": 0}),
    "lits": ("lits", "lits", {"preset": "ct_liver", "channels": 0}),
    "abdomenct1k": ("abdomenct1k", "abdomenct1k", {"preset": "ct_abdomen", "channels": 0}),
}


def shared_settings() -> dict:
    return json.loads((ROOT / "configs" / "sam_priors.json").read_text())


def sampled_slices(datasets, cases: int, size: int, slices_per_case: int, seed: int, workdir: Path):
    """Yield ``(dataset, case_id, rgb [n, H, W, 3] uint8, labels [n, H, W])`` of labelled slices, evenly sampled."""
    for name in datasets:
        layout, spec_name, window_args = DATASET_SETUPS[name]
        regions = DATASETS[spec_name].regions
        window = SliceWindow(**window_args)
        for case in make_phantoms(layout, workdir / name, cases=cases, size=size, seed=seed):
            image_files = [str(p) for p in case.images.values()]
            data = default_loader(("image", "label"))({"image": image_files, "label": str(case.label)})
            image, label = data["image"], data["label"][0].numpy().astype(int)
            values = sorted({v for vs in regions.values() for v in vs})
            labelled = np.flatnonzero(np.isin(label, values).sum(axis=(0, 1)) >= 10)
            picks = labelled[np.linspace(0, len(labelled) - 1, min(slices_per_case, len(labelled))).round().astype(int)]
            rgb = window.slices(image, window.fit(image), picks)
            yield name, case.case_id, rgb, np.moveaxis(label[..., picks], -1, 0)


def make_generators(args, engine: SamEngine) -> dict:
    settings = shared_settings()
    box_base = dict(settings["box_grid"])
    generators = {"lite_medsam_boxes": SamBoxGridMasks(engine, **box_base)}
    for variant in args.box_grid:
        change = json.loads(variant)
        label = ",".join(f"{k}={v}" for k, v in change.items())
        generators[f"lite_medsam_boxes[{label}]"] = SamBoxGridMasks(engine, **{**box_base, **change})
    if args.points_per_side:
        amg = {**settings["amg"], "points_per_side": args.points_per_side}
        generators["lite_medsam_points"] = SamAutomaticMasks(engine, **amg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's "these are not SAM priors" warning: the table says so
        generators["fallback"] = RegionProposalMasks(**settings["fallback"])
    return generators


def measure(args) -> dict:
    torch.manual_seed(0)
    engine = SamEngine(sam_info("lite_medsam"), autocast="none", device="cpu")
    generators = make_generators(args, engine)
    coverage = {name: {} for name in generators}  # generator -> dataset -> region -> [dice]
    masks = {name: {} for name in generators}
    seconds = {name: 0.0 for name in generators}
    encoder_seconds, n_slices = 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for dataset, case_id, rgb, labels in sampled_slices(args.datasets, args.cases, args.size,
                                                            args.slices_per_case, args.seed, Path(tmp)):
            regions = DATASETS[DATASET_SETUPS[dataset][1]].regions
            start = time.perf_counter()
            emb = engine.embed(rgb)
            encoder_seconds += time.perf_counter() - start
            n_slices += len(rgb)
            for name, generator in generators.items():
                start = time.perf_counter()
                if isinstance(generator, RegionProposalMasks):
                    records = generator.generate_batch(rgb)
                else:
                    records = generator.generate_from_embeddings(emb, rgb)
                seconds[name] += time.perf_counter() - start
                for recs, label in zip(records, labels):
                    masks[name].setdefault(dataset, []).append(len(recs))
                    for region, value in structure_coverage(recs, label, regions).items():
                        coverage[name].setdefault(dataset, {}).setdefault(region, []).append(value)
            print(f"{dataset} {case_id}: {len(rgb)} slices", file=sys.stderr, flush=True)
    rows = []
    for name in generators:
        for dataset, by_region in coverage[name].items():
            pooled = [v for vs in by_region.values() for v in vs]
            rows.append({"generator": name, "dataset": dataset, **coverage_summary(pooled),
                         "per_region_mean": {r: float(np.mean(v)) for r, v in by_region.items()},
                         "masks_per_slice": float(np.mean(masks[name][dataset]))})
    return {"rows": rows, "seconds_per_slice": {k: v / max(n_slices, 1) for k, v in seconds.items()},
            "encoder_seconds_per_slice": encoder_seconds / max(n_slices, 1), "slices": n_slices,
            "settings": {**vars(args), "sam_priors": shared_settings()},
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}}


def markdown(result: dict) -> str:
    lines = ["| dataset | generator | structures | mean coverage | median | Dice >= 0.5 | Dice >= 0.8 | per region | "
             "masks/slice | s/slice |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(result["rows"], key=lambda r: (r["dataset"], r["generator"])):
        regions = ", ".join(f"{k} {v:.2f}" for k, v in r["per_region_mean"].items())
        lines.append(f"| {r['dataset']} | {r['generator']} | {r['n']} | {r['mean']:.3f} | {r['median']:.3f} | "
                     f"{r['at_least_0.5']:.0%} | {r['at_least_0.8']:.0%} | {regions} | {r['masks_per_slice']:.1f} | "
                     f"{result['seconds_per_slice'][r['generator']]:.2f} |")
    lines.append(f"\nLiteMedSAM encoder, shared by its generators: {result['encoder_seconds_per_slice']:.2f} s/slice "
                 f"({result['slices']} slices).")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASET_SETUPS), choices=list(DATASET_SETUPS))
    parser.add_argument("--cases", type=int, default=2, help="phantom cases per dataset")
    parser.add_argument("--size", type=int, default=128, help="phantom in-plane size")
    parser.add_argument("--slices-per-case", type=int, default=4, help="labelled slices sampled per case")
    parser.add_argument("--points-per-side", type=int, default=16, help="point grid of lite_medsam_points (0: skip)")
    parser.add_argument("--box-grid", action="append", default=[], help="JSON changes to the box-grid settings: "
                        "one more lite_medsam_boxes row per option")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="folder for quality.json and quality.md")
    args = parser.parse_args(argv)
    result = measure(args)
    table = markdown(result)
    print(table)
    if args.out:
        from bundle.atomic import write_text_atomic

        write_text_atomic(args.out / "quality.json", json.dumps(result, indent=1, default=str))
        write_text_atomic(args.out / "quality.md", table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
