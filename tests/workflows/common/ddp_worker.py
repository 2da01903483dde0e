"""Worker of ``test_ddp.py``, run by ``torchrun`` (two processes, gloo): each rank calls the helpers of
:mod:`bundle.workflows.common.ddp` and writes what it saw to ``<folder>/rank<r>.json``."""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import torch

from bundle.workflows.classification.metrics import FusedClassificationMetric
from bundle.workflows.common import ddp


def main(folder: str) -> None:
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank = torch.distributed.get_rank()
    out: dict = {}
    try:
        torch.manual_seed(0)
        net = ddp.wrap_network(torch.nn.Linear(3, 1), "cpu")
        out["wrapped"] = isinstance(net, torch.nn.parallel.DistributedDataParallel)
        # DDP: each rank its own input, the same averaged gradient
        net(torch.full((1, 3), float(rank + 1))).sum().backward()
        out["ddp_grad"] = ddp.unwrap(net).weight.grad.flatten().tolist()
        del net  # a DDP wrapper must not outlive the process group (gloo aborts the process at exit otherwise)
        # average_gradients: the same average without DDP's hooks
        plain = torch.nn.Linear(3, 1)
        plain(torch.full((1, 3), float(rank + 1))).sum().backward()
        ddp.average_gradients(plain.parameters())
        out["avg_grad"] = plain.weight.grad.flatten().tolist()
        out["train_share"] = list(iter(ddp.train_sampler(list(range(7)), seed=3)))
        out["eval_share"] = list(iter(ddp.eval_sampler(list(range(5)))))
        out["train_part"] = ddp.rank_partition(range(7), seed=3)
        out["eval_part"] = ddp.rank_partition(range(5), shuffle=False, even=False)
        out["too_few"] = ddp.rank_partition(range(1), even=False)
        weights = torch.utils.data.WeightedRandomSampler([1.0] * 6 + [5.0] * 2, 8)
        out["balanced_draws"] = len(list(iter(ddp.train_sampler(list(range(8)), weights, seed=1))))
        writer = ddp.rank_zero_summary_writer(os.path.join(folder, "logs"))
        out["writer"] = type(writer).__name__
        writer.add_scalar("x", 1.0, 0)
        writer.close()
        # the classifier metric scores every rank's validation share together
        metric = FusedClassificationMetric(["neg", "pos"], fusion_weight=0.5)
        metric.reset()
        sign = 1.0 if rank == 0 else -1.0  # rank 0: a positive scored positive; rank 1: a negative scored negative
        metric.update((torch.tensor([[[-2.0, 2.0], [-2.0, 2.0]]]) * sign, torch.tensor([1 if rank == 0 else 0])))
        out["auc"] = metric.compute()
        out["samples_scored"] = len(metric._gathered()[1])
    finally:
        torch.distributed.destroy_process_group()
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1])
