"""bundle.distributed: rank checks inside and outside a process group (gloo, one process)."""

from __future__ import annotations

import torch

from bundle import distributed


def test_single_process_is_rank_zero_of_one():
    assert not torch.distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)


def test_inside_a_process_group(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert (distributed.rank(), distributed.world_size(), distributed.is_main_process()) == (0, 1, True)
    finally:
        torch.distributed.destroy_process_group()
    assert not torch.distributed.is_initialized()
