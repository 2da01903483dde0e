"""Benchmark SAMAug prior generation: Meta's generator, this bundle's engine, and the network's own floor.

Example::

    python scripts/bench_priors.py                                   # tiny SAM trained on shapes, 4 phantom slices
    python scripts/bench_priors.py --model-type vit_b --slices 2 --points-per-side 16   # ViT-B, random weights
    python scripts/bench_priors.py --autocast bf16 --skip-background-points --repeat 3
    OMP_WAIT_POLICY=PASSIVE python scripts/bench_priors.py --speed-steps   # on a CPU shared with other processes

On the same phantom slices, the same model and the same point prompts it times, in one run:

(a) reference: ``segment_anything.SamAutomaticMaskGenerator.generate`` + ``samaug_prior_maps``, slice by slice (how
    the SAMAug authors' code runs; always float32 and always the full point grid);
(b) engine: ``SamAutomaticMasks(SamEngine(model)).generate_batch`` + the same ``samaug_prior_maps``;
(c) floor: the network alone for the prompts of (b): the image encoder once per slice (batched) and SAM's own
    ``prompt_encoder`` + ``mask_decoder`` (multimask) over the point grid in batches of ``points_per_batch``, nothing
    else. ``b / c`` is the engine's overhead over the network; it drops below 1 only where the engine does less
    network work than SAM's own modules (its shared first decoder block, its skipped fourth mask token).

Measurements are interleaved (a, b, c, then c, b, a, ...) and each time is the best of ``--repeat`` runs, so a burst
of load from other processes on a shared machine hits all pipelines alike. The engine's own time is broken down by
wrapping its methods on the instance (the modules are not changed). ``--speed-steps`` (off by default) measures, in the
same run, what each speed step of the engine buys and costs: the shared first decoder block, bf16 autocast, and
skipping background grid points (``--no-precision-step`` leaves out the bf16 run, which is slow on CPUs without native
bf16). On a CPU shared with other processes set ``OMP_WAIT_POLICY=PASSIVE``: spinning OpenMP threads that wait for a
descheduled sibling made small operations 5-20x slower there (docs/benchmarks.md). The last line is machine-readable:
``speedup_vs_reference=<a/b> ratio_to_floor=<b/c> seg_prior_pearson=<x> boundary_dice=<x>``
(agreement of the engine's priors with the reference's, Pearson of the segmentation priors pooled over slices and
Dice of the boundary priors).

The logic stays in this script, not in the package: it is a measuring instrument that reaches into private methods
of :class:`bundle.sam.automatic.SamAutomaticMasks` (``_decode_batch``, ``_finish_slice``) to time them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    # run from a checkout without `pip install -e .`: make this repository's package importable
    sys.path.insert(0, str(ROOT))

import bundle.sam  # noqa: E402, F401  (makes segment_anything importable without torchvision)
import bundle.sam.automatic as automatic  # noqa: E402
from bundle.testing.phantoms import brain_phantom, ct_phantom  # noqa: E402
from bundle.priors.maps import samaug_prior_maps  # noqa: E402
from bundle.workflows.common.prior_quality import prior_agreement  # noqa: E402
from bundle.sam.engine import SamEngine  # noqa: E402
from bundle.sam.loading import load_sam  # noqa: E402
from bundle.sam.slices import SliceWindow  # noqa: E402
from bundle.sam.torchvision_compat import import_segment_anything  # noqa: E402

DEFAULT_CHECKPOINT = ROOT / "models" / "bench_sam_tiny_shapes.pth"
# per model size: (slices, points per side, repeats) chosen so the default run fits its time budget on 2 CPU cores
# (tiny: about 1.5 min; ViT-B: about 4 min on an idle machine, 13 min at a load of 3-4)
DEFAULTS = {"tiny": (4, 32, 2), "small": (4, 32, 2)}
DEFAULTS_LARGE = (2, 16, 1)
AUTOCAST = {"none": None, "bf16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------------- inputs
def phantom_slices(kind: str, size: int, count: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """``[count, size, size, 3]`` uint8 axial slices of an in-memory phantom, as the bundle feeds them to SAM.

    Slices are spread evenly over the non-empty slices that hold a label (tumour / organs), so every one has
    structure to segment.
    """
    rng = np.random.default_rng(seed)
    depth = max(16, size // 4)
    if kind == "brats":
        affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # 1 mm, as BraTS NIfTIs
        images, labels = brain_phantom((size, size, depth), affine, rng)
        volume = images["flair"][None]
        window = SliceWindow("mr_percentile", channels=0)
    else:
        affine = np.diag([-0.8 * 128 / size, -0.8 * 128 / size, 2.5, 1.0])
        hu, labels = ct_phantom((size, size, depth), affine, rng, num_tumours=2)
        volume = hu[None].astype(np.float32)
        window = SliceWindow("ct_liver", channels=0)
    fitted = window.fit(volume)
    nonempty = window.nonempty(volume, fitted)
    labelled = labels.reshape(-1, depth).any(axis=0)
    candidates = np.flatnonzero(nonempty & labelled)
    if len(candidates) == 0:
        candidates = np.flatnonzero(nonempty)
    if len(candidates) < count:
        raise ValueError(f"the phantom has only {len(candidates)} non-empty slices; ask for fewer --slices")
    pick = candidates[np.round(np.linspace(0, len(candidates) - 1, count + 2)[1:-1]).astype(int)]
    return window.slices(volume, fitted, pick), pick.tolist()


def get_model(args) -> tuple[torch.nn.Module, str]:
    """The SAM to benchmark and a one-line description of its weights."""
    if args.checkpoint:
        return load_sam(args.model_type, args.checkpoint), f"checkpoint {args.checkpoint}"
    if args.model_type != "tiny":
        torch.manual_seed(args.seed)
        return load_sam(args.model_type, random_weights=True), "random weights (seeded)"
    path = DEFAULT_CHECKPOINT
    if not path.is_file():
        from bundle.testing.shapes_training import train_on_shapes

        print(f"training a tiny SAM on shapes ({args.train_steps} steps, batch 4), cached at {path} ...", flush=True)
        t0 = time.perf_counter()
        torch.manual_seed(0)
        model = load_sam("tiny", random_weights=True)
        train_on_shapes(model, steps=args.train_steps, batch=4, seed=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
        print(f"trained in {time.perf_counter() - t0:.1f} s", flush=True)
    return load_sam("tiny", path), f"trained on shapes, {path.relative_to(ROOT)}"


# ---------------------------------------------------------------------------------------------------- pipelines
def _autocast(dtype, device):
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def priors_of(records_per_slice, shape) -> list[tuple[np.ndarray, np.ndarray]]:
    return [samaug_prior_maps(records, shape) for records in records_per_slice]


def run_reference(model, images, amg: dict):
    """(a) Meta's generator and the SAMAug formula, one slice at a time."""
    sa = import_segment_anything()
    gen = sa.SamAutomaticMaskGenerator(model, output_mode="binary_mask", **amg)
    priors, counts, nonempty = [], [], []
    for image in images:
        records = gen.generate(image)
        counts.append(len(records))
        nonempty.append(sum(r["area"] > 0 for r in records))
        priors.append(samaug_prior_maps(records, image.shape[:2]))
    _sync(model.device)
    return {"priors": priors, "masks": counts, "nonempty": nonempty}


class Timers:
    """Wall time of wrapped callables, exclusive of the wrapped callables they call, keyed by call path.

    A path such as ``finish slice > NMS > upscale`` says where a call happened (SAM's upsampling can run inside
    NMS, for exact boxes, and again for the kept masks); exclusive times of all paths add up to the outermost
    wrapped call, so the breakdown has neither gaps nor double counts.
    """

    def __init__(self, device):
        self.exclusive = defaultdict(float)
        self.calls = defaultdict(int)
        self.device = device
        self._stack: list = []  # [name, time spent in wrapped children]

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            _sync(self.device)
            self._stack.append([name, 0.0])
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _sync(self.device)
                elapsed = time.perf_counter() - t0
                path = " > ".join(frame[0] for frame in self._stack)
                _, children = self._stack.pop()
                self.exclusive[path] += elapsed - children
                self.calls[path] += 1
                if self._stack:
                    self._stack[-1][1] += elapsed

        return timed


# module-level functions of bundle.sam.automatic that the engine's finishing step may call (the module evolves: only
# those that exist are wrapped)
_MODULE_HOOKS = {"exact_greedy_nms": "NMS"}
_GENERATOR_HOOKS = {"_decode_batch": "decode batch", "_finish_slice": "finish slice",
                    "_full_resolution": "full-res masks"}
_ENGINE_HOOKS = {"embed": "encoder", "decode_tokens": "decoder tokens", "mask_logits": "mask logits",
                 "upscale": "upscale"}


def make_engine_gen(model, args, autocast: str, skip: bool):
    engine = SamEngine(model, batch_size=args.batch_size, autocast=autocast)
    return automatic.SamAutomaticMasks(engine, skip_background_points=skip, **amg_kwargs(args))


def run_engine(model, images, args, autocast: str, skip: bool, breakdown: bool):
    """(b) this bundle's engine and the same SAMAug formula; with ``breakdown``, its methods are timed."""
    gen = make_engine_gen(model, args, autocast, skip)
    timers = Timers(model.device)
    originals = {name: getattr(automatic, name) for name in _MODULE_HOOKS if hasattr(automatic, name)}
    generate = gen.generate_batch
    if breakdown:
        # instance attributes shadow the methods; the module's own code is not changed
        for obj, hooks in ((gen.engine, _ENGINE_HOOKS), (gen, _GENERATOR_HOOKS)):
            for attr, label in hooks.items():
                if hasattr(obj, attr):
                    setattr(obj, attr, timers.wrap(label, getattr(obj, attr)))
        for attr, fn in originals.items():
            setattr(automatic, attr, timers.wrap(_MODULE_HOOKS[attr], fn))
        generate = timers.wrap("generate_batch", generate)
    try:
        records = generate(images)
        _sync(model.device)
        t1 = time.perf_counter()
        priors = priors_of(records, images.shape[1:3])
        t2 = time.perf_counter()
    finally:
        for attr, fn in originals.items():
            setattr(automatic, attr, fn)
    out = {"priors": priors, "masks": [len(r) for r in records], "prompts": len(gen._prompts(images)[0])}
    if breakdown:
        out["breakdown"] = {**timers.exclusive, "prior maps (samaug_prior_maps)": t2 - t1}
        out["calls"] = dict(timers.calls)
    return out


def summarise(breakdown: dict) -> dict:
    """The call-path breakdown rolled up into the stages of the brief."""
    groups = {"encoder": 0.0, "decoder tokens": 0.0, "mask logits": 0.0,
              "decode-batch filtering: low-res stability, boxes, bookkeeping": 0.0, "finishing: NMS": 0.0,
              "finishing: upscale (SAM postprocess_masks)": 0.0, "finishing: full-res stability, boxes, records": 0.0,
              "prior maps (samaug_prior_maps)": 0.0, "rest of generate_batch (prompt grid, loop)": 0.0}
    for path, sec in breakdown.items():
        leaf, parts = path.split(" > ")[-1], path.split(" > ")
        if leaf in ("encoder", "decoder tokens", "mask logits") or leaf.startswith("prior maps"):
            key = leaf if not leaf.startswith("prior maps") else "prior maps (samaug_prior_maps)"
        elif leaf == "upscale":
            key = "finishing: upscale (SAM postprocess_masks)" if "finish slice" in parts else \
                "decode-batch filtering: low-res stability, boxes, bookkeeping"
        elif leaf == "NMS":
            key = "finishing: NMS"
        elif "finish slice" in parts:
            key = "finishing: full-res stability, boxes, records"
        elif "decode batch" in parts:
            key = "decode-batch filtering: low-res stability, boxes, bookkeeping"
        else:
            key = "rest of generate_batch (prompt grid, loop)"
        groups[key] += sec
    return groups


def floor_prompts(model, images, args, skip: bool) -> tuple[np.ndarray, np.ndarray]:
    """The engine's own prompt set (slice index, x/y pixels), so the floor decodes exactly the same prompts."""
    return make_engine_gen(model, args, "none", skip)._prompts(images)


@torch.inference_mode()
def run_floor(model, images, args, autocast: str, skip: bool):
    """(c) image encoder (batched) + SAM's own prompt encoder and mask decoder over the grid; nothing else."""
    sa = import_segment_anything()
    dtype, device = AUTOCAST[autocast], model.device
    resize = sa.utils.transforms.ResizeLongestSide(model.image_encoder.img_size)
    idx, coords = floor_prompts(model, images, args, skip)
    t0 = time.perf_counter()
    embeddings = []
    for start in range(0, len(images), args.batch_size):
        batch = np.stack([resize.apply_image(im) for im in images[start : start + args.batch_size]])
        x = model.preprocess(torch.as_tensor(batch, device=device).permute(0, 3, 1, 2).float())
        with _autocast(dtype, device):
            embeddings.append(model.image_encoder(x).float())
    embeddings = torch.cat(embeddings)
    _sync(device)
    t1 = time.perf_counter()
    pe = model.prompt_encoder.get_dense_pe()
    for s in range(len(images)):
        pts = resize.apply_coords(coords[idx == s], images.shape[1:3])
        for start in range(0, len(pts), args.points_per_batch):
            p = torch.as_tensor(pts[start : start + args.points_per_batch], dtype=torch.float32, device=device)
            labels = torch.ones(len(p), 1, dtype=torch.int, device=device)
            with _autocast(dtype, device):
                sparse, dense = model.prompt_encoder(points=(p[:, None, :], labels), boxes=None, masks=None)
                model.mask_decoder(
                    image_embeddings=embeddings[s : s + 1],
                    image_pe=pe,
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=True,
                )
    _sync(device)
    t2 = time.perf_counter()
    return {"encoder": t1 - t0, "decoder": t2 - t1}


@torch.inference_mode()
def run_engine_decoder(model, args, emb, idx, coords, autocast: str, shared: bool):
    """The engine's decoder alone (decode_tokens + mask_logits, all prompts): step (1) with and without sharing.

    A zero ``embedding_offset`` sends :meth:`SamEngine.decode_tokens` down its per-prompt path (every prompt gets
    its own copy of the image tokens in all blocks) with otherwise identical code, which isolates the shared block.
    """
    engine = SamEngine(model, batch_size=args.batch_size, autocast=autocast)
    h, w = emb.embeddings.shape[-2:]
    out_iou, out_logits = [], []
    t0 = time.perf_counter()
    for start in range(0, len(idx), args.points_per_batch):
        b_idx = torch.as_tensor(idx[start : start + args.points_per_batch])
        b_pts = torch.as_tensor(coords[start : start + args.points_per_batch], dtype=torch.float32)
        offset = None if shared else torch.zeros(len(b_idx), 1, h, w, device=model.device)
        dec = engine.decode_tokens(emb, b_idx, point_coords=b_pts[:, None], point_labels=torch.ones(len(b_idx), 1),
                                   embedding_offset=offset)
        logits = engine.mask_logits(dec)
        if start == 0:
            out_iou, out_logits = dec.iou[:, 1:], logits
    _sync(model.device)
    return {"time": time.perf_counter() - t0, "iou": out_iou, "logits": out_logits}


@torch.inference_mode()
def plain_decoder_outputs(model, emb, idx, coords, n: int):
    """SAM's own mask decoder for the first ``n`` prompts (all of slice ``idx[0]``): the numerical reference."""
    sa = import_segment_anything()
    resize = sa.utils.transforms.ResizeLongestSide(model.image_encoder.img_size)
    s = int(idx[0])
    device = model.device
    pts = torch.as_tensor(resize.apply_coords(coords[:n], emb.original_size), dtype=torch.float32, device=device)
    labels = torch.ones(n, 1, dtype=torch.int, device=device)
    sparse, dense = model.prompt_encoder(points=(pts[:, None], labels), boxes=None, masks=None)
    low, iou = model.mask_decoder(emb.embeddings[s : s + 1], model.prompt_encoder.get_dense_pe(), sparse, dense,
                                  multimask_output=True)
    return iou, low


# ---------------------------------------------------------------------------------------------------- settings
def amg_kwargs(args) -> dict:
    return {
        "points_per_side": args.points_per_side,
        "points_per_batch": args.points_per_batch,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
        "stability_score_offset": args.stability_score_offset,
        "box_nms_thresh": args.box_nms_thresh,
    }


# ---------------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-type", default="tiny", help="SAM architecture (tiny, small, vit_b, ...); default tiny")
    p.add_argument("--checkpoint", default=None,
                   help="SAM weights; default: tiny trained on shapes (cached in models/), others random weights")
    p.add_argument("--train-steps", type=int, default=60, help="shapes-training steps for the default tiny SAM")
    p.add_argument("--phantom", choices=("brats", "lits"), default="brats", help="BraTS FLAIR or LiTS CT phantom")
    p.add_argument("--size", type=int, default=128, help="in-plane phantom size (slices are size x size)")
    p.add_argument("--slices", type=int, default=None, help="phantom slices (default 4 for tiny, 2 for ViTs)")
    p.add_argument("--points-per-side", type=int, default=None, help="grid side (default 32 for tiny, 16 for ViTs)")
    p.add_argument("--points-per-batch", type=int, default=64)
    p.add_argument("--pred-iou-thresh", type=float, default=0.0)
    p.add_argument("--stability-score-thresh", type=float, default=0.0)
    p.add_argument("--stability-score-offset", type=float, default=1.0)
    p.add_argument("--box-nms-thresh", type=float, default=0.7)
    p.add_argument("--batch-size", type=int, default=4, help="slices per image-encoder batch (engine and floor)")
    p.add_argument("--autocast", choices=tuple(AUTOCAST), default="none",
                   help="precision of (b) and (c); the reference always runs float32")
    p.add_argument("--skip-background-points", action="store_true",
                   help="(b) and (c) skip grid points on zero-valued background; the reference keeps the full grid")
    p.add_argument("--repeat", type=int, default=None,
                   help="interleaved repetitions, the best time of each is kept (default 2 for tiny, 1 for ViTs)")
    p.add_argument("--speed-steps", action="store_true",
                   help="also measure each speed step of the engine (shared block, bf16, background skip)")
    p.add_argument("--precision-step", action=argparse.BooleanOptionalAction, default=True,
                   help="with --speed-steps: also run engine and floor in the other precision (bf16 <-> float32); "
                        "slow where the CPU has no native bf16 (12x for ViT-B on AVX2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    return p


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def code_versions() -> dict:
    """sha256 prefixes of the engine's modules, so a number can be tied to the code it measured."""
    from bundle.hashing import file_sha256

    files = ("bundle/sam/engine.py", "bundle/sam/automatic.py", "bundle/priors/maps.py")
    return {f: file_sha256(ROOT / f)[:12] for f in files}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    slices_default, pps_default, repeat_default = DEFAULTS.get(args.model_type, DEFAULTS_LARGE)
    args.slices = args.slices or slices_default
    args.points_per_side = args.points_per_side or pps_default
    args.repeat = args.repeat or repeat_default
    if args.repeat < 1:
        raise SystemExit("--repeat must be >= 1")
    load_start = os.getloadavg()
    started = time.perf_counter()

    model, weights = get_model(args)
    model.to(args.device).eval()
    device = model.device
    images, picked = phantom_slices(args.phantom, args.size, args.slices, args.seed)
    main_ac, alt_ac = args.autocast, ("bf16" if args.autocast == "none" else "none")
    skip = args.skip_background_points

    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print("code: " + ", ".join(f"{k} {v}" for k, v in code_versions().items()))
    wait_policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"load average at start (1/5/15 min): {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}; "
          f"OMP_WAIT_POLICY={wait_policy}")
    if device.type == "cpu" and torch.get_num_threads() > 1 and wait_policy.upper() != "PASSIVE" and \
            load_start[0] > (os.cpu_count() or 1):
        # spinning OpenMP threads wait for a sibling that another process holds: small ops became 5-20x slower here
        print("WARNING: the CPUs are oversubscribed and OpenMP threads spin at barriers; timings of small operations "
              "are distorted. Set OMP_WAIT_POLICY=PASSIVE or use --threads 1.")
    print(f"model: {args.model_type} (input {model.image_encoder.img_size}), {weights}")
    if not args.checkpoint and args.model_type != "tiny":
        print("NOTE: random weights: masks are not meaningful (often near-identical for every prompt); agreement "
              "only shows that both pipelines keep the same degenerate masks")
    print(f"slices: {args.slices} axial slices {list(picked)} of a {args.size}x{args.size} {args.phantom} phantom")
    print(f"prompts: {args.points_per_side}x{args.points_per_side} grid, points_per_batch {args.points_per_batch}; "
          f"thresholds: pred_iou {args.pred_iou_thresh}, stability {args.stability_score_thresh} "
          f"(offset {args.stability_score_offset}), box_nms {args.box_nms_thresh}")
    print(f"engine: autocast {main_ac}, encoder batch {args.batch_size}, skip_background_points {skip}; "
          f"reference: float32, full grid; repeat {args.repeat} (interleaved, best time kept)", flush=True)

    # warm-up: first calls pay for kernel selection and allocations
    run_floor(model, images[:1], argparse.Namespace(**{**vars(args), "points_per_side": 2}), main_ac, False)

    emb = None
    on_cpu = device.type == "cpu"  # on a GPU the timers' synchronisation would slow (b): break down separately
    measurements = {
        "a": lambda: run_reference(model, images, amg_kwargs(args)),
        "b": lambda: run_engine(model, images, args, main_ac, skip, breakdown=on_cpu),
        "c": lambda: run_floor(model, images, args, main_ac, skip),
    }
    if not on_cpu:
        measurements["b_breakdown"] = lambda: run_engine(model, images, args, main_ac, skip, breakdown=True)
    if args.speed_steps:
        emb = SamEngine(model, batch_size=args.batch_size, autocast=main_ac).embed(images)
        idx, coords = floor_prompts(model, images, args, skip)
        measurements.update({
            "dec_shared": lambda: run_engine_decoder(model, args, emb, idx, coords, main_ac, shared=True),
            "dec_unshared": lambda: run_engine_decoder(model, args, emb, idx, coords, main_ac, shared=False),
            "b_alt_skip": lambda: run_engine(model, images, args, main_ac, not skip, breakdown=on_cpu),
        })
        if args.precision_step:
            measurements.update({
                "b_alt_precision": lambda: run_engine(model, images, args, alt_ac, skip, breakdown=on_cpu),
                "c_alt_precision": lambda: run_floor(model, images, args, alt_ac, skip),
            })
    best, first = {}, {}
    for r in range(args.repeat):
        order = list(measurements) if r % 2 == 0 else list(reversed(measurements))
        for name in order:
            t0 = time.perf_counter()
            out = measurements[name]()
            elapsed = time.perf_counter() - t0
            print(f"  run {r + 1}/{args.repeat} {name}: {elapsed:.2f} s", flush=True)
            if name not in best or elapsed < best[name][0]:
                best[name] = (elapsed, out)
            first.setdefault(name, out)
    load_end = os.getloadavg()

    ta, tb, tc = best["a"][0], best["b"][0], best["c"][0]
    a, b, c = first["a"], best["b"][1], best["c"][1]
    pearson, dice = prior_agreement(a["priors"], b["priors"])
    print("\n== results (best of repeats) ==")
    print(f"(a) reference  {ta:8.2f} s   masks per slice {a['masks']} (non-empty {a['nonempty']})")
    print(f"(b) engine     {tb:8.2f} s   masks per slice {b['masks']} (empty masks are dropped), "
          f"prompts {b['prompts']}")
    print(f"(c) floor      {tc:8.2f} s   (encoder {c['encoder']:.2f} s + prompt encoder/mask decoder "
          f"{c['decoder']:.2f} s)")
    print(f"speedup a/b {ta / tb:.2f}x, ratio b/c {tb / tc:.3f}; priors of (b) vs (a): seg Pearson {pearson:.4f}, "
          f"boundary Dice {dice:.4f}")
    bd_source = best.get("b_breakdown", best["b"])[1]
    results = {"args": vars(args), "weights": weights, "slices": picked, "cpu": cpu_model(),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "load_start": load_start,
               "load_end": load_end, "code": code_versions(), "times": {k: v[0] for k, v in best.items()},
               "floor": c, "masks_a": a["masks"], "masks_b": b["masks"], "pearson": pearson, "dice": dice}
    if "breakdown" in bd_source:
        total = sum(bd_source["breakdown"].values())
        print(f"\n== where (b)'s time goes (timed run, {total:.2f} s; exclusive time per call path) ==")
        for path, sec in sorted(bd_source["breakdown"].items()):
            calls = bd_source["calls"].get(path, 1)
            print(f"  {path:55s} {sec:8.3f} s  {100 * sec / total:5.1f} %  ({calls} calls)")
        print("  -- by stage --")
        groups = summarise(bd_source["breakdown"])
        for name, sec in groups.items():
            print(f"  {name:55s} {sec:8.3f} s  {100 * sec / total:5.1f} %")
        print(f"  floor for comparison: encoder {c['encoder']:.3f} s, "
              f"prompt encoder + mask decoder {c['decoder']:.3f} s")
        results["breakdown"], results["stages"] = bd_source["breakdown"], groups

    if args.speed_steps:
        print("\n== speed steps (same run) ==")
        ds, du = best["dec_shared"], best["dec_unshared"]
        # the first decoder batch, as far as it belongs to the first slice (SAM's decoder takes one image)
        n = int(np.argmax(idx[: len(ds[1]["iou"])] != idx[0])) or len(ds[1]["iou"])
        iou_ref, low_ref = plain_decoder_outputs(model, emb, idx, coords, n)
        err_s = float((ds[1]["logits"][:n] - low_ref).abs().max())
        err_u = float((du[1]["logits"][:n] - low_ref).abs().max())
        err_iou = float((ds[1]["iou"][:n] - iou_ref).abs().max())
        print(f"(1) shared first decoder block, decoder only ({len(idx)} prompts, autocast {main_ac}): "
              f"shared {ds[0]:.2f} s, engine unshared {du[0]:.2f} s, plain mask_decoder (floor) {c['decoder']:.2f} s "
              f"-> {du[0] / ds[0]:.2f}x vs unshared, {c['decoder'] / ds[0]:.2f}x vs plain; max |logit diff| vs plain "
              f"{err_s:.2e} (unshared {err_u:.2e}), max |IoU diff| {err_iou:.2e}")
        if args.precision_step:
            bp, cp = best["b_alt_precision"], best["c_alt_precision"]
            pa, da = prior_agreement(a["priors"], bp[1]["priors"])
            enc_main, enc_alt = c["encoder"], cp[1]["encoder"]
            dec_main, dec_alt = c["decoder"], cp[1]["decoder"]
            labels = {"none": "float32", "bf16": "bf16"}
            print(f"(2) autocast {labels[main_ac]} -> {labels[alt_ac]}: encoder {enc_main:.2f} -> {enc_alt:.2f} s "
                  f"({enc_main / enc_alt:.2f}x), plain decoder {dec_main:.2f} -> {dec_alt:.2f} s "
                  f"({dec_main / dec_alt:.2f}x), engine {tb:.2f} -> {bp[0]:.2f} s ({tb / bp[0]:.2f}x); "
                  f"priors vs (a) with {labels[alt_ac]}: seg Pearson {pa:.4f}, boundary Dice {da:.4f}")
        bs = best["b_alt_skip"]
        ps, dsk = prior_agreement(a["priors"], bs[1]["priors"])
        print(f"(3) skip_background_points {skip} -> {not skip}: engine {tb:.2f} -> {bs[0]:.2f} s "
              f"({tb / bs[0]:.2f}x), prompts {b['prompts']} -> {bs[1]['prompts']}; priors vs (a): "
              f"seg Pearson {ps:.4f}, boundary Dice {dsk:.4f}")
        results["speed_steps"] = {
            "decoder_shared_s": ds[0], "decoder_unshared_s": du[0], "decoder_plain_s": c["decoder"],
            "max_logit_diff_shared": err_s, "max_logit_diff_unshared": err_u, "max_iou_diff": err_iou,
            "skip_toggled": not skip,
            "skip_engine_s": [tb, bs[0]], "skip_prompts": [b["prompts"], bs[1]["prompts"]],
            "skip_agreement": [ps, dsk],
        }
        if args.precision_step:
            results["speed_steps"].update({
                "alt_precision": alt_ac, "encoder_s": [enc_main, enc_alt], "plain_decoder_s": [dec_main, dec_alt],
                "engine_s": [tb, bp[0]], "alt_precision_agreement": [pa, da],
                "alt_precision_breakdown": bp[1].get("breakdown"),
            })
    print(f"\nload average at end (1/5/15 min): {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}; "
          f"wall time {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"speedup_vs_reference={ta / tb:.3f} ratio_to_floor={tb / tc:.3f} seg_prior_pearson={pearson:.4f} "
          f"boundary_dice={dice:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
