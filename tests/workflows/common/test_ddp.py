import os

import pytest
import torch

from bundle.workflows.common import ddp


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU branch")
def test_device_without_cuda_is_the_cpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ddp.distributed_device() == torch.device("cpu")


@pytest.mark.parametrize("rank, expected", [(0, "logs"), (2, os.path.join("logs", "rank2"))])
def test_rank_log_dir(monkeypatch, rank, expected):
    monkeypatch.setattr(ddp.distributed, "rank", lambda: rank)
    assert ddp.rank_log_dir("logs") == expected
