"""Where this process stands in a ``torchrun`` job: the one home for rank checks.

Without ``torch.distributed`` (or before the process group exists) a process is rank 0 of 1, so single-process runs
take the same code path as rank 0.
"""

from __future__ import annotations

import torch

__all__ = ["rank", "world_size", "is_main_process"]


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
