"""Where this process stands in a ``torchrun`` job: the one home for rank checks.

Without ``torch.distributed`` (or before the process group exists) a process is rank 0 of 1, so single-process runs
take the same code path as rank 0.

The helpers below the rank checks serve jobs that only need to split work and meet at the end (prior precompute):
:func:`launched_by_torchrun`, :func:`local_device`, :func:`process_group`, :func:`barrier` and
:func:`gather_objects`. They live here, in the foundation module, so every room may use them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import torch

__all__ = ["rank", "world_size", "is_main_process", "launched_by_torchrun", "local_device", "join_group",
           "process_group", "barrier", "gather_objects", "GROUP_TIMEOUT"]

GROUP_TIMEOUT = timedelta(hours=4)
"""How long a rank waits for the others at a collective call. Ranks meet after uneven shares of work (one rank's cases
cached, another's computed; rank 0 alone writing reports), so the 10 or 30 minutes of torch's defaults are too short."""


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return torch.distributed.get_rank() if _initialized() else 0


def world_size() -> int:
    """Number of processes in the job (1 without a process group)."""
    return torch.distributed.get_world_size() if _initialized() else 1


def is_main_process() -> bool:
    """True on rank 0: the process that writes shared files (checkpoints, reports, manifests, logs)."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when the environment describes a job of more than one process (``WORLD_SIZE > 1``, set by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_device() -> torch.device:
    """This process's device: ``cuda:$LOCAL_RANK`` with CUDA (``LOCAL_RANK`` is 0 outside torchrun), else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cpu")


def join_group() -> bool:
    """Make the process group ``torchrun`` describes unless one exists: NCCL under CUDA (this process on
    ``cuda:$LOCAL_RANK``), gloo on the CPU, :data:`GROUP_TIMEOUT`. Returns whether this call made it."""
    if _initialized():
        return False
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_device())
    torch.distributed.init_process_group(backend="nccl" if cuda else "gloo", timeout=GROUP_TIMEOUT)
    return True


@contextmanager
def process_group() -> Iterator[int]:
    """Join the process group torchrun describes for the duration of a block; yields this process's global rank.

    Nothing happens for a single process (no ``WORLD_SIZE > 1``) or when a group already exists (it is then left
    as it is). Otherwise the group is made with NCCL under CUDA (each process on ``cuda:$LOCAL_RANK``) or gloo on
    the CPU, and destroyed when the block ends.
    """
    made = launched_by_torchrun() and torch.distributed.is_available() and join_group()
    try:
        yield rank()
    finally:
        if made:
            torch.distributed.destroy_process_group()


def barrier() -> None:
    """Wait for every process of the group (a no-op without one)."""
    if not _initialized():
        return
    if torch.distributed.get_backend() == "nccl":
        # NCCL otherwise guesses the device from the rank, which is wrong on every node but the first
        torch.distributed.barrier(device_ids=[local_device().index])
    else:
        torch.distributed.barrier()


def gather_objects(obj: Any) -> list:
    """``obj`` of every process, in rank order (``[obj]`` without a group); ``obj`` must be picklable."""
    if not _initialized():
        return [obj]
    out: list = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out
