"""SAM-Mix under ``torchrun``: two CPU processes (gloo) train one model with ``configs/multi_gpu_train.json`` merged
last; the training step's rank helpers in a real two-process gloo group."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from ignite.engine import Engine
from monai.engines import IterationEvents
from semisup_utils import TINY_MIX, mix_files, mix_overrides
from workflow_utils import MULTI_GPU, torchrun

from bundle.data.slice_dataset import slice_items
from bundle.sam.adapter import read_adapter
from bundle.workflows.common.ddp import broadcast_from_rank_zero
from bundle.workflows.semisup.data import organ_task
from bundle.workflows.semisup.training import LabelledBatches, _Step, trained_digest


def _torchrun(lits, work: Path, checkpoint) -> str:
    """``torchrun --nproc_per_node 2`` of SAM-Mix training with the tiny settings, as a user runs it; its output."""
    result = torchrun(mix_files("lits", MULTI_GPU), **mix_overrides(lits, work, checkpoint))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def two_ranks(phantom_set, tiny_sam_checkpoint, tmp_path_factory):
    """One epoch of SAM-Mix, tiny settings, trained by two processes."""
    lits = phantom_set("lits")
    work = tmp_path_factory.mktemp("sam_mix_ddp")
    return lits, work, _torchrun(lits, work, tiny_sam_checkpoint)


def test_rank_zero_writes_one_model_adapter_card_and_event_log(two_ranks):
    _, work, log = two_ranks
    stored = torch.load(work / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in stored["network"])
    assert stored["card"]["training"]["processes"] == 2
    adapter = torch.load(work / "models" / "adapter.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in adapter["state"])
    card = json.loads((work / "models" / "model_card.json").read_text())
    assert card["training"] == stored["card"]["training"]
    assert log.count("Epoch[1] Complete") == 2  # both ranks trained ...
    assert log.count("sam-mix: saved") == 1  # ... rank 0 alone wrote the finished files
    assert len([p for p in work.rglob("events.out.tfevents.*")]) == 1
    assert not [p for p in work.rglob("*") if p.is_file() and ".tmp" in p.name]


def _epoch_length(slices: int) -> int:
    """Iterations of an epoch over ``slices`` (a last batch of one slice is dropped: batch norm needs two)."""
    batch = TINY_MIX["batch_size"]
    return slices // batch if slices > batch and slices % batch == 1 else math.ceil(slices / batch)


def test_each_rank_trains_on_half_the_slices(two_ranks):
    lits, work, _ = two_ranks
    slices = len(slice_items(json.loads(lits.datalist.read_text())["training"], organ_task("lits")))
    share = math.ceil(slices / 2)
    last = torch.load(work / "run" / "sam_mix_last.pt", weights_only=True)["trainer"]
    assert 2 * last["epoch_length"] == _epoch_length(slices) and last["epoch_length"] == _epoch_length(share)
    assert last["iteration"] == last["epoch_length"]  # one epoch
    ranks = json.loads((work / "run" / "sam_mix_training.json").read_text())["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["slices_per_epoch"] == share and r["iterations"] == last["epoch_length"] for r in ranks)


def test_every_rank_holds_the_weights_rank_zero_saved(two_ranks):
    _, work, _ = two_ranks
    model = torch.load(work / "models" / "model.pt", weights_only=True)
    saved = trained_digest(model, read_adapter(work / "models" / "adapter.pt")["state"])
    ranks = json.loads((work / "run" / "sam_mix_training.json").read_text())["ranks"]
    assert [r["sha256"] for r in ranks] == [saved, saved]


def test_every_rank_resumes_from_rank_zeros_checkpoint(two_ranks, tiny_sam_checkpoint, tmp_path):
    """The epoch checkpoint of a run killed before its finished files were written: every rank restores it."""
    lits, work, _ = two_ranks
    shutil.copytree(work / "run", tmp_path / "run")
    first = json.loads((work / "run" / "sam_mix_training.json").read_text())["ranks"]
    log = _torchrun(lits, tmp_path, tiny_sam_checkpoint)
    assert log.count("sam_mix_last.pt at epoch 1") == 2  # both ranks restored it ...
    assert "Epoch[1] Complete" not in log  # ... and, epoch 1 of 1 being done, trained nothing again
    again = json.loads((tmp_path / "run" / "sam_mix_training.json").read_text())["ranks"]
    assert [r["sha256"] for r in again] == [r["sha256"] for r in first]  # rank 1 too holds the trained weights
    model = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert trained_digest(model, read_adapter(tmp_path / "models" / "adapter.pt")["state"]) == first[0]["sha256"]


def test_labelled_batches_differ_by_rank_and_resume_alike():
    data = [{"image": torch.full((1, 2, 2), float(i)), "label": torch.zeros(1, 2, 2)} for i in range(8)]

    def draws(batches: LabelledBatches, epoch: int, n: int = 3) -> list[list[float]]:
        batches.start_epoch(epoch)
        return [next(batches)["image"][:, 0, 0, 0].tolist() for _ in range(n)]

    single, rank0, rank1 = (LabelledBatches(data, 2, seed=5), LabelledBatches(data, 2, seed=5, rank=0),
                            LabelledBatches(data, 2, seed=5, rank=1))
    assert draws(single, 1) == draws(rank0, 1)  # one process draws what it always drew
    first = draws(rank1, 1)
    assert first != draws(LabelledBatches(data, 2, seed=5), 1)
    uninterrupted = draws(rank1, 2)
    assert draws(LabelledBatches(data, 2, seed=5, rank=1), 2) == uninterrupted  # a resumed rank 1


def _step_worker(rank: int, world: int, folder: str) -> None:
    from bundle import distributed

    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                                         world_size=world)
    try:
        torch.manual_seed(rank)  # different initial weights on each rank ...
        net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
        trainable = [p for p in net.parameters() if p.requires_grad]
        broadcast_from_rank_zero([*trainable, *net.buffers()])  # ... until rank 0's are shared
        start = [p.detach().clone() for p in trainable]
        net[1].running_mean.fill_(float(rank + 1))  # statistics drift apart between steps ...
        engine = Engine(lambda e, b: None)
        engine.register_events(*IterationEvents)  # as MONAI's trainers do: the step fires LOSS_COMPLETED
        engine.network, engine.optimizer = net, torch.optim.SGD(trainable, lr=0.5)
        step = _Step("none")
        step.begin(engine)  # ... and each step starts from rank 0's
        begun = net[1].running_mean.tolist()
        x = torch.arange(12, dtype=torch.float32).reshape(4, 3) * (rank + 1)  # each rank its own batch
        loss = net(x).pow(2).mean()
        local = torch.autograd.grad(loss, trainable, retain_graph=True)
        step.update(engine, loss)
        out = {"begun_mean": begun,
               "start": [t.tolist() for t in start], "local": [g.tolist() for g in local],
               "after": [p.detach().tolist() for p in trainable]}
        with open(os.path.join(folder, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
        distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_step_shares_rank_zero_state_and_averages_gradients(tmp_path):
    mp.spawn(_step_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert out[0]["start"] == out[1]["start"]
    assert out[0]["after"] == out[1]["after"]  # the same update everywhere
    assert out[0]["local"] != out[1]["local"]
    for i, start in enumerate(out[0]["start"]):
        mean = (torch.tensor(out[0]["local"][i]) + torch.tensor(out[1]["local"][i])) / 2
        torch.testing.assert_close(torch.tensor(out[0]["after"][i]), torch.tensor(start) - 0.5 * mean)
    assert out[0]["begun_mean"] == out[1]["begun_mean"] == [1.0, 1.0]  # rank 0's statistics, before the forward
