"""bundle.networks.dilated_resnet: the output stride of MONAI's ResNets by dilation, and SAM-Mix's default CAM size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.networks.nets import resnet18, resnet34, resnet50

from bundle.networks import build_backbone
from bundle.networks.dilated_resnet import OUTPUT_STRIDES, feature_stride, set_output_stride
from bundle.networks.grad_cam import grad_cam
from bundle.networks.sam_mix import build_classifier, classifier_stride

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "train_sam_mix.json"
STAGES = ("layer1", "layer2", "layer3", "layer4")


def _pair(builder, **kwargs):
    """Two networks with the same weights: one as MONAI builds it, one to dilate."""
    torch.manual_seed(0)
    built = builder(spatial_dims=2, n_input_channels=1, num_classes=2, **kwargs).eval()
    other = builder(spatial_dims=2, n_input_channels=1, num_classes=2, **kwargs)
    other.load_state_dict(built.state_dict())
    return built, other.eval()


def _features(net, x):
    out = {}
    hooks = [getattr(net, name).register_forward_hook(lambda _m, _i, o, n=name: out.__setitem__(n, o))
             for name in STAGES]
    with torch.no_grad():
        logits = net(x)
    for hook in hooks:
        hook.remove()
    return out, logits


# builder, kwargs, stride as built, output stride asked, stages that keep their output exactly
CASES = [
    (resnet18, {}, 16, 8, ("layer1", "layer2", "layer3")),
    (resnet18, {"conv1_t_stride": 2}, 32, 16, ("layer1", "layer2", "layer3")),
    (resnet18, {"conv1_t_stride": 2}, 32, 8, ("layer1", "layer2")),
    (resnet34, {}, 16, 8, ("layer1", "layer2", "layer3")),
    (resnet50, {"conv1_t_stride": 2}, 32, 8, ("layer1", "layer2")),
]


@pytest.mark.parametrize("builder, kwargs, built_stride, asked, unchanged", CASES)
def test_dilation_keeps_the_weights_and_the_coarse_features(builder, kwargs, built_stride, asked, unchanged):
    built, dilated = _pair(builder, **kwargs)
    assert feature_stride(built, "layer4") == built_stride
    assert set_output_stride(dilated, asked) == asked
    assert {k: v.shape for k, v in dilated.state_dict().items()} == {k: v.shape for k, v in built.state_dict().items()}
    x = torch.randn(2, 1, 96, 96)
    coarse, coarse_logits = _features(built, x)
    fine, fine_logits = _features(dilated, x)
    assert fine["layer4"].shape[-2:] == (96 // asked, 96 // asked)
    for name in unchanged:  # the stages before the first dilated one compute what they did
        assert torch.equal(fine[name], coarse[name]), name
    # atrous: the fine map sampled every (built / asked) pixels is the coarse map
    step = built_stride // asked
    torch.testing.assert_close(fine["layer4"][..., ::step, ::step], coarse["layer4"], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(fine_logits, coarse_logits)  # the global pooling sees the finer map


@pytest.mark.parametrize("builder, kwargs, stride", [(resnet18, {}, 16), (resnet18, {"conv1_t_stride": 2}, 32),
                                                     (resnet50, {}, 16)])
def test_its_own_stride_or_none_leaves_the_network_as_built(builder, kwargs, stride):
    built, same = _pair(builder, **kwargs)
    assert set_output_stride(same, stride) == stride
    assert set_output_stride(same, None) == stride
    x = torch.randn(2, 1, 64, 64)
    assert torch.equal(_features(same, x)[1], _features(built, x)[1])
    for name, module in same.named_modules():  # no convolution touched
        if isinstance(module, torch.nn.Conv2d):
            assert module.dilation == (1, 1), name


def test_train_mode_runs_and_backpropagates_at_stride_8():
    _, net = _pair(resnet18)
    set_output_stride(net, 8)
    net.train()
    logits = net(torch.randn(4, 1, 64, 64))
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("value, words", [
    (12, "12 is not one of [8, 16, 32]"),
    (True, "True is not one of [8, 16, 32]"),
    ("8", "'8' is not one of [8, 16, 32]"),
    (32, "32 is above the stride this ResNet has as built (16"),
])
def test_bad_values_are_refused_in_one_line_naming_the_option(value, words):
    net = build_backbone("resnet18", 2, 1, 2)
    with pytest.raises(ValueError) as refused:
        set_output_stride(net, value)
    message = str(refused.value)
    assert message.startswith("output_stride: ") and words in message and "\n" not in message, message


def test_other_backbones_accept_only_their_own_stride():
    net = build_backbone("densenet121", 2, 1, 2)
    assert set_output_stride(net, 32, "class_layers.relu") == 32
    with pytest.raises(ValueError, match=r"^output_stride: 8 needs a MONAI ResNet .* has stride 32 .*: give 32$"):
        set_output_stride(net, 8, "class_layers.relu")


def test_a_pooling_shortcut_is_refused():
    net = resnet18(spatial_dims=2, n_input_channels=1, num_classes=2, shortcut_type="A")
    with pytest.raises(ValueError, match=r"^output_stride: layer4.0 has a shortcut of type A"):
        set_output_stride(net, 8)


def test_sam_mix_default_cam_is_at_least_32_by_32_at_256():
    """The config's default classifier, on the paper's 256 x 256 slices: Grad-CAM weights a 32 x 32 map (a
    stride-16 map would be 16 x 16; the issue asked for at least 32 x 32)."""
    config = json.loads(CONFIG.read_text())
    assert config["roi_size"] == [256, 256] and config["output_stride"] in OUTPUT_STRIDES
    channels = len(config["image_channel_names"])
    torch.manual_seed(0)
    net, layer, stride = build_classifier(config["backbone"], channels, config["backbone_kwargs"],
                                          config["output_stride"])
    assert stride == classifier_stride(config["backbone"], channels, config["backbone_kwargs"],
                                       config["output_stride"])
    shapes = []
    hook = dict(net.named_modules())[layer].register_forward_hook(lambda _m, _i, o: shapes.append(o.shape[-2:]))
    x = torch.rand(2, channels, 256, 256)
    x[:, :, 96:160, 40:120] += 2.0
    cam = grad_cam(net, x, layer, class_idx=1)
    hook.remove()
    assert min(shapes[-1]) >= 32 and 256 // stride >= 32
    assert cam.shape == (2, 1, 256, 256)


def test_classifier_stride_keeps_the_random_state():
    torch.manual_seed(3)
    classifier_stride("resnet18", 1, {}, 8)
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(3), after)
