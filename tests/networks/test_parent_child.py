"""Tests of bundle.networks.parent_child: WeakMedSAM's parent/child classifier, its CAM and its loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bundle.networks.dual_branch import BACKBONES
from bundle.networks.parent_child import ParentChildClassifier, ParentChildLoss

# a resnet18 with 1/8 of the channels (8..64) and no max-pool: a 64 x 64 slice gives an 8 x 8 feature map
TINY = {"widen_factor": 0.125, "no_max_pool": True}


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these networks are tiny, and on shared cores more threads only wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _net(num_classes=3, num_subclasses=8, seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault("backbone_kwargs", TINY)
    return ParentChildClassifier(num_classes, num_subclasses, **kwargs)


@pytest.mark.parametrize("num_classes", [1, 4])
def test_output_shapes(num_classes):
    net = _net(num_classes, 8)
    x = torch.rand(2, 1, 64, 64)
    parent, child = net(x)
    assert parent.shape == (2, num_classes)
    assert child.shape == (2, num_classes * 8 + 1) == (2, net.num_children)
    assert net.features(x).shape == (2, net.feature_channels, 8, 8)
    assert net.cam(x).shape == (2, num_classes, 64, 64)


# shallow or narrow variants of every family, so that the test stays fast
SMALL_BACKBONES = {
    "densenet121": {"init_features": 8, "growth_rate": 4, "block_config": (1, 1, 1, 1)},
    "resnet18": TINY,
    "resnet34": TINY,
    "resnet50": TINY,
    "seresnet50": {"layers": (1, 1, 1, 1)},
}


def test_small_backbones_cover_the_registry():
    assert set(SMALL_BACKBONES) == set(BACKBONES)


@pytest.mark.parametrize("backbone, backbone_kwargs", sorted(SMALL_BACKBONES.items()))
def test_every_backbone_gives_a_feature_map(backbone, backbone_kwargs):
    net = _net(2, 3, backbone=backbone, backbone_kwargs=backbone_kwargs)
    x = torch.rand(1, 1, 64, 64)
    features = net.features(x)
    assert features.ndim == 4 and features.shape[1] == net.feature_channels and features.shape[2] > 1
    parent, child = net(x)
    assert parent.shape == (1, 2) and child.shape == (1, 7)
    # the backbone's own pooling and classifier are not part of the extractor
    assert not {"avgpool", "fc", "adaptive_avg_pool", "last_linear", "class_layers"} & set(dict(net.encoder.named_children()))
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net.raw_cam(x).mean(dim=(2, 3)), net(x)[0], rtol=1e-4, atol=1e-5)


def test_heads_are_bias_free():
    net = _net(2, 4)
    assert net.parent_head.bias is None and net.child_head.bias is None
    assert not [k for k in net.state_dict() if k.endswith("head.bias")]
    # zero features give zero logits only without bias
    pooled = torch.zeros(3, net.feature_channels)
    assert torch.equal(net.parent_head(pooled), torch.zeros(3, 2))
    assert torch.equal(net.child_head(pooled), torch.zeros(3, 9))


def test_cam_pooled_over_space_is_the_parent_logit():
    net = _net(3, 2).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        parent, _ = net(x)
        raw = net.raw_cam(x)
    assert raw.shape == (2, 3, 8, 8)
    torch.testing.assert_close(raw.mean(dim=(2, 3)), parent, rtol=1e-5, atol=1e-5)


def test_cam_equals_manual_computation():
    net = _net(3, 2).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        features = net.features(x)
        weight = net.parent_head.weight  # [C, F]
        manual = (weight[None, :, :, None, None] * features[:, None]).sum(dim=2)
        manual = F.interpolate(manual, size=(64, 64), mode="bilinear", align_corners=False)
        low = manual.amin(dim=(2, 3), keepdim=True)
        high = manual.amax(dim=(2, 3), keepdim=True)
        manual = (manual - low) / (high - low)
    cam = net.cam(x)
    torch.testing.assert_close(cam, manual, rtol=1e-5, atol=1e-5)
    # every map spans [0, 1] exactly
    assert torch.allclose(cam.amin(dim=(2, 3)), torch.zeros(2, 3))
    assert torch.allclose(cam.amax(dim=(2, 3)), torch.ones(2, 3))


def test_cam_is_not_rectified():
    """Negative evidence keeps its place below zero-evidence before scaling (no ReLU on the map)."""
    net = _net(1, 1).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        raw = F.interpolate(net.raw_cam(x), size=(64, 64), mode="bilinear", align_corners=False)
    assert raw.min() < 0 < raw.max()  # a random network has evidence of both signs
    cam = net.cam(x)
    # with a ReLU every negative value would become 0; here only the minimum does
    assert (cam[raw < 0] > 0).float().mean() > 0.9


@pytest.mark.parametrize("size, expected", [(None, (40, 56)), (16, (16, 16)), ((24, 32), (24, 32))])
def test_cam_size_and_range(size, expected):
    net = _net(2, 2)
    cam = net.cam(torch.rand(3, 1, 40, 56), size=size)
    assert cam.shape == (3, 2, *expected)
    assert cam.min() >= 0 and cam.max() <= 1


def test_cam_keeps_modes_builds_no_graph_and_leaves_running_statistics():
    net = _net(2, 2).train()
    net.encoder.layer1.eval()  # a mixed state (e.g. a frozen stage) must come back as it was
    modes = {name: m.training for name, m in net.named_modules()}
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    x = torch.rand(2, 1, 64, 64, requires_grad=True)
    cam = net.cam(x)
    assert not cam.requires_grad and cam.grad_fn is None
    assert {name: m.training for name, m in net.named_modules()} == modes
    for key, value in stats.items():
        assert torch.equal(net.state_dict()[key], value), key
    net.eval()
    net.cam(x)
    assert not any(m.training for m in net.modules())


def test_cam_uses_eval_mode():
    """In train mode batch-norm would use the batch's statistics; the CAM must not depend on the batch."""
    net = _net(1, 1).train()
    x = torch.rand(4, 1, 64, 64)
    torch.testing.assert_close(net.cam(x)[:1], net.cam(x[:1]), rtol=1e-4, atol=1e-5)


def test_cam_of_a_constant_map_is_zero():
    # a 16 x 16 input with max-pool leaves a 1 x 1 feature map, so every CAM is constant after upsampling
    net = _net(2, 2, backbone_kwargs={"widen_factor": 0.125})
    x = torch.rand(2, 1, 16, 16)
    assert net.features(x).shape[2:] == (1, 1)
    cam = net.cam(x)
    assert cam.shape == (2, 2, 16, 16)
    assert torch.equal(cam, torch.zeros_like(cam))
    # a zero head gives an all-zero raw map: also zero, not NaN
    with torch.no_grad():
        net.parent_head.weight.zero_()
    assert torch.equal(net.cam(torch.rand(1, 1, 64, 64)), torch.zeros(1, 2, 64, 64))


def test_three_dimensional_inputs():
    net = _net(2, 3, spatial_dims=3)
    x = torch.rand(1, 1, 16, 16, 8)
    parent, child = net(x)
    assert parent.shape == (1, 2) and child.shape == (1, 7)
    assert net.cam(x).shape == (1, 2, 16, 16, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"num_classes": 0}, ">= 1"),
        ({"num_subclasses": 0}, ">= 1"),
        ({"backbone": "resnet17"}, "resnet1"),
    ],
)
def test_invalid_arguments(kwargs, message):
    arguments = {"num_classes": 2, "num_subclasses": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        ParentChildClassifier(**arguments)


def test_wrong_input_shape():
    net = _net(2, 2)
    with pytest.raises(ValueError, match="expected input"):
        net(torch.rand(1, 2, 32, 32))
    with pytest.raises(ValueError, match="expected input"):
        net.cam(torch.rand(1, 32, 32))


def test_torchscript():
    net = _net(2, 2).eval()
    scripted = torch.jit.script(net)
    x = torch.rand(1, 1, 32, 32)
    for a, b in zip(scripted(x), net(x)):
        torch.testing.assert_close(a, b)


def _bce(logits, targets):
    p = torch.sigmoid(logits)
    return -(targets * torch.log(p) + (1 - targets) * torch.log(1 - p)).mean()


def test_loss_equals_hand_written_bce():
    torch.manual_seed(0)
    parent, child = torch.randn(4, 2), torch.randn(4, 2 * 3 + 1)
    parent_t = torch.randint(0, 2, (4, 2)).float()
    child_t = torch.randint(0, 2, (4, 7)).float()
    expected = _bce(parent, parent_t) + 0.5 * _bce(child, child_t)
    loss = ParentChildLoss()
    torch.testing.assert_close(loss((parent, child), (parent_t, child_t)), expected)
    # the single-tensor target that a SupervisedTrainer passes as batch["label"]
    torch.testing.assert_close(loss((parent, child), torch.cat([parent_t, child_t], dim=1)), expected)
    # integer targets are accepted as well
    torch.testing.assert_close(loss((parent, child), (parent_t.long(), child_t.long())), expected)
    weighted = ParentChildLoss(child_weight=2.0)((parent, child), (parent_t, child_t))
    torch.testing.assert_close(weighted, _bce(parent, parent_t) + 2.0 * _bce(child, child_t))


def test_loss_of_known_values():
    # zero logits: each BCE is ln 2, so the loss is 1.5 ln 2
    loss = ParentChildLoss()((torch.zeros(2, 1), torch.zeros(2, 9)), torch.zeros(2, 10))
    assert loss.item() == pytest.approx(1.5 * math.log(2.0))


def test_loss_backpropagates_through_the_network():
    net = _net(1, 2)
    loss = ParentChildLoss()(net(torch.rand(2, 1, 32, 32)), torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0.0]]))
    loss.backward()
    assert net.parent_head.weight.grad.abs().sum() > 0 and net.child_head.weight.grad.abs().sum() > 0


def test_loss_errors():
    outputs = (torch.zeros(2, 2), torch.zeros(2, 5))
    loss = ParentChildLoss()
    with pytest.raises(ValueError, match=r"\[B, C \+ C\*K \+ 1\]"):
        loss(outputs, torch.zeros(2, 6))
    with pytest.raises(ValueError, match="do not match"):
        loss(outputs, (torch.zeros(2, 2), torch.zeros(2, 4)))
    with pytest.raises(ValueError, match="pair"):
        loss(torch.zeros(2, 7), torch.zeros(2, 7))
    with pytest.raises(ValueError, match="child_weight"):
        ParentChildLoss(child_weight=-1.0)


def _square_batch(n, generator, positive=None, size=64, side=16):
    """Zero-mean noise slices; positives carry one bright ``side`` x ``side`` square at a random place.

    The noise is centred so that the convolutions' zero padding looks like background, not like an edge.
    """
    x = 0.3 * (torch.rand(n, 1, size, size, generator=generator) - 0.5)
    pos = torch.rand(n, generator=generator) < 0.5 if positive is None else torch.full((n,), positive)
    corners = torch.randint(0, size - side + 1, (n, 2), generator=generator)
    masks = torch.zeros(n, 1, size, size, dtype=torch.bool)
    for i in torch.nonzero(pos).flatten().tolist():
        r, c = corners[i].tolist()
        masks[i, 0, r : r + side, c : c + side] = True
    x = x + 0.7 * masks.float()
    # C = 1 parent, K = 1 child: [parent, child 0 (negative), child 1 (square)]
    label = torch.stack([pos.float(), (~pos).float(), pos.float()], dim=1)
    return x, label, masks


def test_a_few_steps_put_the_cam_maximum_inside_the_square():
    """Train briefly on square present / absent; the CAM's maximum must hit the square far more often than
    chance (the square's share of the image, 1/16). Two seeds are pooled: so few steps on so small an image leave
    some runs with a diffuse CAM, and the test is about the CAM, not about one lucky initialisation."""
    steps, hits, total = 40, 0, 0
    for seed in (0, 1):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        net = ParentChildClassifier(1, 1, backbone_kwargs=TINY)
        loss_fn = ParentChildLoss()
        optimiser = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.01)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=1e-2, total_steps=steps)
        for _ in range(steps):
            x, label, _ = _square_batch(16, generator)
            loss = loss_fn(net(x), label)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        x, _, masks = _square_batch(64, generator, positive=True)
        cam = net.cam(x)
        peak = cam.flatten(1).argmax(dim=1)
        hits += int(masks.flatten(1)[torch.arange(64), peak].sum())
        total += 64
        inside = (cam * masks).flatten(1).sum(1) / masks.flatten(1).sum(1)
        outside = (cam * ~masks).flatten(1).sum(1) / (~masks).flatten(1).sum(1)
        assert (inside > outside).float().mean() > 0.9
    chance = (16 / 64) ** 2
    assert hits / total > 2 * chance, f"CAM maximum inside the square in {hits}/{total} slices (chance {chance})"
