"""Multi-GPU training under ``torchrun``: join the process group, pick this rank's device, wrap the network.

``configs/multi_gpu_train.json`` calls these helpers, so one file turns any training config into a distributed one
(merged after it on the command line). Rank checks themselves live in :mod:`bundle.distributed`.
"""

from __future__ import annotations

import os

import torch

from bundle import distributed

__all__ = ["init_distributed", "distributed_device", "distributed_network", "rank_log_dir"]


def init_distributed() -> int:
    """Join the process group that ``torchrun`` describes (NCCL with CUDA, gloo on CPU); returns this rank.

    A no-op returning the rank when the group exists already. With CUDA the process uses ``cuda:$LOCAL_RANK``.
    """
    dist = torch.distributed
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(distributed_device())
    return distributed.rank()


def distributed_device() -> torch.device:
    """``cuda:$LOCAL_RANK`` with CUDA (``LOCAL_RANK`` is set by ``torchrun``), else the CPU
    (:func:`bundle.distributed.local_device`)."""
    return distributed.local_device()


def distributed_network(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``network`` on ``device`` wrapped in ``DistributedDataParallel`` (``device_ids`` only for a CUDA device)."""
    device = torch.device(device)
    device_ids = [device] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(network.to(device), device_ids=device_ids)


def rank_log_dir(log_dir: str | os.PathLike) -> str:
    """``log_dir`` on rank 0, ``log_dir/rank<r>`` on the other ranks, so TensorBoard writers never share a file."""
    rank = distributed.rank()
    return os.fspath(log_dir) if rank == 0 else os.path.join(os.fspath(log_dir), f"rank{rank}")
