"""Tests of bundle.networks: the dual-branch classifier, its loss, fusion, per-branch Grad-CAM and TorchScript."""

from __future__ import annotations

import io
import json
import math
import time
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from bundle.networks import (
    BACKBONES,
    DualBranchClassifier,
    DualBranchLoss,
    branch_grad_cam,
    build_backbone,
    choose_fusion_weight,
    fuse_probabilities,
    fusion_weight_scores,
    grad_cam,
    mean_roc_auc,
)
from bundle.networks.fusion import class_roc_aucs

LN2, LN3 = math.log(2.0), math.log(3.0)


def _net(backbone="resnet18", spatial_dims=2, seed=0, **kwargs):
    torch.manual_seed(seed)
    return DualBranchClassifier(backbone, spatial_dims, in_channels=1, num_classes=3, **kwargs)


def _count(module):
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- network


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_2d(backbone):
    net = _net(backbone).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 2, 32, 32))
    assert out.shape == (2, 2, 3) and out.dtype == torch.float32
    single = _net(backbone, branches="augmented").eval()
    with torch.no_grad():
        assert single(torch.rand(2, 1, 32, 32)).shape == (2, 1, 3)


def test_3d_resnet18():
    net = _net("resnet18", 3, shared_backbone=False).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 2, 16, 16, 16)).shape == (2, 2, 3)


def test_3d_densenet121():
    start = time.perf_counter()
    net = _net("densenet121", 3).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 2, 32, 32, 32))  # DenseNet pools 32x: 32 is its smallest input
    assert out.shape == (2, 2, 3)
    assert time.perf_counter() - start < 20  # about 1 s on two cores


@pytest.mark.parametrize("backbone", ["resnet18", "seresnet50"])
def test_parameter_counts(backbone):
    torch.manual_seed(0)
    one = _count(build_backbone(backbone, 2, 1, 3))
    assert _count(_net(backbone, shared_backbone=True)) == one
    assert _count(_net(backbone, shared_backbone=False)) == 2 * one
    assert _count(_net(backbone, branches="raw")) == one
    assert _count(_net(backbone, branches="augmented", shared_backbone=False)) == one  # one branch: one backbone


@pytest.mark.parametrize("training", [False, True])
def test_shared_backbone_gives_equal_branches_for_equal_inputs(training):
    net = _net(shared_backbone=True).train(training)
    x = torch.rand(2, 1, 32, 32)
    out = net(torch.cat([x, x], dim=1))
    torch.testing.assert_close(out[:, 0], out[:, 1])
    separate = _net(shared_backbone=False).eval()
    with torch.no_grad():
        out = separate(torch.cat([x, x], dim=1))
    assert not torch.allclose(out[:, 0], out[:, 1])  # two backbones, two initialisations


def test_single_branch_baseline_equals_branch_a():
    """Built with the same seed, the raw baseline is branch A of the shared dual network."""
    x, x_aug = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    dual, raw = _net(seed=3).eval(), _net(seed=3, branches="raw").eval()
    with torch.no_grad():
        torch.testing.assert_close(raw(x)[:, 0], dual(torch.cat([x, x_aug], dim=1))[:, 0])
    assert raw.branch_names == ("raw",) and dual.branch_names == ("raw", "augmented")
    assert _net(branches="augmented").branch_names == ("augmented",)
    assert dual.input_channels == 2 and raw.input_channels == 1


def test_multichannel_branches_split_in_order():
    torch.manual_seed(0)
    net = DualBranchClassifier("resnet18", 2, in_channels=2, num_classes=2, shared_backbone=False).eval()
    x, x_aug = torch.rand(1, 2, 32, 32), torch.rand(1, 2, 32, 32)
    with torch.no_grad():
        out = net(torch.cat([x, x_aug], dim=1))
        torch.testing.assert_close(out[:, 0], net.branch_backbone("raw")(x))
        torch.testing.assert_close(out[:, 1], net.branch_backbone("augmented")(x_aug))


def test_branch_backbone():
    shared, separate = _net(), _net(shared_backbone=False)
    assert shared.branch_backbone(0) is shared.branch_backbone(1) is shared.backbones[0]
    assert separate.branch_backbone("raw") is separate.backbones[0]
    assert separate.branch_backbone(1) is separate.backbones[1]
    with pytest.raises(ValueError, match="out of range"):
        separate.branch_backbone(2)
    with pytest.raises(ValueError, match="raw"):
        _net(branches="raw").branch_backbone("augmented")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"backbone": "resnet19"}, "resnet18"),
        ({"backbone": "densenet"}, "densenet121"),
        ({"branches": "duall"}, "dual"),
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"in_channels": 0}, "in_channels"),
    ],
)
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DualBranchClassifier(**kwargs)


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 3, 32, 32), (2, 2, 32, 32, 32)])
def test_wrong_input_shape(shape):
    with pytest.raises(ValueError, match=r"expected input \[B, 2, \*spatial\]"):
        _net()(torch.rand(shape))


# ---------------------------------------------------------------- TorchScript and bundle checks


def _roundtrip(module):
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer, map_location="cpu")


@pytest.mark.parametrize(
    "backbone, kwargs",
    [
        ("resnet18", {"shared_backbone": True}),
        ("resnet18", {"shared_backbone": False}),
        ("resnet18", {"branches": "raw"}),
        ("densenet121", {"shared_backbone": False}),
    ],
)
def test_torchscript_script_roundtrip(backbone, kwargs):
    net = _net(backbone, **kwargs).eval()
    x = torch.rand(2, net.input_channels, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch >= 2.10 deprecates TorchScript; still supported
        warnings.simplefilter("ignore", FutureWarning)
        scripted = _roundtrip(torch.jit.script(net))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
    with pytest.raises(Exception, match="expected input"):
        scripted(torch.rand(2, 3, 32, 32))


def test_torchscript_trace_roundtrip():
    net = _net("resnet18", shared_backbone=False).eval()
    x = torch.rand(2, 2, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = _roundtrip(torch.jit.trace(net, x))
    with torch.no_grad():
        torch.testing.assert_close(traced(x), net(x))


def test_monai_verify_net_in_out(tmp_path):
    from monai.bundle import verify_net_in_out

    config = {"network_def": {"_target_": "bundle.networks.DualBranchClassifier", "backbone": "resnet18",
                              "spatial_dims": 2, "in_channels": 1, "num_classes": 3}}
    # the output's "channels" are the branches: [B, n_branches, num_classes]
    meta = {"network_data_format": {
        "inputs": {"image": {"num_channels": 2, "spatial_shape": [32, 32], "dtype": "float32"}},
        "outputs": {"pred": {"num_channels": 2, "dtype": "float32"}}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    verify_net_in_out(net_id="network_def", meta_file=str(tmp_path / "metadata.json"),
                      config_file=str(tmp_path / "config.json"), device="cpu")


# ---------------------------------------------------------------- loss

# branch A: sample 0 logits [0, 0] (CE ln 2 for class 0), sample 1 [0, ln 3] (p1 = 3/4: CE ln 4/3 for class 1);
# branch B: sample 0 [ln 3, 0] (p0 = 3/4: ln 4/3), sample 1 [0, 0] (ln 2)
LOGITS = torch.tensor([[[0.0, 0.0], [LN3, 0.0]], [[0.0, LN3], [0.0, 0.0]]])
TARGET = torch.tensor([0, 1])


def test_loss_is_sum_of_branch_cross_entropies():
    per_branch_mean = (LN2 + math.log(4 / 3)) / 2  # the same for A and B
    assert float(DualBranchLoss()(LOGITS, TARGET)) == pytest.approx(2 * per_branch_mean)  # = ln 8/3
    assert float(DualBranchLoss(reduction="sum")(LOGITS, TARGET)) == pytest.approx(2 * math.log(8 / 3))
    assert float(DualBranchLoss()(LOGITS[:, :1], TARGET)) == pytest.approx(per_branch_mean)
    assert float(DualBranchLoss()(LOGITS, TARGET[:, None].float())) == pytest.approx(math.log(8 / 3))


def test_multi_label_loss():
    # A [0, ln 3] vs [1, 0]: ln 2 and -ln(1/4) = ln 4; B [ln 3, 0] vs [1, 0]: -ln(3/4) = ln 4/3 and ln 2
    logits = torch.tensor([[[0.0, LN3], [LN3, 0.0]]])
    target = torch.tensor([[1.0, 0.0]])
    expected = (LN2 + math.log(4)) / 2 + (math.log(4 / 3) + LN2) / 2
    assert float(DualBranchLoss(multi_label=True)(logits, target)) == pytest.approx(expected)


@pytest.mark.parametrize(
    "logits, target, multi_label, match",
    [
        (LOGITS, torch.tensor([0.5, 1.0]), False, "integer class indices"),
        (LOGITS, torch.tensor([0, 2]), False, r"in \[0, 1\]"),
        (LOGITS, torch.zeros(2, 2), False, "multi_label=True"),
        (LOGITS, torch.zeros(2), True, r"\[B, K\]"),
        (LOGITS[:, 0], TARGET, False, r"\[B, n_branches, num_classes\]"),
    ],
)
def test_loss_errors(logits, target, multi_label, match):
    with pytest.raises(ValueError, match=match):
        DualBranchLoss(multi_label=multi_label)(logits, target)


def test_loss_trains_both_branches():
    net = _net(shared_backbone=False)
    loss = DualBranchLoss()(net(torch.rand(2, 2, 32, 32)), torch.tensor([0, 2]))
    loss.backward()
    assert all(p.grad is not None for p in net.backbones[0].parameters())
    assert all(p.grad is not None for p in net.backbones[1].parameters())


# ---------------------------------------------------------------- fusion


def test_fuse_probabilities_by_hand():
    # sample 0: p_A = [1/2, 1/2], p_B = [3/4, 1/4]; w = 0.2 -> [0.1 + 0.6, 0.1 + 0.2]
    fused = fuse_probabilities(LOGITS, w=0.2)
    torch.testing.assert_close(fused[0], torch.tensor([0.7, 0.3]))
    # sample 1: p_A = [1/4, 3/4], p_B = [1/2, 1/2] -> [0.05 + 0.4, 0.15 + 0.4]
    torch.testing.assert_close(fused[1], torch.tensor([0.45, 0.55]))
    # multi-label: sample 0 sigmoid A = [1/2, 1/2], B = [3/4, 1/2] -> [0.1 + 0.6, 0.1 + 0.4];
    # sample 1 sigmoid A = [1/2, 3/4], B = [1/2, 1/2] -> [0.1 + 0.4, 0.15 + 0.4]
    torch.testing.assert_close(fuse_probabilities(LOGITS, 0.2, multi_label=True),
                               torch.tensor([[0.7, 0.5], [0.5, 0.55]]))
    torch.testing.assert_close(fuse_probabilities(LOGITS[:, 1:], w=0.9), torch.tensor([[0.75, 0.25], [0.5, 0.5]]))


@pytest.mark.parametrize("logits, w, match", [(LOGITS, 1.5, "w must be"), (torch.zeros(2, 3, 2), 0.5, "1 or 2")])
def test_fuse_errors(logits, w, match):
    with pytest.raises(ValueError, match=match):
        fuse_probabilities(logits, w)


def test_mean_roc_auc_by_hand():
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.65, 0.35, 0.0], [0.2, 0.8, 0.0]])
    # class 0: positives {0.9, 0.6} vs negatives {0.65, 0.2}: 3 of 4 pairs ordered; class 1 likewise; class 2 absent
    assert mean_roc_auc(probs, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.75)
    aucs = class_roc_aucs(probs.numpy(), [0, 0, 1, 1])  # numpy scores and a list of targets as well
    assert aucs[:2] == pytest.approx([0.75, 0.75]) and math.isnan(aucs[2])
    with pytest.raises(ValueError, match="undefined"):
        mean_roc_auc(probs, torch.tensor([0, 0, 0, 0]))


def _perfect_and_random(n=40, seed=0):
    """Binary task: one branch ranks perfectly by a tiny margin, the other is random with a large spread."""
    rng = np.random.default_rng(seed)
    targets = torch.tensor([0, 1] * (n // 2))
    perfect = torch.stack([torch.zeros(n), (targets.float() - 0.5) * 0.04], dim=1)  # p1 = 0.51 / 0.49
    random = torch.stack([torch.zeros(n), torch.tensor(rng.normal(0, 3, n), dtype=torch.float32)], dim=1)
    return perfect, random, targets


def test_choose_fusion_weight_prefers_the_perfect_branch():
    perfect, random, targets = _perfect_and_random()
    assert choose_fusion_weight(torch.stack([perfect, random], dim=1), targets) == 1.0
    assert choose_fusion_weight(torch.stack([random, perfect], dim=1), targets) == 0.0
    scores = dict(fusion_weight_scores(torch.stack([perfect, random], dim=1), targets))
    assert list(scores) == [round(0.1 * i, 1) for i in range(11)]
    assert scores[1.0] == 1.0 and scores[0.0] == pytest.approx(
        roc_auc_score(targets.numpy(), random[:, 1].numpy()))
    multi = torch.stack([perfect[:, 1:], random[:, 1:]], dim=1)  # one label: sigmoid of the same logit
    assert choose_fusion_weight(multi, targets[:, None].float(), multi_label=True) == 1.0
    assert choose_fusion_weight(torch.stack([random, perfect], dim=1), targets, metric="accuracy") == 0.0


def test_choose_fusion_weight_ties():
    perfect, _, targets = _perfect_and_random()
    assert choose_fusion_weight(torch.stack([perfect, perfect], dim=1), targets) == 0.5
    assert choose_fusion_weight(torch.stack([perfect, perfect], dim=1), targets, grid=[0.1, 0.4, 0.6]) == 0.4
    assert choose_fusion_weight(torch.zeros(4, 2, 2), torch.tensor([0, 1, 0, 1]), metric=lambda p, t: 1.0) == 0.5
    with pytest.raises(ValueError, match="NaN"):
        choose_fusion_weight(torch.zeros(4, 2, 2), torch.tensor([0, 1, 0, 1]), metric=lambda p, t: float("nan"))
    with pytest.raises(ValueError, match="auc"):
        choose_fusion_weight(torch.zeros(4, 2, 2), torch.tensor([0, 1, 0, 1]), metric="aucc")


# ---------------------------------------------------------------- Grad-CAM


def _hooks(net):
    return sum(len(m._forward_hooks) + len(m._backward_hooks) for m in net.modules())


@pytest.mark.parametrize("backbone, size", [("resnet18", 32), ("densenet121", 64)])
def test_branch_grad_cam_2d(backbone, size):
    net = _net(backbone).train()
    x = torch.rand(2, 1, size, size)
    x_aug = x * (torch.arange(size) < size // 2).float()  # right half suppressed
    cam_a, cam_b = branch_grad_cam(net, torch.cat([x, x_aug], dim=1), class_idx=1)
    for cam in (cam_a, cam_b):
        assert cam.shape == (2, 1, size, size) and cam.min() >= 0 and cam.max() <= 1
    assert not torch.allclose(cam_a, cam_b)
    assert net.training and _hooks(net) == 0 and all(p.grad is None for p in net.parameters())
    same_a, same_b = branch_grad_cam(net, torch.cat([x, x], dim=1), class_idx=[0, 2])
    torch.testing.assert_close(same_a, same_b)
    for peak in cam_a.flatten(1).max(dim=1).values.tolist() + same_a.flatten(1).max(dim=1).values.tolist():
        assert peak == pytest.approx(1.0) or peak == 0.0  # each map scaled to [0, 1]; 0 = no positive evidence
    assert float(cam_a.max()) == pytest.approx(1.0)


def test_branch_grad_cam_3d_separate_backbones():
    net = _net("resnet18", 3, shared_backbone=False)
    with torch.no_grad():  # Grad-CAM needs gradients and turns them on for itself
        cams = branch_grad_cam(net, torch.rand(1, 2, 32, 32, 32))
    assert len(cams) == 2 and all(c.shape == (1, 1, 32, 32, 32) for c in cams)
    assert all(0 <= float(c.min()) and float(c.max()) <= 1 for c in cams)
    (single,) = branch_grad_cam(_net("resnet18", 3, branches="augmented"), torch.rand(1, 1, 32, 32, 32))
    assert single.shape == (1, 1, 32, 32, 32)


def test_grad_cam_flat_map_is_zero_and_errors():
    net = _net("seresnet50")  # a 32 x 32 input leaves a single feature pixel: nothing to localise
    (cam, _) = branch_grad_cam(net, torch.rand(1, 2, 32, 32), class_idx=0)
    assert not cam.any()
    backbone = net.branch_backbone(0)
    with pytest.raises(ValueError, match="layer4"):
        grad_cam(backbone, torch.rand(1, 1, 32, 32), "layer5")
    with pytest.raises(ValueError, match="class_idx"):
        grad_cam(backbone, torch.rand(2, 1, 32, 32), "layer4", class_idx=3)
    with pytest.raises(ValueError, match="one per sample"):
        grad_cam(backbone, torch.rand(2, 1, 32, 32), "layer4", class_idx=[0, 1, 2])
