"""Run settings: a checkpoint or finished model is resumed or reused only by a run with the same settings."""

import json
import logging

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.networks.nets import UNet

from bundle.errors import RunSettingsError, error_line
from bundle.workflows.common.checkpoints import EpochCheckpointSaver, ResumeFromCheckpoint, save_atomic
from bundle.workflows.common.run_settings import (
    check_resume,
    check_run,
    datalist_digest,
    first_difference,
    optimizer_settings,
    plan_training,
    without_max_epochs,
)

SETTINGS = {"datalist": "abc", "network": {"channels": [4, 8]}, "learning_rate": 0.01, "seed": 0}


def _trainer(max_epochs):
    torch.manual_seed(0)
    net = UNet(2, 1, 1, channels=(4, 8), strides=(2,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    batches = [{"image": torch.rand(2, 1, 8, 8), "label": torch.ones(2, 1, 8, 8)}]
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=batches,
                                network=net, optimizer=opt, loss_function=torch.nn.BCEWithLogitsLoss())
    return trainer, {"network": net, "optimizer": opt}


def _checkpoint(tmp_path, settings=SETTINGS, epochs=1):
    trainer, objects = _trainer(epochs)
    info = {"run_settings": dict(settings)} if settings is not None else {"prior_mode": "concat"}
    EpochCheckpointSaver(tmp_path, objects, info=info, engine_key="trainer").attach(trainer)
    trainer.run()
    return tmp_path / "checkpoint_last.pt"


def test_first_difference_names_the_setting_in_order():
    assert first_difference(SETTINGS, json.loads(json.dumps(SETTINGS))) is None
    assert first_difference({"a": (1, 2), "b": 1}, {"a": [1, 2], "b": 1.0}) is None  # tuples, ints: same values
    assert first_difference(SETTINGS, {**SETTINGS, "learning_rate": 0.02, "seed": 1}) == ("learning_rate", "0.01",
                                                                                         "0.02")
    assert first_difference(SETTINGS, {**SETTINGS, "network": {"channels": [8, 16]}})[0] == "network.channels"
    assert first_difference(SETTINGS, {**SETTINGS, "prior": None}) == ("prior", "(not recorded)", "null")
    assert without_max_epochs({"a": 1, "training": {"max_epochs": 5, "lr": 1}}) == {"a": 1, "training": {"lr": 1}}


def test_optimizer_settings_are_plain_and_name_the_optimizer():
    params = [torch.nn.Parameter(torch.zeros(1))]
    adamw = optimizer_settings(torch.optim.AdamW(params, lr=0.01, weight_decay=1e-5))
    assert adamw == {"name": "AdamW", "lr": 0.01, "betas": [0.9, 0.999], "eps": 1e-08, "weight_decay": 1e-05,
                     "amsgrad": False}
    json.dumps(adamw)
    assert first_difference(adamw, optimizer_settings(torch.optim.SGD(params, lr=0.01)))[0] == "name"


def test_datalist_digest_covers_the_trained_entries_only(tmp_path):
    data = {"training": [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}], "validation": [{"image": "b.nii.gz"}],
            "testing": [{"image": "c.nii.gz"}], "description": "x"}
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(data))
    digest = datalist_digest(path)
    path.write_text(json.dumps({**data, "testing": [], "description": "y"}, indent=2))
    assert datalist_digest(path) == digest  # another test split or layout: the same run
    checked = {**data, "training": [{**data["training"][0], "checked": {"files": {"a.nii.gz": {"mtime_ns": 1}}}}]}
    path.write_text(json.dumps(checked))
    assert datalist_digest(path) == digest  # the check records (modification times) are not the case
    path.write_text(json.dumps({**data, "training": [{"image": "d.nii.gz", "label": "d_seg.nii.gz"}]}))
    assert datalist_digest(path) != digest


def test_resume_only_with_the_same_settings(tmp_path, caplog):
    path = _checkpoint(tmp_path)
    assert check_resume(path, dict(SETTINGS))
    assert not check_resume(tmp_path / "none.pt", SETTINGS)
    with pytest.raises(RunSettingsError) as refused:
        check_resume(path, {**SETTINGS, "learning_rate": 0.02})
    line = error_line(refused.value)
    assert line.startswith(f"ERROR: {path}: ") and "learning_rate 0.01 -> 0.02" in line and str(tmp_path) in line
    assert "--resume false" in line and "--run_name" in line
    with caplog.at_level(logging.WARNING):
        assert not check_resume(path, {**SETTINGS, "learning_rate": 0.02}, resume=False)
    assert "resume=false" in caplog.text
    with pytest.raises(ValueError, match="resume: 'false' is not a boolean"):  # text Python would take as true
        check_resume(path, SETTINGS, resume="false")


def test_checkpoint_of_an_older_version_is_refused(tmp_path):
    path = _checkpoint(tmp_path, settings=None)
    with pytest.raises(RunSettingsError, match="older version .* recorded no run settings.*--resume false"):
        check_resume(path, SETTINGS)


def test_resume_handler_checks_the_settings_and_honours_resume_false(tmp_path):
    path = _checkpoint(tmp_path)
    trainer, objects = _trainer(2)
    ResumeFromCheckpoint(path, objects, engine_key="trainer", settings={**SETTINGS, "seed": 1}).attach(trainer)
    with pytest.raises(RunSettingsError, match="seed 0 -> 1"):
        trainer.run()
    trainer, objects = _trainer(2)
    ResumeFromCheckpoint(path, objects, engine_key="trainer", settings={**SETTINGS, "seed": 1},
                         resume=False).attach(trainer)
    epochs = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    trainer.run()
    assert epochs == [1, 2]  # from scratch


def test_complete_run_needs_its_model(tmp_path):
    path = _checkpoint(tmp_path, epochs=2)
    model = tmp_path / "models" / "model.pt"
    with pytest.raises(RunSettingsError, match="already complete .* model .*model.pt is missing"):
        check_run(path, SETTINGS, True, max_epochs=2, model_files=[model])
    model.parent.mkdir()
    model.write_bytes(b"x")
    assert check_run(path, SETTINGS, True, max_epochs=2, model_files=[model])
    assert check_run(path, SETTINGS, True, max_epochs=3, model_files=[tmp_path / "gone.pt"])  # trains on: fine


def test_plan_reuses_resumes_or_refuses(tmp_path):
    model = tmp_path / "model.pt"
    last = _checkpoint(tmp_path, epochs=2)
    assert plan_training(model, last, SETTINGS, True, 2) == ("resume", None)  # no model yet
    save_atomic({"card": {}, "run_settings": SETTINGS, "epochs": 2}, model)
    plan, stored = plan_training(model, last, SETTINGS, True, 2)
    assert plan == "reuse" and stored["epochs"] == 2
    assert plan_training(model, last, SETTINGS, True, 4)[0] == "resume"  # a larger max_epochs trains on
    assert plan_training(model, tmp_path / "gone.pt", SETTINGS, True, 4)[0] == "fresh"
    with pytest.raises(RunSettingsError, match=r"finished training .* learning_rate 0.01 -> 0.1"):
        plan_training(model, last, {**SETTINGS, "learning_rate": 0.1}, True, 2)
    assert plan_training(model, last, {**SETTINGS, "learning_rate": 0.1}, False, 2)[0] == "fresh"
    save_atomic({"card": {}}, model)  # a model of an older version
    with pytest.raises(RunSettingsError, match="older version"):
        plan_training(model, last, SETTINGS, True, 2)


def test_a_config_trainer_must_be_built_from_the_run_and_for_the_cards_epochs():
    from types import SimpleNamespace

    from bundle.workflows.common.run_settings import check_config_trainer

    network, loader, data = object(), object(), object()
    trainer = SimpleNamespace(network=network, data_loader=loader, state=SimpleNamespace(max_epochs=2))
    parts = {"network": network, "data_loader": loader}
    check_config_trainer(trainer, parts, 2, data, data, "@run")  # the run's own trainer and dataset pass
    with pytest.raises(ValueError, match="train#trainer: its network is not that of @run"):
        check_config_trainer(SimpleNamespace(**{**vars(trainer), "network": object()}), parts, 2, data, None, "@run")
    with pytest.raises(ValueError, match="train#trainer#max_epochs 2 differs from max_epochs 3"):
        check_config_trainer(trainer, parts, 3, data)
    with pytest.raises(ValueError, match="train#dataset: object is not what the trainer reads"):
        check_config_trainer(trainer, parts, 2, data, object())
