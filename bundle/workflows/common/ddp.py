"""Multi-GPU training under ``torchrun``: one set of helpers every training workflow calls.

``configs/multi_gpu_train.json`` joins the process group (:func:`init_distributed`), puts each rank on its device
(:func:`distributed_device`) and gives rank 0 the only TensorBoard writer (:func:`rank_zero_summary_writer`); it
overrides the ids every training config shares (``device``, ``summary_writer``, ``initialize``, ``finalize``), so it
merges onto SAMAug, SAMAug-C, WeakMedSAM and SAM-Mix alike. The training code calls the helpers below, which do
nothing in a single process (or before the group exists), so one code path serves one process and many:

- :func:`wrap_network`: ``DistributedDataParallel`` around a network trained through its ``forward``;
- :func:`average_gradients` and :func:`broadcast_from_rank_zero`: the same gradient averaging and shared state for
  steps that call other methods of a network (SAM-Mix);
- :func:`rank_partition`: each rank caches and trains on its part of a split (datasets that cache what they load);
- :func:`train_sampler` / :func:`eval_sampler`: each rank its share of the samples of a dataset every rank holds;
- :func:`unwrap`: the plain network inside a DDP wrapper (what checkpoints store).

Rank checks themselves live in :mod:`bundle.distributed`.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter

from bundle import distributed

__all__ = ["init_distributed", "close_distributed", "distributed_device", "is_distributed", "wrap_network", "unwrap",
           "average_gradients", "broadcast_from_rank_zero", "rank_partition", "train_sampler", "eval_sampler",
           "rank_zero_summary_writer", "DiscardingWriter"]

logger = logging.getLogger(__name__)

_MADE_GROUP: list[bool] = []  # one entry per init_distributed call: did that call make the process group?


def init_distributed() -> int:
    """Join the process group that ``torchrun`` describes (NCCL with CUDA, gloo on CPU); returns this rank.

    A no-op returning the rank when the group exists already (a stage run inside a distributed pipeline). With CUDA
    the process uses ``cuda:$LOCAL_RANK``; ranks wait for each other up to
    :data:`bundle.distributed.GROUP_TIMEOUT`. Pair each call with :func:`close_distributed`.
    """
    _MADE_GROUP.append(distributed.join_group())  # which also puts a CUDA process on its device
    return distributed.rank()


def close_distributed() -> None:
    """Leave the process group if the matching :func:`init_distributed` made it (ranks meet first)."""
    made = _MADE_GROUP.pop() if _MADE_GROUP else False
    if made and torch.distributed.is_initialized():
        distributed.barrier()
        torch.distributed.destroy_process_group()


def distributed_device() -> torch.device:
    """``cuda:$LOCAL_RANK`` with CUDA (``LOCAL_RANK`` is set by ``torchrun``), else the CPU
    (:func:`bundle.distributed.local_device`)."""
    return distributed.local_device()


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return distributed.world_size() > 1


def wrap_network(network: torch.nn.Module, device: Any) -> torch.nn.Module:
    """``network`` on ``device``; in a group of several processes wrapped in ``DistributedDataParallel``
    (``device_ids`` only for a CUDA device), so gradients are averaged over the ranks at every backward pass."""
    device = torch.device(device)
    network = network.to(device)
    if not is_distributed():
        return network
    device_ids = [device] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=device_ids)


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (the network itself otherwise)."""
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network


def average_gradients(parameters) -> None:
    """Average the gradients of ``parameters`` over the ranks (after ``backward``, before the optimizer step).

    What ``DistributedDataParallel`` does for a network trained through ``forward``, for training steps that call
    other methods of a network (SAM-Mix's CAM prompts and SAM decoding), which DDP's hooks do not see. A parameter
    without a gradient on this rank takes part with zeros, so every rank makes the same collective calls.
    """
    if not is_distributed():
        return
    world = distributed.world_size()
    for p in parameters:
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)
        p.grad.div_(world)


def broadcast_from_rank_zero(tensors) -> None:
    """Rank 0's values of ``tensors`` on every rank (a no-op in one process); every rank passes the same tensors in
    the same order. What ``DistributedDataParallel`` does with a network's parameters and buffers when it wraps it,
    and with its buffers before each forward pass, for training steps that do without DDP (:func:`average_gradients`).
    """
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in tensors:
            torch.distributed.broadcast(tensor.detach(), src=0)


def rank_partition(data: Sequence, seed: int = 0, shuffle: bool = True, even: bool = True) -> list:
    """This rank's part of ``data`` (all of it in one process), for datasets that cache what they load.

    A ``CacheDataset`` of the whole split on every rank would hold the split once per process; with each rank caching
    its part, a node holds it once. MONAI's ``partition_dataset`` deals the items out (``shuffle``: a seeded shuffle
    first, the same on every rank); ``even`` pads the parts to one length (training: every rank runs the same number
    of iterations), without it no item is repeated (validation: metrics gather the parts) unless there are fewer
    items than processes: then every rank takes them all (each item counted once per rank, means unchanged). A loader
    over the part shuffles it itself (no sampler needed).
    """
    if not is_distributed():
        return list(data)
    from monai.data import partition_dataset

    if not even and len(data) < distributed.world_size():
        # a rank with nothing to evaluate would stop MONAI's evaluator: every rank takes every item instead, so the
        # gathered scores hold each item once per rank and their means are those of the items
        logger.warning("%d item(s) for %d processes: every process evaluates all of them", len(data),
                       distributed.world_size())
        return list(data)

    parts = partition_dataset(list(data), num_partitions=distributed.world_size(), shuffle=shuffle, seed=int(seed),
                              even_divisible=even, drop_last=False)
    return parts[distributed.rank()]


def train_sampler(dataset, sampler=None, seed: int = 0):
    """The sampler of a training loader.

    One process: ``sampler`` as given (None: the loader shuffles). Several: each rank draws its share of every epoch
    (MONAI's ``DistributedSampler``, shuffled, padded so every rank runs the same number of iterations), or, for a
    ``WeightedRandomSampler`` (class balance), MONAI's ``DistributedWeightedRandomSampler`` with the same weights and
    ``ceil(num_samples / world)`` draws (with replacement) per rank from its share of the samples. The loader sets the epoch of either (MONAI's ``Workflow``).
    """
    if not is_distributed():
        return sampler
    from monai.data import DistributedSampler, DistributedWeightedRandomSampler

    if isinstance(sampler, torch.utils.data.WeightedRandomSampler):
        per_rank = math.ceil(sampler.num_samples / distributed.world_size())
        generator = torch.Generator().manual_seed(int(seed) * 1_009 + distributed.rank())  # each rank its own draws
        return DistributedWeightedRandomSampler(dataset, weights=sampler.weights.tolist(), num_samples_per_rank=per_rank,
                                                generator=generator, shuffle=True, seed=int(seed))
    return DistributedSampler(dataset, shuffle=True, even_divisible=True, seed=int(seed))


def eval_sampler(dataset):
    """The sampler of a validation loader: None in one process, else each rank its share, no case twice (metrics
    built on MONAI's ``Cumulative`` gather the shares)."""
    if not is_distributed():
        return None
    from monai.data import DistributedSampler

    return DistributedSampler(dataset, shuffle=False, even_divisible=False)


class DiscardingWriter:
    """A TensorBoard writer that writes nothing: what ranks other than 0 log to. Every ``SummaryWriter`` method is
    accepted and ignored, so handlers run the same code on every rank."""

    def __init__(self, log_dir: str | os.PathLike | None = None) -> None:
        self.log_dir = None if log_dir is None else os.fspath(log_dir)

    def __getattr__(self, name: str):
        if name.startswith("_") or not hasattr(SummaryWriter, name):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def rank_zero_summary_writer(log_dir: str | os.PathLike, **kwargs):
    """A ``SummaryWriter`` on rank 0, a :class:`DiscardingWriter` on the other ranks: one event log per run."""
    if distributed.is_main_process():
        return SummaryWriter(log_dir=os.fspath(log_dir), **kwargs)
    return DiscardingWriter(log_dir)
