"""SAM-Mix's own train steps fire ``LOSS_COMPLETED``: a NaN loss stops training before it reaches the weights."""

from __future__ import annotations

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.networks.nets import UNet

from bundle.data.slice_dataset import CLASS_LABEL_KEY
from bundle.workflows.common.guards import NonFiniteLossError
from bundle.workflows.semisup.training import TrainingRun, TrainingSettings


def _slices(n: int) -> list[dict]:
    torch.manual_seed(0)
    return [{"image": torch.rand(1, 16, 16), "label": (torch.rand(1, 16, 16) > 0.5).float(), CLASS_LABEL_KEY: i % 2,
             "case_id": f"case{i}"} for i in range(n)]


def test_nan_loss_stops_the_unet_baseline_without_saving(tmp_path):
    net = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(4, 8), strides=(2,), num_res_units=0)
    with torch.no_grad():
        net.model[0].conv.weight.fill_(float("nan"))  # every logit NaN: the Dice loss is NaN at the first step
    data = _slices(4)
    run = TrainingRun("unet", net, data, data[:2], tmp_path / "run", tmp_path / "models", {"test": True},
                      TrainingSettings(max_epochs=1, batch_size=2, seg_batch_size=2))
    trainer = SupervisedTrainer(device=run.device, max_epochs=1, train_data_loader=run.loader, network=run.network,
                                optimizer=run.optimizer, loss_function=run.step.dice, iteration_update=run.step,
                                train_handlers=run.handlers)
    with pytest.raises(NonFiniteLossError, match="the loss is nan at epoch 1, iteration 1"):
        run.run(trainer)
    assert not (tmp_path / "models" / "model.pt").exists()
    assert not (tmp_path / "run" / "sam_mix_last.pt").exists()
