"""bundle.workflows.common.ddp: the helpers in one process (no-ops) and in a real two-process gloo group."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.tensorboard import SummaryWriter

from bundle.workflows.common import ddp


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU branch")
def test_device_without_cuda_is_the_cpu(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ddp.distributed_device() == torch.device("cpu")


def test_single_process_helpers_change_nothing(tmp_path):
    net = torch.nn.Linear(2, 1)
    assert ddp.wrap_network(net, "cpu") is net and ddp.unwrap(net) is net
    weighted = torch.utils.data.WeightedRandomSampler([1.0, 2.0], 2)
    assert ddp.train_sampler(range(2)) is None and ddp.train_sampler(range(2), weighted) is weighted
    assert ddp.eval_sampler(range(2)) is None
    assert ddp.rank_partition(range(3)) == [0, 1, 2]
    net(torch.ones(1, 2)).sum().backward()
    before = net.weight.grad.clone()
    ddp.average_gradients(net.parameters())
    assert torch.equal(net.weight.grad, before)
    writer = ddp.rank_zero_summary_writer(tmp_path / "logs")
    assert isinstance(writer, SummaryWriter)
    writer.close()


def test_discarding_writer_takes_every_summary_writer_call(tmp_path):
    writer = ddp.DiscardingWriter(tmp_path / "logs")
    writer.add_scalar("a", 1.0, 0)
    writer.add_image("b", torch.zeros(1, 2, 2), 0)
    writer.flush()
    writer.close()
    assert not (tmp_path / "logs").exists()
    with pytest.raises(AttributeError):
        writer.not_a_writer_method  # noqa: B018


def test_helpers_in_a_two_process_group(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).with_name("ddp_worker.py")), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["wrapped"] and r1["wrapped"]
    # the gradient of sum(w.x) is x: ranks fed 1s and 2s, both hold the mean, 1.5
    for r in (r0, r1):
        assert r["ddp_grad"] == pytest.approx([1.5, 1.5, 1.5])
        assert r["avg_grad"] == pytest.approx([1.5, 1.5, 1.5])
    # training shares: disjoint up to the padding, together every sample, the same length on every rank
    assert len(r0["train_share"]) == len(r1["train_share"]) == 4
    assert set(r0["train_share"]) | set(r1["train_share"]) == set(range(7))
    # validation shares: every case exactly once, no padding
    assert sorted(r0["eval_share"] + r1["eval_share"]) == list(range(5))
    # cached parts: training parts padded to one length, validation parts every case once
    assert len(r0["train_part"]) == len(r1["train_part"]) == 4
    assert set(r0["train_part"]) | set(r1["train_part"]) == set(range(7))
    assert sorted(r0["eval_part"] + r1["eval_part"]) == list(range(5))
    assert r0["too_few"] == r1["too_few"] == [0]  # fewer cases than ranks: every rank validates them all
    assert r0["balanced_draws"] == r1["balanced_draws"] == 4  # ceil(8 / 2) draws per rank
    assert (r0["writer"], r1["writer"]) == ("SummaryWriter", "DiscardingWriter")
    assert len(list((tmp_path / "logs").glob("events.out.tfevents.*"))) == 1
    # rank 0 scored a positive as positive, rank 1 a negative as negative: together a perfect AUC
    assert r0["auc"] == r1["auc"] == 1.0
    assert r0["samples_scored"] == r1["samples_scored"] == 2
