"""Training guards and whole checkpoints: a non-finite loss stops training, NaN weights are never written, and a
kill while ``model.pt`` is written leaves the previous, loadable file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer

from bundle.atomic import TEMP_NAME
from bundle.errors import error_line
from bundle.workflows.common.best_model import AtomicSaveHandler, BestModelSaver
from bundle.workflows.common.checkpoints import EpochCheckpointSaver
from bundle.workflows.common.guards import (
    NonFiniteLossError,
    NonFiniteStateError,
    StopOnNonFiniteLoss,
    check_finite_state,
    non_finite_tensors,
)
from bundle.workflows.segmentation.train_step import SamAugTrainStep

REPO = Path(__file__).resolve().parents[2]


def _batches(bad_batch: int | None):
    g = torch.Generator().manual_seed(0)
    batches = []
    for i in range(3):
        image = torch.rand(2, 1, 8, 8, generator=g)
        if i == bad_batch:
            image[1, 0, 2, 2] = float("inf")  # one voxel of the second case of the batch
        batches.append({"image": image, "label": (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float(),
                        "case_id": [f"case_{2 * i}", f"case_{2 * i + 1}"]})
    return batches


def _trainer(batches, iteration_update=None):
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=2, train_data_loader=batches, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=torch.nn.BCEWithLogitsLoss(),
        iteration_update=iteration_update,
    )
    StopOnNonFiniteLoss().attach(trainer)
    return trainer, net


@pytest.mark.parametrize("step", [None, SamAugTrainStep(prior_mode="none")])
def test_non_finite_loss_stops_before_the_step(step):
    trainer, net = _trainer(_batches(bad_batch=1), step)
    before = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda e: before.update(
        {k: v.clone() for k, v in net.state_dict().items()}))
    with pytest.raises(NonFiniteLossError) as info:
        trainer.run()
    message = str(info.value)
    assert "the loss is inf at epoch 1, iteration 2 of 3 (global iteration 2)" in message or \
        "the loss is nan at epoch 1, iteration 2 of 3" in message, message
    assert "batch cases: case_2, case_3" in message
    assert error_line(info.value).startswith("ERROR: training stopped: the loss is")
    for key, value in net.state_dict().items():  # the bad step never reached the weights
        torch.testing.assert_close(value, before[key])


def test_finite_training_is_untouched():
    trainer, _ = _trainer(_batches(bad_batch=None))
    trainer.run()
    assert trainer.state.epoch == 2


def test_non_finite_state_is_described(tmp_path):
    state = {"network": {"w": torch.tensor([1.0, float("nan")]), "steps": torch.tensor([3])},
             "optimizer": {"state": {0: {"exp_avg": torch.tensor([float("inf")])}}}, "info": {"a": 1}}
    assert non_finite_tensors(state) == (["network.w", "optimizer.state.0.exp_avg"], 3)
    with pytest.raises(NonFiniteStateError) as info:
        check_finite_state(state, tmp_path / "checkpoint_last.pt")
    assert str(info.value).startswith(f"{tmp_path / 'checkpoint_last.pt'}: not written: 2 of 3 tensors hold NaN")
    check_finite_state({"w": torch.ones(2), "n": torch.tensor([1])}, tmp_path / "ok.pt")


def test_last_checkpoint_keeps_finite_weights(tmp_path):
    net = torch.nn.Linear(2, 1)
    saver = EpochCheckpointSaver(tmp_path, {"network": net})
    saver()
    with torch.no_grad():
        net.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteStateError, match="checkpoint_last.pt: not written"):
        saver()
    saved = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)["network"]
    assert torch.isfinite(saved["weight"]).all() and os.listdir(tmp_path) == ["checkpoint_last.pt"]


def _validate(saver, score):
    evaluator = Engine(lambda engine, batch: None)
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(dice=score))
    saver.attach(evaluator)
    evaluator.run([0], max_epochs=1)


def test_best_model_is_never_nan(tmp_path):
    """MONAI's saver keeps the first validated model whatever its score: a NaN network must not become model.pt."""
    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(float("nan"))
    saver = BestModelSaver(str(tmp_path), {"model": net}, key_metric_name="dice", key_metric_filename="model.pt")
    with pytest.raises(NonFiniteStateError, match="model.pt: not written: 1 of 2 tensors"):
        _validate(saver, 0.1)
    assert os.listdir(tmp_path) == []


def test_old_best_file_removed_only_after_the_new_one_is_written(tmp_path):
    handler = AtomicSaveHandler(tmp_path)
    handler({"w": torch.ones(1)}, "model_key_metric=0.5.pt")
    handler.remove("model_key_metric=0.5.pt")  # ignite asks first ...
    assert (tmp_path / "model_key_metric=0.5.pt").exists()  # ... but the old file waits for its successor
    handler({"w": torch.ones(1) * 2}, "model_key_metric=0.9.pt")
    assert os.listdir(tmp_path) == ["model_key_metric=0.9.pt"]


KILLED_TRAINING = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from ignite.engine import Engine, Events
    from monai.engines import SupervisedTrainer
    from bundle.workflows.common.best_model import BestModelSaver

    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    data = [{"image": torch.rand(2, 1, 8, 8), "label": torch.rand(2, 1, 8, 8).round()} for _ in range(2)]
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=3, train_data_loader=data, network=net,
                                optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                                loss_function=torch.nn.BCEWithLogitsLoss())
    evaluator = Engine(lambda engine, batch: None)  # a validation whose score improves every epoch
    evaluator.add_event_handler(Events.EPOCH_COMPLETED,
                                lambda e: e.state.metrics.update(dice=0.1 * trainer.state.epoch))
    BestModelSaver(sys.argv[1], {"model": net}, key_metric_name="dice", key_metric_filename="model.pt").attach(evaluator)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0], max_epochs=1))
    real_save = torch.save

    def save_then_die(obj, f, *args, **kwargs):
        if trainer.state.epoch < 2:
            return real_save(obj, f, *args, **kwargs)
        # epoch 2: half of the new model.pt is on disk when the process is killed (f: the open temporary file)
        f.write(b"PK\\x03\\x04" + bytes(2000))
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = save_then_die
    trainer.run()
    """
)


def test_kill_during_model_write_keeps_a_loadable_model(tmp_path):
    models = tmp_path / "models"
    result = subprocess.run([sys.executable, "-c", KILLED_TRAINING, str(models)], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)  # epoch 1's model, whole
    assert set(state) == {"weight", "bias"} and all(torch.isfinite(v).all() for v in state.values())
    leftovers = [p.name for p in models.iterdir() if p.name != "model.pt"]
    assert len(leftovers) == 1 and TEMP_NAME.match(leftovers[0])  # the next run's start-up tidies it
