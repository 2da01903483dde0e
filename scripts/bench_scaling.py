"""Measure what one slice and one case cost (SAM priors, prior cache, SAMAug training RAM) and project real datasets.

Example::

    OMP_WAIT_POLICY=PASSIVE python scripts/bench_scaling.py --json runs/bench/scaling.json     # CPU, 1-3 min
    OMP_WAIT_POLICY=PASSIVE python scripts/bench_scaling.py --prior-slices 2 --ram-size 240    # docs/scaling.md
    python scripts/bench_scaling.py --device cuda --prior-slices 8 --skip-ram                  # per-slice GPU cost
    python scripts/bench_scaling.py --from-json runs/bench/scaling.json --datalist lits=data/lits/datalist.json

Everything runs through the bundle's own code and configs (``configs/sam_priors.json`` merged with a preset, as
``run precompute`` and ``run training`` merge them), on phantoms written in the datasets' real layouts:

1. encoder: ``SamEngine.embed`` of the configured SAM (LiteMedSAM with the packaged weights by default) on
   ``sam_batch_size`` windowed slices at BraTS size, ``--encoder-repeats`` times, median seconds per slice;
2. priors: the config's ``sam_prior`` (box grid, SAMAug prior maps) through the real prior cache
   (:class:`bundle.priors.cache.CachedSamPriord`, NIfTI writes included) on ``--prior-slices`` labelled slices cut
   from a real-size phantom case per dataset shape; seconds per slice, and the bytes of the cache entry on disk
   (``.nii.gz`` files per slice, ``entry.json`` per case). A whole 155-slice volume would take 17-77 min on 2 shared
   cores (docs/scaling.md), hence a few slices;
3. input I/O: reading the whole real-size phantom case as precompute reads it (``default_loader``) and hashing its
   files (the cache entry's fingerprints), per slice;
4. RAM: the real training command (``python -m monai.bundle run training`` with sam_priors + train_samaug_seg +
   preset, one epoch) in a child process on phantoms whose priors were precomputed, twice with different numbers of
   training cases; the child's peak resident size (``VmHWM`` of ``/proc/<pid>/status``, polled) gives bytes per
   cached voxel (the slope) and a fixed part (the intercept). The priors are made with the weight-free ``fallback``
   generator: cached priors have the same shape and dtype whatever made them, and a run whose priors are all
   cached never builds SAM.

The projection (``project``) is arithmetic on those numbers: precompute deals the sorted case ids over the
``torchrun`` ranks (rank ``r`` of ``W`` takes every ``W``-th case, :func:`bundle.priors.precompute.shard_case_ids`),
so the wall-clock is that of the slowest rank: with ``N`` equal cases ``ceil(N / W)`` cases times the per-case cost.
Each worker is assumed to be as fast as the device measured here (``W`` machines or GPUs, not ``W`` processes on
these cores). Disk is bytes per slice times slices, plus one entry per case. Every slice is counted as non-empty
(an upper bound: precompute skips empty slices and their zero priors compress to almost nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    # run from a checkout without `pip install -e .`: make this repository's package importable
    sys.path.insert(0, str(ROOT))

from bundle.data.datalist import split_sizes
from bundle.priors.precompute import shard_case_ids

CONFIGS = ROOT / "configs"
SAM_PRIORS = CONFIGS / "sam_priors.json"
PRECOMPUTE = CONFIGS / "precompute_priors.json"
TRAIN = CONFIGS / "train_samaug_seg.json"
WORKERS = (1, 8, 32)
#: the split of scripts/prepare_datalist.py's defaults; training and validation cases are held by CacheDataset
VAL_FRACTION, TEST_FRACTION = 0.2, 0.2


@dataclass(frozen=True)
class DatasetSpec:
    """A real dataset as the projection sees it: case count, slices per case (mean), in-plane size, preset."""

    key: str
    name: str
    cases: int
    mean_slices: float
    in_plane: tuple[int, int]
    preset: str
    layout: str  # scripts/make_phantoms.py --dataset
    datalist_name: str  # scripts/prepare_datalist.py --dataset
    slices_note: str


DATASETS = {
    "brats2021": DatasetSpec(
        "brats2021", "BraTS 2021", 1251, 155, (240, 240), "brats", "brats2021", "brats",
        "every BraTS 2021 volume is 240 x 240 x 155 (1 mm); 4 MR channels, FLAIR alone goes to SAM"),
    "lits": DatasetSpec(
        "lits", "LiTS", 131, 58638 / 131, (512, 512), "lits", "lits", "lits",
        "assumed: 58,638 slices over the 131 training volumes (74-987 per volume), the total quoted in LiTS papers; "
        "not counted from the data here (pass --datalist lits=PATH for the exact count)"),
    "abdomenct1k": DatasetSpec(
        "abdomenct1k", "AbdomenCT-1K", 1062, 200, (512, 512), "abdomenct1k", "abdomenct1k", "abdomenct1k",
        "assumed mean 200 slices: an abdominal field of about 400 mm at the typical 2-2.5 mm spacing of its source "
        "collections (LiTS, KiTS19, MSD pancreas/spleen, NIH pancreas; 1.25-5 mm); not counted from the data "
        "(pass --datalist abdomenct1k=PATH for the exact count)"),
}


# ---------------------------------------------------------------------------------------------------- projection
def uniform_cases(cases: int, slices: float) -> dict[str, float]:
    """``cases`` cases of ``slices`` slices each, keyed by ids that sort in case order."""
    return {f"case{i:06d}": float(slices) for i in range(int(cases))}


def rank_loads(slices_by_case: Mapping[str, float], world: int) -> list[tuple[int, float]]:
    """``(cases, slices)`` of each of ``world`` precompute ranks, dealt exactly as ``run precompute`` deals them."""
    loads = []
    for rank in range(world):
        mine = shard_case_ids(list(slices_by_case), rank, world)
        loads.append((len(mine), float(sum(slices_by_case[c] for c in mine))))
    return loads


def cached_cases(cases: int) -> int:
    """Cases a training run holds in memory: training + validation of the default split (testing is not loaded)."""
    train, val, _ = split_sizes(int(cases), VAL_FRACTION, TEST_FRACTION)
    return train + val


def project(measured: Mapping, slices_by_case: Mapping[str, float], in_plane: Sequence[int], channels: int,
            workers: Sequence[int] = WORKERS) -> dict:
    """Precompute wall-clock, disk and training RAM of one dataset from the measured per-slice and per-voxel costs.

    Args:
        measured: ``seconds_per_slice`` (SAM priors + cache write + input read/hash, per slice on one worker),
            ``bytes_per_slice`` (cache files), ``entry_bytes`` (``entry.json`` per case),
            ``ram_bytes_per_voxel_channel`` (training, per cached voxel and channel) and ``ram_intercept_bytes``
            (training's fixed part); the two RAM numbers may be ``None`` (not measured).
        slices_by_case: slices of every case (e.g. :func:`uniform_cases`).
        in_plane: ``(H, W)`` of the cached volumes.
        channels: channels the training cache holds per voxel (image + prior kinds + label regions).
        workers: precompute ranks to project for.

    Returns:
        ``{"cases", "slices", "disk_bytes", "ram_bytes_per_case", "ram_cached_cases", "ram_bytes",
        "precompute": [{"workers", "slowest_rank_cases", "slowest_rank_slices", "seconds"}, ...]}``.
    """
    n = len(slices_by_case)
    total = float(sum(slices_by_case.values()))
    per_slice = float(measured["seconds_per_slice"])
    rows = []
    for w in workers:
        cases, slices = max(rank_loads(slices_by_case, int(w)), key=lambda load: (load[1], load[0]))
        rows.append({"workers": int(w), "slowest_rank_cases": cases, "slowest_rank_slices": slices,
                     "seconds": slices * per_slice})
    held = cached_cases(n)
    out = {"cases": n, "slices": total,
           "disk_bytes": total * float(measured["bytes_per_slice"]) + n * float(measured["entry_bytes"]),
           "ram_bytes_per_case": None, "ram_cached_cases": held, "ram_bytes": None, "precompute": rows}
    if measured.get("ram_bytes_per_voxel_channel") is not None:
        voxels_per_case = int(in_plane[0]) * int(in_plane[1]) * total / max(n, 1)
        out["ram_bytes_per_case"] = float(measured["ram_bytes_per_voxel_channel"]) * channels * voxels_per_case
        out["ram_bytes"] = float(measured["ram_intercept_bytes"]) + held * out["ram_bytes_per_case"]
    return out


def gpu_formula(spec: DatasetSpec, io_seconds_per_slice: float | None) -> str:
    """The GPU projection with the one unmeasured number, the GPU's seconds per slice ``t``, left as a symbol."""
    io = "t_io" if io_seconds_per_slice is None else f"{io_seconds_per_slice:.3f}"
    return (f"{spec.name}: ceil({spec.cases} / W) x {spec.mean_slices:.0f} x (t + {io}) s "
            f"(t: SAM priors + cache write per slice on the GPU; {io}: read + hash per slice)")


# ---------------------------------------------------------------------------------------------------- configs
def parse_configs(files: Sequence[Path], **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update(overrides)
    return parser


def preset_file(preset: str) -> Path:
    return CONFIGS / "presets" / f"{preset}.json"


def cached_channels(preset: str) -> int:
    """Float32 channels a training case holds in CacheDataset: image channels + prior kinds + label regions."""
    parser = parse_configs([SAM_PRIORS, TRAIN, preset_file(preset)])
    channels = parser.get_parsed_content("image_channel_names")
    return len(channels) + len(parser["priors#prior_kinds"]) + len(parser.get_parsed_content("regions"))


def window_summary(preset: str) -> str:
    parser = parse_configs([SAM_PRIORS, TRAIN, preset_file(preset)])
    window = parser["priors#sam_window"]
    names = parser.get_parsed_content("image_channel_names")
    chans = window.get("channels", 0)
    chans = [chans] if isinstance(chans, int) else list(chans)
    return f"{window['preset']} on channel(s) {[names[c] if c < len(names) else c for c in chans]}"


# ---------------------------------------------------------------------------------------------------- phantoms
def write_dataset(layout: str, datalist_name: str, root: Path, cases: int, size: int) -> dict:
    """Phantom cases in the dataset's real layout and their datalist (all cases in ``training``)."""
    from bundle.data.datalist import build_datalist
    from bundle.testing.phantom_writers import make_phantoms

    make_phantoms(layout, root, cases=cases, size=size, seed=0)
    return build_datalist(datalist_name, str(root), val_fraction=0.0, test_fraction=0.0, seed=0, progress=False)


def labelled_slices(label_file: Path, count: int) -> list[int]:
    """``count`` axial slices spread over the slices that hold a label (structure for SAM to segment)."""
    import nibabel as nib
    import numpy as np

    labels = np.asarray(nib.load(str(label_file)).dataobj)
    candidates = np.flatnonzero(labels.reshape(-1, labels.shape[-1]).any(axis=0))
    if len(candidates) < count:
        raise ValueError(f"{label_file}: only {len(candidates)} labelled slices; ask for fewer --prior-slices")
    return candidates[np.round(np.linspace(0, len(candidates) - 1, count + 2)[1:-1]).astype(int)].tolist()


def cut_slices(entry: dict, root: Path, out: Path, picks: Sequence[int]) -> list[str]:
    """Write the image files of ``entry`` reduced to the axial slices ``picks`` (as neighbours), into ``out``."""
    import nibabel as nib
    import numpy as np

    files = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
    written = []
    for rel in files:
        img = nib.load(str(root / rel))
        data = np.asarray(img.dataobj)[..., list(picks)]
        # one slice spacing kept: the picked slices become neighbours (the affine of the first picked slice)
        affine = img.slicer[:, :, picks[0] : picks[0] + 1].affine
        target = out / Path(rel).name
        target.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, affine, img.header), str(target))
        written.append(str(target))
    return written


# ---------------------------------------------------------------------------------------------------- measurements
def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure_encoder(engine, images, repeats: int) -> list[float]:
    """Seconds per slice of ``engine.embed`` on ``images`` (one batch), one value per repeat."""
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine.embed(images)
        _sync(engine.device)
        out.append((time.perf_counter() - t0) / len(images))
    return out


def case_io_seconds(entry: dict, root: Path) -> float:
    """Precompute's per-case input work on a whole case: the checked load + RAS orientation, and the file hashes."""
    from bundle.priors.cache import file_fingerprint
    from bundle.priors.precompute import default_loader

    files = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
    paths = [str(root / f) for f in files]
    t0 = time.perf_counter()
    default_loader()({"image": paths if len(paths) > 1 else paths[0], "case_id": entry["case_id"]})
    for p in paths:
        file_fingerprint(p)
    return time.perf_counter() - t0


def measure_priors(spec: DatasetSpec, device: str, slices: int, repeats: int, encoder_repeats: int, work: Path,
                   log) -> dict:
    """Priors per slice through the real cache on ``slices`` labelled slices of a real-size phantom case."""
    import torch

    from bundle.priors.cache import CachedSamPriord
    from bundle.priors.precompute import default_loader

    root = work / f"{spec.key}_full"
    size = spec.in_plane[0]
    entry = write_dataset(spec.layout, spec.datalist_name, root, cases=1, size=size)["training"][0]
    depth = int(entry["num_slices"])
    io_s = case_io_seconds(entry, root)
    picks = labelled_slices(root / entry["label"], slices)
    cut = work / f"{spec.key}_cut"
    files = cut_slices(entry, root, cut, picks)
    parser = parse_configs([SAM_PRIORS, PRECOMPUTE, preset_file(spec.preset)], device=torch.device(device))
    prior = parser.get_parsed_content("sam_prior")
    loaded = default_loader()({"image": files if len(files) > 1 else files[0], "case_id": entry["case_id"]})
    result = {"dataset": spec.key, "in_plane": list(spec.in_plane), "phantom_slices": depth, "picked": picks,
              "io_seconds_per_slice": io_s / depth, "io_seconds_case": io_s, "window": window_summary(spec.preset)}
    generator = prior.generator
    if hasattr(generator, "engine"):
        t0 = time.perf_counter()
        generator.engine.model  # noqa: B018  (loads SAM: once per process, not per slice)
        result["model_load_seconds"] = time.perf_counter() - t0
        if encoder_repeats:
            fitted = prior.window.fit(loaded["image"])
            batch = generator.engine.batch_size
            rgb = prior.window.slices(loaded["image"], fitted, [i % slices for i in range(batch)])
            generator.engine.embed(rgb[:1])  # warm-up: kernel selection and allocations
            result["encoder_seconds_per_slice"] = measure_encoder(generator.engine, rgb, encoder_repeats)
            result["encoder_batch"] = batch
            log(f"  encoder ({spec.key} slices, batch {batch}): "
                + ", ".join(f"{s:.3f}" for s in result["encoder_seconds_per_slice"]) + " s/slice")
    per_slice, file_bytes, entry_bytes = [], [], []
    for r in range(repeats):
        cache_dir = work / f"{spec.key}_cache{r}"
        cached = CachedSamPriord(keys="image", cache_dir=cache_dir, prior=prior)
        t0 = time.perf_counter()
        out = cached.prior_for(loaded, "image")
        _sync(device)
        per_slice.append((time.perf_counter() - t0) / slices)
        case_dir = cached.cache.case_dir(entry["case_id"])
        stored = json.loads((case_dir / "entry.json").read_text())
        if stored.get("slices_sent_to_generator") != slices:
            raise RuntimeError(f"{case_dir}: {stored.get('slices_sent_to_generator')} of {slices} slices went to SAM "
                               "(an empty slice was picked); the per-slice cost would be wrong")
        file_bytes.append(sum((case_dir / f).stat().st_size for f in stored["files"].values()))
        entry_bytes.append((case_dir / "entry.json").stat().st_size)
        log(f"  priors ({spec.key}, {slices} slices of {spec.in_plane[0]}x{spec.in_plane[1]}, run {r + 1}): "
            f"{per_slice[-1]:.2f} s/slice, cache files {file_bytes[-1]} B, entry.json {entry_bytes[-1]} B, "
            f"prior max {float(out[0].max()):.2f}")
    result.update({"prior_seconds_per_slice": per_slice, "bytes_per_slice": statistics.median(file_bytes) / slices,
                   "entry_bytes": statistics.median(entry_bytes), "generator": generator.signature().get("generator"),
                   "slices": slices})
    return result


def _vm_hwm(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_training(preset: str, root: Path, datalist: Path, work: Path, tag: str) -> tuple[int, float]:
    """The real training command in a child process; ``(peak resident bytes, seconds)``."""
    files = [str(SAM_PRIORS), str(TRAIN), str(preset_file(preset))]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", json.dumps(files),
           "--bundle_root", str(ROOT), "--dataset_dir", str(root), "--datalist", str(datalist),
           "--prior_cache_dir", str(work / "priors"), "--output_dir", str(work / f"run_{tag}"),
           "--ckpt_dir", str(work / f"models_{tag}"), "--priors#sam_model_type", "fallback", "--max_epochs", "1",
           "--val_interval", "1"]
    log_file = work / f"train_{tag}.log"
    t0 = time.perf_counter()
    peak = 0
    with open(log_file, "w") as log:
        proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            peak = max(peak, _vm_hwm(proc.pid) or 0)  # the high-water mark only grows: the last read is the peak
            time.sleep(0.05)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = "\n".join(log_file.read_text().splitlines()[-15:])
        raise RuntimeError(f"training run {tag} failed (exit {proc.returncode}), log {log_file}:\n{tail}")
    return peak, seconds


def measure_ram(preset: str, size: int, train_counts: Sequence[int], work: Path, log) -> dict:
    """Peak RSS of the real training command for two training-set sizes; slope per cached voxel and intercept."""
    import torch

    from bundle.data.datalist import write_datalist

    spec = next(s for s in DATASETS.values() if s.preset == preset)
    root = work / f"ram_{preset}"
    t0 = time.perf_counter()
    datalist = write_dataset(spec.layout, spec.datalist_name, root, cases=max(train_counts) + 1, size=size)
    entries = datalist["training"]
    write_datalist(dict(datalist, validation=[], testing=[]), root / "datalist_all.json")
    parser = parse_configs([SAM_PRIORS, PRECOMPUTE, preset_file(preset)], bundle_root=str(ROOT),
                           dataset_dir=str(root), datalist=str(root / "datalist_all.json"),
                           prior_cache_dir=str(work / "priors"), **{"priors#sam_model_type": "fallback"},
                           device=torch.device("cpu"))
    parser["prior_precompute#progress"] = False
    parser.get_parsed_content("prior_precompute").run()
    log(f"  RAM phantoms ({preset}, {size} px, {len(entries)} cases) + fallback priors: "
        f"{time.perf_counter() - t0:.1f} s")
    channels = cached_channels(preset)
    runs = []
    for k in train_counts:
        held = entries[:k] + entries[-1:]  # the last case validates in every run
        path = write_datalist(dict(datalist, training=entries[:k], validation=entries[-1:], testing=[]),
                              root / f"datalist_train{k}.json")
        peak, seconds = run_training(preset, root, Path(path), work, f"train{k}")
        voxels = sum(size * size * int(e["num_slices"]) for e in held)
        runs.append({"training_cases": k, "validation_cases": 1, "slices": [int(e["num_slices"]) for e in held],
                     "cached_voxels": voxels, "peak_bytes": peak, "seconds": seconds})
        log(f"  training, {k} training + 1 validation case(s) of {size}x{size}x{runs[-1]['slices']}: "
            f"peak RSS {peak / 2**20:.0f} MiB, {seconds:.1f} s")
    (a, b) = runs[0], runs[-1]
    slope = (b["peak_bytes"] - a["peak_bytes"]) / (b["cached_voxels"] - a["cached_voxels"])
    return {"preset": preset, "size": size, "channels": channels, "runs": runs, "bytes_per_voxel": slope,
            "bytes_per_voxel_channel": slope / channels,
            "intercept_bytes": a["peak_bytes"] - slope * a["cached_voxels"]}


# ---------------------------------------------------------------------------------------------------- report
def machine() -> dict:
    import torch

    cpu = "unknown"
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "nproc": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _median(values) -> float:
    return float(statistics.median(values)) if values else float("nan")


def measured_for(spec: DatasetSpec, results: Mapping, statistic: str = "median") -> dict | None:
    """The inputs of :func:`project` for ``spec``: its own prior measurement or the one of the same in-plane size.

    ``statistic`` (``median`` or ``min``) summarises the repeated prior timings.
    """
    priors = results.get("priors", {})
    p = priors.get(spec.key) or next((v for v in priors.values() if tuple(v["in_plane"]) == spec.in_plane), None)
    ram = results.get("ram") or {}
    if p is None:
        return None
    summary = min if statistic == "min" else _median
    return {"seconds_per_slice": summary(p["prior_seconds_per_slice"]) + p["io_seconds_per_slice"],
            "bytes_per_slice": p["bytes_per_slice"], "entry_bytes": p["entry_bytes"],
            "ram_bytes_per_voxel_channel": ram.get("bytes_per_voxel_channel"),
            "ram_intercept_bytes": ram.get("intercept_bytes"), "from": p["dataset"],
            "io_seconds_per_slice": p["io_seconds_per_slice"]}


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 360 else f"{seconds / 60:,.1f} min"


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


def print_report(results: dict, datalists: Mapping[str, Mapping[str, float]], mean_slices: Mapping[str, float],
                 statistic: str = "median") -> dict:
    m = results["machine"]
    print(f"\nmachine: {m['cpu']}, nproc {m['nproc']}, torch {m['torch']}, {m['threads']} threads, "
          f"OMP_WAIT_POLICY={m['omp_wait_policy']}, device {results['device']}"
          + (f" ({m['gpu']})" if "gpu" in m else ""))
    print("\n== measured ==\n")
    print("| quantity | value | how |\n|---|---|---|")
    for key, p in results.get("priors", {}).items():
        if "encoder_seconds_per_slice" in p:
            enc = p["encoder_seconds_per_slice"]
            print(f"| SAM image encoder, s/slice | {_median(enc):.3f} (runs {', '.join(f'{x:.3f}' for x in enc)}) | "
                  f"`SamEngine.embed`, batches of {p['encoder_batch']}, {key} slices, median |")
        if "model_load_seconds" in p:
            print(f"| SAM model load (once per process) | {p['model_load_seconds']:.1f} s | first use of the engine |")
        runs = p["prior_seconds_per_slice"]
        print(f"| priors + cache write, s/slice, {p['in_plane'][0]}x{p['in_plane'][1]} ({key}) | {_median(runs):.2f} "
              f"(runs {', '.join(f'{x:.2f}' for x in runs)}) | `CachedSamPriord` + config's `sam_prior` "
              f"({p['generator']}, window {p['window']}), {p['slices']} labelled slices |")
        print(f"| input read + hash, s/slice ({key}) | {p['io_seconds_per_slice']:.4f} | whole phantom case of "
              f"{p['phantom_slices']} slices: {p['io_seconds_case']:.2f} s |")
        print(f"| prior cache bytes/slice ({key}) | {p['bytes_per_slice']:,.0f} B | `.nii.gz` files of the entry / "
              f"{p['slices']} slices |")
        print(f"| `entry.json` per case ({key}) | {p['entry_bytes']:,.0f} B | |")
    ram = results.get("ram")
    if ram:
        for r in ram["runs"]:
            print(f"| training peak RSS, {r['training_cases']} train + {r['validation_cases']} val case(s) of "
                  f"{ram['size']}x{ram['size']}x{r['slices']} | {r['peak_bytes'] / 2**20:,.0f} MiB "
                  f"({r['seconds']:.0f} s) "
                  f"| `VmHWM` of `run training` ({ram['preset']} preset, 1 epoch) |")
        print(f"| training RAM per cached voxel | {ram['bytes_per_voxel']:.1f} B ({ram['channels']} channels: "
              f"{ram['bytes_per_voxel_channel']:.2f} B per voxel-channel) | slope between the two runs |")
        print(f"| training RAM fixed part | {ram['intercept_bytes'] / 2**20:,.0f} MiB | intercept |")
    projections = {}
    for spec in DATASETS.values():
        measured = measured_for(spec, results, statistic)
        if measured is None:
            continue
        slices = datalists.get(spec.key) or uniform_cases(spec.cases, mean_slices.get(spec.key, spec.mean_slices))
        channels = cached_channels(spec.preset)
        proj = project(measured, slices, spec.in_plane, channels)
        projections[spec.key] = proj
        source = "datalist" if spec.key in datalists else spec.slices_note
        print(f"\n== {spec.name}: {proj['cases']:,} cases, {proj['slices']:,.0f} slices ({source}) ==")
        print(f"per slice {measured['seconds_per_slice']:.2f} s ({statistic} of the prior timings on "
              f"{measured['from']}, + read and hash); disk "
              f"{_gb(proj['disk_bytes'])}" + ("" if proj["ram_bytes"] is None else
              f"; training RAM {proj['ram_bytes_per_case'] / 1e6:,.0f} MB per case ({channels} float32 channels "
              f"of {spec.in_plane[0]}x{spec.in_plane[1]}), {proj['ram_cached_cases']:,} cases cached (train + val "
              f"at 0.6/0.2/0.2): {_gb(proj['ram_bytes'])} per training process"))
        print("\n| workers | cases on slowest rank | slices on slowest rank | precompute wall-clock |")
        print("|---|---|---|---|")
        for row in proj["precompute"]:
            print(f"| {row['workers']} | {row['slowest_rank_cases']:,} | {row['slowest_rank_slices']:,.0f} | "
                  f"{_hours(row['seconds'])} |")
    if results["device"] == "cpu":
        print("\nGPU (not measured here), with W workers:")
        for spec in DATASETS.values():
            measured = measured_for(spec, results)
            if measured is not None:
                print("  " + gpu_formula(spec, measured["io_seconds_per_slice"]))
    return projections


# ---------------------------------------------------------------------------------------------------- main
def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or key not in DATASETS:
            raise SystemExit(f"{what} expects DATASET=VALUE with DATASET one of {', '.join(DATASETS)}, got {item!r}")
        out[key] = value
    return out


def slices_from_datalist(path: str) -> dict[str, float]:
    """``num_slices`` of every case of a datalist written by ``scripts/prepare_datalist.py`` (all sections)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"{path}: cannot read the datalist ({err})") from err
    out = {}
    for section in ("training", "validation", "testing"):
        for entry in data.get(section) or []:
            if "num_slices" not in entry:
                raise SystemExit(f"{path}: case {entry.get('case_id')} has no num_slices (write it with "
                                 "scripts/prepare_datalist.py)")
            out[str(entry.get("case_id"))] = float(entry["num_slices"])
    if not out:
        raise SystemExit(f"{path}: no cases")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="where SAM runs (cpu, cuda, cuda:1): the config's `device`")
    p.add_argument("--encoder-repeats", type=int, default=3, help="encoder timings (median quoted); 0 skips")
    p.add_argument("--prior-slices", type=int, default=1,
                   help="labelled slices per dataset shape sent through SAM and the cache (8 fills one batch)")
    p.add_argument("--prior-repeats", type=int, default=1, help="prior timings per dataset shape (median quoted)")
    p.add_argument("--prior-datasets", nargs="*", choices=tuple(DATASETS), default=("brats2021", "lits"),
                   help="dataset shapes to measure priors on (a dataset not measured uses one of its in-plane size); "
                        "none: RAM only")
    p.add_argument("--skip-ram", action="store_true", help="do not run the training RAM measurement")
    p.add_argument("--ram-preset", choices=("brats", "lits", "abdomenct1k"), default="brats")
    p.add_argument("--ram-size", type=int, default=128, help="in-plane size of the RAM phantoms (240: real BraTS)")
    p.add_argument("--ram-train-cases", type=int, nargs=2, default=(1, 3), metavar=("A", "B"),
                   help="training cases of the two training runs (plus one validation case each)")
    p.add_argument("--datalist", nargs="*", default=(), metavar="DATASET=PATH",
                   help="project from the num_slices of a real datalist instead of the assumed mean")
    p.add_argument("--mean-slices", nargs="*", default=(), metavar="DATASET=N", help="override an assumed mean")
    p.add_argument("--statistic", choices=("median", "min"), default="median",
                   help="summary of repeated prior timings used by the projection (min: least disturbed run)")
    p.add_argument("--from-json", default=None, help="project from a previous run's --json instead of measuring")
    p.add_argument("--json", default=None, help="also write all measurements and projections to this JSON file")
    p.add_argument("--keep", default=None, help="work folder to keep (default: a temporary folder, removed)")
    return p


def measure(args, log) -> dict:
    results = {"device": args.device, "machine": machine(), "load_start": os.getloadavg(), "priors": {}}
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for i, key in enumerate(args.prior_datasets):
            results["priors"][key] = measure_priors(DATASETS[key], args.device, args.prior_slices, args.prior_repeats,
                                                    args.encoder_repeats if i == 0 else 0, work, log)
        if not args.skip_ram:
            results["ram"] = measure_ram(args.ram_preset, args.ram_size, args.ram_train_cases, work, log)
    results["load_end"] = os.getloadavg()
    return results


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.prior_slices < 1 or args.prior_repeats < 1 or args.encoder_repeats < 0:
        raise SystemExit("--prior-slices and --prior-repeats must be >= 1, --encoder-repeats >= 0")
    if args.ram_train_cases[0] >= args.ram_train_cases[1] or args.ram_train_cases[0] < 1:
        raise SystemExit("--ram-train-cases A B needs 1 <= A < B")
    datalists = {k: slices_from_datalist(v) for k, v in _pairs(args.datalist, "--datalist").items()}
    mean_slices = {k: float(v) for k, v in _pairs(args.mean_slices, "--mean-slices").items()}
    started = time.perf_counter()
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        if os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE" and args.device == "cpu":
            print("NOTE: OMP_WAIT_POLICY is not PASSIVE: on a shared CPU spinning OpenMP threads distort timings "
                  "(docs/benchmarks.md)")
        print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        results = measure(args, lambda text: print(text, flush=True))
        results["seconds"] = time.perf_counter() - started
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in results['load_end'])}; "
              f"wall time {results['seconds']:.0f} s")
    results["projection"] = print_report(results, datalists, mean_slices, args.statistic)
    results["statistic"] = args.statistic
    results["datasets"] = {k: asdict(v) for k, v in DATASETS.items()}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
