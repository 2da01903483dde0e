import pytest
import torch

from bundle.workflows.segmentation.inputs import (
    PRIOR_MODES,
    build_network_input,
    input_channels,
    prior_channel_names,
    raw_network_input,
    split_image_prior,
)

CHANNEL_CASES = [
    ("add", 1, 3),
    ("channels", 1, 3),
    ("concat", 1, 3),
    ("concat", 4, 6),
    ("none", 1, 1),
    ("none", 4, 4),
]


@pytest.mark.parametrize("mode, image_channels, expected", CHANNEL_CASES)
def test_input_channels(mode, image_channels, expected):
    assert input_channels(mode, image_channels) == expected


@pytest.mark.parametrize("mode", ["add", "channels"])
def test_single_channel_modes_reject_multichannel(mode):
    with pytest.raises(ValueError, match="concat"):
        input_channels(mode, 4)
    with pytest.raises(ValueError, match="concat"):
        build_network_input(torch.rand(1, 4, 8, 8), torch.rand(1, 2, 8, 8), mode)


def test_unknown_mode_suggests_closest():
    with pytest.raises(ValueError, match="concat"):
        input_channels("concatt", 1)


SPATIAL = [(8, 8), (6, 6, 4)]


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_add_and_channels_formulas(spatial, scale):
    x = torch.rand(2, 1, *spatial)
    prior = torch.stack([torch.rand(2, *spatial) * 3, (torch.rand(2, *spatial) > 0.5).float()], dim=1)
    s, b = prior[:, :1], prior[:, 1:]
    add = build_network_input(x, prior, "add", prior_scale=scale)
    torch.testing.assert_close(add, torch.cat([x, x + s / scale, x + b], dim=1))
    channels = build_network_input(x, prior, "channels", prior_scale=scale)
    torch.testing.assert_close(channels, torch.cat([x, s / scale, b], dim=1))


@pytest.mark.parametrize("spatial", SPATIAL)
def test_concat_and_none(spatial):
    image = torch.rand(2, 4, *spatial)
    prior = torch.rand(2, 2, *spatial)
    out = build_network_input(image, prior, "concat", prior_scale=2.0)
    assert out.shape == (2, 6, *spatial)
    torch.testing.assert_close(out[:, :4], image)
    torch.testing.assert_close(out[:, 4], prior[:, 0] / 2)
    torch.testing.assert_close(out[:, 5], prior[:, 1])
    assert build_network_input(image, None, "none") is image


@pytest.mark.parametrize("mode", PRIOR_MODES)
def test_raw_input_zeroes_priors(mode):
    channels = 1 if mode in ("add", "channels") else 3
    image = torch.rand(2, channels, 6, 6, 4)
    raw = raw_network_input(image, mode)
    assert raw.shape[1] == input_channels(mode, channels)
    expected = build_network_input(image, torch.zeros(2, 2, 6, 6, 4), mode)
    torch.testing.assert_close(raw, expected)
    if mode == "add":
        torch.testing.assert_close(raw, image.repeat(1, 3, 1, 1, 1))
    if mode in ("channels", "concat"):
        assert raw[:, channels:].abs().sum() == 0


def test_shape_mismatch_and_missing_prior():
    with pytest.raises(ValueError, match="does not match"):
        build_network_input(torch.rand(1, 1, 8, 8), torch.rand(1, 2, 8, 7), "concat")
    with pytest.raises(ValueError, match="needs the prior"):
        build_network_input(torch.rand(1, 1, 8, 8), None, "add")


NAME_CASES = [
    ("add", ["CT"], ["CT", "CT+sam_seg_prior", "CT+sam_boundary_prior"]),
    ("channels", ["CT"], ["CT", "sam_seg_prior", "sam_boundary_prior"]),
    ("concat", ["FLAIR", "T1"], ["FLAIR", "T1", "sam_seg_prior", "sam_boundary_prior"]),
    ("none", ["FLAIR", "T1"], ["FLAIR", "T1"]),
]


@pytest.mark.parametrize("mode, names, expected", NAME_CASES)
def test_prior_channel_names(mode, names, expected):
    assert prior_channel_names(mode, names) == expected
    assert len(expected) == input_channels(mode, len(names))


def test_split_image_prior():
    inputs = torch.rand(1, 6, 4, 4)
    image, prior = split_image_prior(inputs, "concat", 4)
    assert image.shape[1] == 4 and prior.shape[1] == 2
    assert split_image_prior(inputs[:, :4], "concat", 4)[1] is None
    with pytest.raises(ValueError, match="5 channels"):
        split_image_prior(inputs[:, :5], "concat", 4)
