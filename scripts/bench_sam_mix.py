"""Benchmark SAM-Mix's SAM path: batched box decoding against segment-anything's own ``Sam.forward``, and the cost of
tuning (LoRA forward + backward) against inference.

Examples (one line each; set ``OMP_WAIT_POLICY=PASSIVE`` on a CPU shared with other processes)::

    OMP_WAIT_POLICY=PASSIVE python scripts/bench_sam_mix.py                          # LiteMedSAM, 4 CT slices
    OMP_WAIT_POLICY=PASSIVE python scripts/bench_sam_mix.py --slices 8 --threads 2
    python scripts/bench_sam_mix.py --model tiny --checkpoint sam_tiny.pth --slices 2   # smoke

On the same ``--slices`` phantom CT slices (256 x 256, the liver's tight box as prompt) and the same SAM (default
``load_sam("lite_medsam")``), float32, in one run:

1. reference: ``segment_anything``'s ``Sam.forward`` (a list with one dict per slice: image, box), which encodes the
   batch and then decodes the slices one at a time;
2. ours: :class:`bundle.sam.trainable.TrainableSam` without adapter, one batched pass (encoder, prompt encoder and the
   two-way transformer over all slices at once);
3. tuning: the same with LoRA rank 8, forward + backward of a Dice loss (what one SAM-Mix iteration costs per
   labelled slice), and inference with that adapter merged into the encoder and unmerged.

The masks of 1 and 2 are compared (fraction of equal pixels at SAM's low resolution). Each time is the best of
``--repeat`` (interleaved). The last line is machine-readable: ``reference_s_per_slice=<x> ours_s_per_slice=<x>
speedup=<reference/ours> train_s_per_slice=<x> merged_s_per_slice=<x> unmerged_s_per_slice=<x> mask_agreement=<x>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # run from a checkout without `pip install -e .`

from bundle.testing.phantoms import bench_phantom  # noqa: E402
from bundle.sam.cam_prompts import mask_boxes  # noqa: E402
from bundle.sam.loading import load_sam  # noqa: E402
from bundle.sam.lora import merge_lora  # noqa: E402
from bundle.sam.trainable import TrainableSam, sam_input  # noqa: E402

SIZE = 256


def _slices(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    volume, labels, _ = bench_phantom("ct", SIZE, max(n * 3, 12), seed=0)
    positive = [d for d in range(volume.shape[-1]) if (labels[..., d] == 1).any()][:n]
    hu = np.clip((volume[0][..., positive] + 160.0) / 400.0, 0.0, 1.0)
    x = torch.from_numpy(hu).permute(2, 0, 1)[:, None].float()
    masks = torch.from_numpy(labels[..., positive] == 1).permute(2, 0, 1)[:, None]
    return x, masks


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lite_medsam")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, masks = _slices(args.slices)
    n = x.shape[0]
    boxes = mask_boxes(masks)[0]
    sam = load_sam(args.model, args.checkpoint)
    ours = TrainableSam(sam, lora_rank=0, tune=False).eval()
    images = sam_input(x, ours.preprocessing, sam.pixel_mean, sam.pixel_std)
    # Sam.forward preprocesses itself ((x - pixel_mean) / pixel_std, padding): give it what makes the same input
    raw = images * sam.pixel_std + sam.pixel_mean
    scale = ours.preprocessing.input_shape(SIZE, SIZE)[0] / SIZE  # Sam.forward takes boxes in its input frame
    batched = [{"image": raw[i], "original_size": (SIZE, SIZE), "boxes": boxes[i : i + 1] * scale} for i in range(n)]
    multimask = ours.multimask

    def reference():
        with torch.no_grad():
            return sam(batched, multimask_output=multimask)

    def mine():
        with torch.no_grad():
            return ours(x, boxes)

    ref_s, ours_s = [], []
    for _ in range(args.repeat):  # interleaved
        ref_s.append(_best(reference, 1))
        ours_s.append(_best(mine, 1))
    ref_out, (logits, _) = reference(), mine()
    agree = []
    for i, out in enumerate(ref_out):
        best = int(out["iou_predictions"][0].argmax()) if multimask else 0
        ref_mask = out["masks"][0, best]
        agree.append(float((ref_mask == (logits[i, 0] > 0)).float().mean()))

    tuned_sam = load_sam(args.model, args.checkpoint)
    tuned = TrainableSam(tuned_sam, lora_rank=8)
    optimizer = torch.optim.Adam([p for p in tuned.parameters() if p.requires_grad], lr=1e-4)
    target = masks.float()

    def train_step():
        tuned.train()
        optimizer.zero_grad()
        out, _ = tuned(x, boxes)
        loss = (1 - 2 * (torch.sigmoid(out) * target).sum() / (torch.sigmoid(out).sum() + target.sum()))
        loss.backward()
        optimizer.step()

    train_s = _best(train_step, args.repeat)
    tuned.eval()
    with torch.no_grad():
        unmerged_s = _best(lambda: tuned(x, boxes), args.repeat)
        merge_lora(tuned_sam)
        merged = TrainableSam(tuned_sam, lora_rank=0, tune=False).eval()
        merged_s = _best(lambda: merged(x, boxes), args.repeat)

    ref_per, ours_per = min(ref_s) / n, min(ours_s) / n
    print(f"{args.model}, {n} slices of {SIZE} x {SIZE}, {torch.get_num_threads()} threads, float32")
    print(f"reference Sam.forward:        {ref_per:.3f} s/slice")
    print(f"ours (batched, no adapter):   {ours_per:.3f} s/slice   ({ref_per / ours_per:.2f}x)")
    print(f"tuning step (LoRA 8, fwd+bwd): {train_s / n:.3f} s/slice   ({train_s / min(ours_s):.2f}x inference)")
    print(f"inference, adapter unmerged:  {unmerged_s / n:.3f} s/slice; merged: {merged_s / n:.3f} s/slice")
    print(f"mask agreement with the reference: {np.mean(agree):.5f}")
    print(f"reference_s_per_slice={ref_per:.4f} ours_s_per_slice={ours_per:.4f} speedup={ref_per / ours_per:.3f} "
          f"train_s_per_slice={train_s / n:.4f} merged_s_per_slice={merged_s / n:.4f} "
          f"unmerged_s_per_slice={unmerged_s / n:.4f} mask_agreement={np.mean(agree):.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
