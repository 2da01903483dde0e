import logging
import os

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.networks.nets import UNet

from bundle.workflows.common.checkpoints import (
    CheckedCheckpointLoader,
    CheckpointError,
    EpochCheckpointSaver,
    ResumeFromCheckpoint,
    load_network_weights,
)
from bundle.workflows.segmentation.inputs import prior_channel_names

BATCHES = 3


def make_net(in_channels=1, out_channels=1, seed=0):
    torch.manual_seed(seed)
    return UNet(2, in_channels, out_channels, channels=(4, 8), strides=(2,))


def data():
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.rand(2, 1, 8, 8, generator=g), "label": (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()}
        for _ in range(BATCHES)
    ]


def make_trainer(tmp_path, max_epochs, seed=0, resume=False, info=None):
    net = make_net(seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=data(),
        network=net,
        optimizer=opt,
        loss_function=torch.nn.BCEWithLogitsLoss(),
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: sched.step())
    objects = {"network": net, "optimizer": opt, "lr_scheduler": sched, "trainer": trainer}
    if resume:
        ResumeFromCheckpoint(tmp_path / "checkpoint_last.pt", objects).attach(trainer)
    EpochCheckpointSaver(tmp_path, objects, info=info).attach(trainer)
    return trainer, net, opt, sched


def test_saver_writes_everything_and_leaves_no_temp_file(tmp_path):
    info = {"prior_mode": "add", "input_channels": 3, "channel_names": ["CT", "a", "b"]}
    trainer, *_ = make_trainer(tmp_path, max_epochs=2, info=info)
    trainer.run()
    assert os.listdir(tmp_path) == ["checkpoint_last.pt"]
    ckpt = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert set(ckpt) == {"network", "optimizer", "lr_scheduler", "trainer", "info"}
    assert ckpt["info"] == info
    assert ckpt["trainer"]["iteration"] == 2 * BATCHES


def test_failing_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    net = make_net()
    saver = EpochCheckpointSaver(tmp_path, {"network": net})
    saver()
    before = torch.load(saver.path, map_location="cpu", weights_only=True)
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")  # save_atomic hands torch.save the open temporary file
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        saver()
    monkeypatch.setattr(torch, "save", real_save)
    assert os.listdir(tmp_path) == ["checkpoint_last.pt"]
    after = torch.load(saver.path, map_location="cpu", weights_only=True)
    for key in before["network"]:
        torch.testing.assert_close(after["network"][key], before["network"][key])


def test_resume_continues_at_next_epoch(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    first, net1, _, _ = make_trainer(tmp_path, max_epochs=1)
    first.run()
    trained = {k: v.clone() for k, v in net1.state_dict().items()}

    second, net2, opt2, sched2 = make_trainer(tmp_path, max_epochs=2, seed=1, resume=True)
    iterations, weights_at_start = [], {}
    second.add_event_handler(Events.ITERATION_STARTED, lambda e: iterations.append(e.state.iteration))
    second.add_event_handler(
        Events.EPOCH_STARTED,
        lambda e: weights_at_start.update({e.state.epoch: {k: v.clone() for k, v in net2.state_dict().items()}}),
    )
    second.run()
    assert iterations == [BATCHES + 1, BATCHES + 2, BATCHES + 3]  # exactly one more epoch
    assert second.state.epoch == 2 and second.state.iteration == 2 * BATCHES
    assert second.state.max_epochs == 2
    assert f"resuming from {tmp_path / 'checkpoint_last.pt'} at epoch 1" in caplog.text
    assert list(weights_at_start) == [2]
    for key, value in trained.items():
        torch.testing.assert_close(weights_at_start[2][key], value)
    assert sched2.last_epoch == 2  # 1 restored + 1 new epoch
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.25)
    step = next(iter(opt2.state.values()))["step"]
    assert int(step) == 2 * BATCHES  # Adam state restored, not restarted

    # already complete: finishes without another iteration
    third, *_ = make_trainer(tmp_path, max_epochs=2, seed=2, resume=True)
    iterations.clear()
    third.add_event_handler(Events.ITERATION_STARTED, lambda e: iterations.append(e.state.iteration))
    third.run()
    assert iterations == [] and third.state.epoch == 2


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    trainer, *_ = make_trainer(tmp_path, max_epochs=1, resume=True)
    count = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: count.append(1))
    trainer.run()
    assert len(count) == BATCHES and trainer.state.epoch == 1


def test_load_network_weights_formats(tmp_path):
    source = make_net(seed=3)
    torch.save(source.state_dict(), tmp_path / "model.pt")
    torch.save({"model": source.state_dict()}, tmp_path / "model_key.pt")
    for name in ("model.pt", "model_key.pt"):
        target = make_net(seed=4)
        assert load_network_weights(target, tmp_path / name) is target
        for (k, v), w in zip(source.state_dict().items(), target.state_dict().values()):
            torch.testing.assert_close(v, w, msg=k)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_network_weights(make_net(), tmp_path / "missing.pt")


def test_channel_mismatch_names_file_counts_and_channels(tmp_path):
    modalities = ["FLAIR", "T1", "T1ce", "T2"]
    trained_names = prior_channel_names("concat", modalities)
    path = tmp_path / "checkpoint_last.pt"
    info = {"prior_mode": "concat", "channel_names": trained_names}
    EpochCheckpointSaver(tmp_path, {"network": make_net(6)}, info=info)()
    with pytest.raises(ValueError) as err:
        load_network_weights(make_net(4), path, expected_channel_names=modalities, prior_mode="none")
    message = str(err.value)
    assert str(path) in message
    assert "trained with 6 input channels [FLAIR, T1, T1ce, T2, sam_seg_prior, sam_boundary_prior]" in message
    assert "builds 4 [FLAIR, T1, T1ce, T2] (prior_mode=none)" in message
    assert "prior_mode=concat" in message and "needs the priors" in message

    # bare state_dict: no names from the file, counts still there
    torch.save(make_net(1).state_dict(), tmp_path / "model.pt")
    expected = r"model\.pt: wrong architecture: trained with 1 input channels but this configuration builds 3"
    with pytest.raises(ValueError, match=expected):
        load_network_weights(make_net(3), tmp_path / "model.pt")


def test_other_mismatch_lists_keys(tmp_path):
    torch.save(make_net(out_channels=2).state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match="shape mismatches") as err:
        load_network_weights(make_net(out_channels=3), tmp_path / "model.pt")
    assert "model.pt" in str(err.value)


def test_checked_loader_on_evaluator(tmp_path):
    source = make_net(seed=5)
    torch.save(source.state_dict(), tmp_path / "model.pt")
    net = make_net(seed=6)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=data()[:1],
        network=net,
        val_handlers=[CheckedCheckpointLoader(tmp_path / "model.pt", net, expected_channel_names=["CT"])],
    )
    evaluator.run()
    for v, w in zip(source.state_dict().values(), net.state_dict().values()):
        torch.testing.assert_close(v, w)


def test_resume_from_damaged_checkpoint_names_it(tmp_path):
    """A truncated checkpoint_last.pt stops the resume with the file and the problem, not a raw torch error."""
    first, *_ = make_trainer(tmp_path, max_epochs=1)
    first.run()
    path = tmp_path / "checkpoint_last.pt"
    path.write_bytes(path.read_bytes()[:3000])
    second, *_ = make_trainer(tmp_path, max_epochs=2, resume=True)
    with pytest.raises(CheckpointError) as info:
        second.run()
    assert str(info.value).startswith(f"{path}: resume checkpoint is truncated")
    assert second.state.iteration == 0  # nothing trained on top of an unknown state

    torch.save({"network": make_net().state_dict()}, path)  # a checkpoint of another configuration
    third, *_ = make_trainer(tmp_path, max_epochs=2, resume=True)
    with pytest.raises(CheckpointError, match=r"resume checkpoint lacks \['optimizer', 'lr_scheduler', 'trainer'\]"):
        third.run()


def test_network_weights_of_another_kind(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: holds a list, not a state_dict"):
        load_network_weights(make_net(), tmp_path / "list.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt: network weights is empty \(0 bytes\)"):
        load_network_weights(make_net(), tmp_path / "empty.pt")
