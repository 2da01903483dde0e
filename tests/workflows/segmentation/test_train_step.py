import copy

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.networks.nets import UNet

from bundle.workflows.segmentation.inputs import build_network_input, input_channels, raw_network_input
from bundle.workflows.segmentation.train_step import SamAugTrainStep


class Recorder(torch.nn.Module):
    """Wraps a network and remembers every input it sees."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.net(x)


def make_net(in_channels, spatial_dims=2):
    torch.manual_seed(0)
    return UNet(spatial_dims, in_channels, 1, channels=(4, 8), strides=(2,))


def make_batches(n, image_channels=1, spatial=(8, 8), seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.rand(2, image_channels, *spatial, generator=g),
            "image_prior": torch.rand(2, 2, *spatial, generator=g) * 3,
            "label": (torch.rand(2, 1, *spatial, generator=g) > 0.5).float(),
        }
        for _ in range(n)
    ]


def make_trainer(step, net, batches, lr=0.1, **kwargs):
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=batches,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=lr),
        loss_function=torch.nn.BCEWithLogitsLoss(),
        iteration_update=step,
        **kwargs,
    )


def count_events(trainer):
    counts = {e: 0 for e in IterationEvents}

    def _counter(event):
        def _inc(_):
            counts[event] += 1

        return _inc

    for event in IterationEvents:
        trainer.add_event_handler(event, _counter(event))
    return counts


@pytest.mark.parametrize("mode, image_channels, spatial", [("add", 1, (8, 8)), ("concat", 2, (8, 8, 4))])
def test_aug_only_feeds_augmented_input(mode, image_channels, spatial):
    net = Recorder(make_net(input_channels(mode, image_channels), len(spatial)))
    batches = make_batches(2, image_channels, spatial)
    trainer = make_trainer(SamAugTrainStep(mode, prior_scale=5.0), net, batches, decollate=False)
    counts = count_events(trainer)
    trainer.run()
    assert len(net.inputs) == 2
    expected = build_network_input(batches[-1]["image"], batches[-1]["image_prior"], mode, 5.0)
    torch.testing.assert_close(net.inputs[-1], expected)
    out = trainer.state.output
    assert set(out) >= {"image", "label", "pred", "loss"}
    torch.testing.assert_close(out["image"], expected)
    assert out["pred"].shape == (2, 1, *spatial)
    main_events = [e for e in IterationEvents if not e.name.startswith("INNER")]
    assert all(counts[e] == 2 for e in main_events)
    assert counts[IterationEvents.INNER_ITERATION_STARTED] == 0


def test_blend_loss_is_weighted_sum_in_one_step():
    beta, lam, lr = 0.3, 2.0, 0.1
    net = make_net(3)
    reference = copy.deepcopy(net)
    batches = make_batches(1)
    trainer = make_trainer(SamAugTrainStep("add", "blend", beta=beta, lam=lam), net, batches, lr=lr)
    counts = count_events(trainer)
    seen = {}
    trainer.add_event_handler(
        IterationEvents.LOSS_COMPLETED, lambda e: seen.setdefault("loss", e.state.output["loss"].detach().clone())
    )
    trainer.run()

    b = batches[0]
    loss_fn = torch.nn.BCEWithLogitsLoss()
    loss_raw = loss_fn(reference(raw_network_input(b["image"], "add")), b["label"])
    loss_aug = loss_fn(reference(build_network_input(b["image"], b["image_prior"], "add")), b["label"])
    expected = beta * loss_raw + lam * loss_aug
    torch.testing.assert_close(seen["loss"], expected.detach())
    # one SGD step on the combined gradient gives the same weights
    expected.backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= lr * p.grad
    for p, q in zip(net.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)
    assert counts[IterationEvents.BACKWARD_COMPLETED] == 1
    assert counts[IterationEvents.MODEL_COMPLETED] == 1


def test_alternate_two_optimizer_steps_raw_then_aug():
    net = Recorder(make_net(3))
    batches = make_batches(3)
    trainer = make_trainer(SamAugTrainStep("channels", "alternate"), net, batches, decollate=False)
    calls = []
    original = trainer.optimizer.step

    def counting_step(*args, **kwargs):
        calls.append(len(net.inputs))
        return original(*args, **kwargs)

    trainer.optimizer.step = counting_step
    counts = count_events(trainer)
    trainer.run()
    assert len(calls) == 6  # 2 per batch
    assert calls == [1, 2, 3, 4, 5, 6]  # one forward before each step
    b = batches[-1]
    torch.testing.assert_close(net.inputs[-2], raw_network_input(b["image"], "channels"))
    torch.testing.assert_close(net.inputs[-1], build_network_input(b["image"], b["image_prior"], "channels"))
    out = trainer.state.output
    torch.testing.assert_close(out["loss"], (out["loss_raw"] + out["loss_aug"]) / 2)
    assert counts[IterationEvents.BACKWARD_COMPLETED] == 6
    assert counts[IterationEvents.INNER_ITERATION_COMPLETED] == 6
    assert counts[IterationEvents.MODEL_COMPLETED] == 3


def test_prior_mode_none_is_plain_training():
    net = Recorder(make_net(1))
    batches = make_batches(1)
    del batches[0]["image_prior"]
    trainer = make_trainer(SamAugTrainStep("none"), net, batches)
    trainer.run()
    torch.testing.assert_close(net.inputs[0], batches[0]["image"])


@pytest.mark.parametrize("train_mode", ["blend", "alternate"])
def test_prior_mode_none_rejects_mixing_modes(train_mode):
    with pytest.raises(ValueError, match="prior_mode='none'"):
        SamAugTrainStep("none", train_mode)


def test_missing_prior_and_bad_options():
    batches = make_batches(1)
    del batches[0]["image_prior"]
    trainer = make_trainer(SamAugTrainStep("add"), make_net(3), batches)
    with pytest.raises(KeyError, match="image_prior"):
        trainer.run()
    with pytest.raises(ValueError, match="blend"):
        SamAugTrainStep("add", "blnd")
