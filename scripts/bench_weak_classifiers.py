"""Benchmark the cost of WeakMedSAM's three classifiers per training slice, in one process, interleaved.

Example (one line; ``OMP_WAIT_POLICY=PASSIVE`` on a CPU shared with other processes)::

    OMP_WAIT_POLICY=PASSIVE python scripts/bench_weak_classifiers.py --threads 2 --size 64 --batch 8 --repeat 2

On the same random slices (``--batch`` slices of ``--size`` x ``--size``, the phantoms' in-plane size by default) it
times one training step (forward, loss, backward, AdamW step) of each classifier of ``classifier_network``, and the
work the frozen one needs once per slice before training (LiteMedSAM's encoder forward, which the ``sam_features``
stage runs anyway for ``M``):

- ``resnet@R``: MONAI ResNet-18 without max-pool on 4-channel slices resized to each ``--roi`` ``R`` (64: the phantom
  runs' size; 256: the default ``roi_size``);
- ``sam_frozen``: the 3 x 3 block and heads on cached 256 x 64 x 64 LiteMedSAM embeddings;
- ``sam_lora``: LiteMedSAM's encoder with LoRA (rank 4) at its 256 x 256 input, block and heads.

Each step is repeated ``--repeat`` times per round, rounds interleave the classifiers, and the median per slice is
reported with the ratio to the first ``resnet`` step measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from bundle.networks.embedding_classifier import EmbeddingClassifier
from bundle.networks.parent_child import ParentChildClassifier, ParentChildLoss
from bundle.networks.sam_encoder_classifier import SamEncoderClassifier
from bundle.sam.loading import load_sam


def _step(network, optimizer, loss_fn, x, target) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(network(x), target)
    loss.backward()
    optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="in-plane slice size")
    parser.add_argument("--roi", type=int, nargs="+", default=[64, 256], help="the resnet classifier's roi_size(s)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    classes, subclasses = 1, 8
    loss_fn = ParentChildLoss()
    target = torch.zeros(args.batch, classes + classes * subclasses + 1)
    target[::2, 0] = 1
    target[::2, 1] = 1
    target[1::2, -1] = 1
    sam = load_sam("lite_medsam")
    nets = {
        **{f"resnet@{roi}": (ParentChildClassifier(classes, subclasses, "resnet18", in_channels=4,
                                                   backbone_kwargs={"no_max_pool": True}),
                             torch.randn(args.batch, 4, roi, roi)) for roi in args.roi},
        "sam_frozen": (EmbeddingClassifier(classes, subclasses, 256, 128), torch.randn(args.batch, 256, 64, 64)),
        "sam_lora": (SamEncoderClassifier(classes, subclasses, sam=load_sam("lite_medsam"), lora_rank=4),
                     torch.rand(args.batch, 3, args.size, args.size)),
    }
    optimizers = {k: torch.optim.AdamW([p for p in n.parameters() if p.requires_grad], lr=1e-4)
                  for k, (n, _) in nets.items()}
    slices = (torch.rand(args.batch, 3, args.size, args.size) * 255).to(torch.uint8)
    times: dict[str, list[float]] = {k: [] for k in [*nets, "encoder (once per slice)"]}
    for name, (net, x) in nets.items():  # warm-up
        net.train()
        _step(net, optimizers[name], loss_fn, x, target)
    for _ in range(args.rounds):
        for name, (net, x) in nets.items():
            for _ in range(args.repeat):
                start = time.perf_counter()
                _step(net, optimizers[name], loss_fn, x, target)
                times[name].append((time.perf_counter() - start) / args.batch)
        for _ in range(args.repeat):
            start = time.perf_counter()
            with torch.inference_mode():
                image = F.interpolate(slices.float(), size=(256, 256), mode="bilinear", align_corners=False)
                sam.image_encoder((image - sam.pixel_mean) / sam.pixel_std)
            times["encoder (once per slice)"].append((time.perf_counter() - start) / args.batch)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} threads, batch {args.batch}, {args.size} x {args.size} slices, median of "
          f"{args.rounds * args.repeat}")
    first = f"resnet@{args.roi[0]}"
    reference = statistics.median(times[first])
    print(f"| work | seconds per slice | ratio to {first} step |")
    print("|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.4f} | {median / reference:.2f} |")


if __name__ == "__main__":
    main()
