"""Tests of bundle.priors.cls_augment (SamAugCImage, SamAugCImaged): hand-computed values on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.priors.cls_augment import (
    CLS_AUGMENT_MODES,
    SAMAUG_PRIORS,
    SAMAUGC_PRIOR,
    SamAugCImage,
    SamAugCImaged,
    required_priors,
)
from bundle.priors.transforms import PRIOR_KINDS

# a 2 x 2 slice, one image channel
X = [[2.0, 4.0], [6.0, 8.0]]
P = [[0.0, 1.0], [0.5, 0.25]]  # SAMAug-C map
S = [[0.0, 0.9], [1.4, 0.0]]  # SAMAug segmentation prior
B = [[1.0, 1.0], [0.0, 0.0]]  # SAMAug boundary prior
DEFAULT_OUT = [[2.0, 4.0], [5.0, 5.75]]  # emphasis_min, alpha 0.5 (CASES_2D)
# the prior channels in an order that differs from the modes' order, so selection by name is exercised
NAMES = ["sam_boundary_prior", "samaugc_prior", "sam_seg_prior"]

CASES_2D = [
    # mode, alpha, expected x_aug (worked out by hand)
    ("emphasis", 0.5, [[1.0, 4.0], [4.5, 5.0]]),  # factors 0.5, 1, 0.75, 0.625
    ("emphasis", 0.2, [[0.4, 4.0], [3.6, 3.2]]),  # factors 0.2, 1, 0.6, 0.4
    ("emphasis", 1.0, X),
    ("emphasis", 0.0, [[0.0, 4.0], [3.0, 2.0]]),
    # emphasis_min, minimum m = 2: m + (x - m) * factor
    ("emphasis_min", 0.5, [[2.0, 4.0], [5.0, 5.75]]),  # 2 + 0 * 0.5, 2 + 2 * 1, 2 + 4 * 0.75, 2 + 6 * 0.625
    ("emphasis_min", 0.2, [[2.0, 4.0], [4.4, 4.4]]),  # 2 + 4 * 0.6, 2 + 6 * 0.4
    ("emphasis_min", 1.0, X),
    ("emphasis_min", 0.0, [[2.0, 4.0], [4.0, 3.5]]),
    ("add", 0.5, [[2.0, 5.0], [6.5, 8.25]]),
    ("samaug", 0.5, [[3.0, 5.9], [7.4, 8.0]]),  # x + S + B
]


def _prior(names=NAMES, meta=True):
    by_name = {"sam_boundary_prior": B, "samaugc_prior": P, "sam_seg_prior": S}
    data = torch.tensor([by_name[n] for n in names])
    if not meta:
        return data
    return MetaTensor(data, meta={"channel_names": list(names)})


def test_names_match_prior_kinds():
    assert SAMAUGC_PRIOR in PRIOR_KINDS and set(SAMAUG_PRIORS) <= set(PRIOR_KINDS)
    assert required_priors("emphasis") == required_priors("emphasis_min") == required_priors("add") == (
        "samaugc_prior",)
    assert required_priors("samaug") == ("sam_seg_prior", "sam_boundary_prior")
    assert CLS_AUGMENT_MODES[0] == "emphasis_min"  # the default


@pytest.mark.parametrize("mode, alpha, expected", CASES_2D)
def test_modes_2d(mode, alpha, expected):
    out = SamAugCImage(mode=mode, alpha=alpha)(torch.tensor([X]), _prior())
    assert out.shape == (1, 2, 2)
    np.testing.assert_allclose(np.asarray(out), [expected], atol=1e-6)


def test_default_mode_is_emphasis_min_with_half_alpha():
    out = SamAugCImage()(torch.tensor([X]), _prior())
    np.testing.assert_allclose(np.asarray(out), [DEFAULT_OUT], atol=1e-6)


def test_emphasis_min_dims_z_scored_tissue_towards_the_minimum():
    # a z-scored slice: off-mask tissue at -1.5, the image minimum -2 (off-mask too), salient tissue at +1
    x = torch.tensor([[[-1.5, -2.0], [1.0, 0.5]]])
    p = MetaTensor(torch.tensor([[[0.0, 0.0], [1.0, 0.0]]]), meta={"channel_names": ["samaugc_prior"]})
    dimmed = SamAugCImage("emphasis_min", alpha=0.5)(x, p)
    # -2 + (-1.5 + 2) * 0.5 = -1.75: darker, towards the minimum; 0.5 -> -2 + 2.5 * 0.5 = -0.75
    np.testing.assert_allclose(np.asarray(dimmed), [[[-1.75, -2.0], [1.0, -0.75]]], atol=1e-6)
    assert dimmed[0, 0, 0] < x[0, 0, 0]
    # the old formula brightens the same pixel towards 0, the mean
    old = SamAugCImage("emphasis", alpha=0.5)(x, p)
    np.testing.assert_allclose(np.asarray(old), [[[-0.75, -1.0], [1.0, 0.25]]], atol=1e-6)
    assert old[0, 0, 0] > x[0, 0, 0]


def test_emphasis_min_keeps_salient_pixels_and_follows_affine_intensity_maps():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 4, 3, generator=gen)
    ones = MetaTensor(torch.ones(1, 5, 4, 3), meta={"channel_names": ["samaugc_prior"]})
    torch.testing.assert_close(SamAugCImage("emphasis_min", alpha=0.3)(x, ones), x)  # P = 1 leaves x unchanged
    p = MetaTensor(torch.rand(1, 5, 4, 3, generator=gen), meta={"channel_names": ["samaugc_prior"]})
    aug = SamAugCImage("emphasis_min", alpha=0.3)
    # the same result on the image scaled and shifted per channel (another normalisation)
    scale, shift = torch.tensor([2.5, 0.1]).view(2, 1, 1, 1), torch.tensor([-7.0, 40.0]).view(2, 1, 1, 1)
    torch.testing.assert_close(aug(x * scale + shift, p), aug(x, p) * scale + shift, atol=1e-4, rtol=1e-5)
    # the minimum is per channel and over the whole image: no pixel goes below its channel's minimum
    out = aug(x, p)
    assert torch.all(out.flatten(1).amin(dim=1) >= x.flatten(1).amin(dim=1) - 1e-6)
    # hand computation of one pixel in each channel
    for c in range(2):
        m = x[c].min()
        expected = m + (x[c, 1, 2, 0] - m) * (0.3 + 0.7 * p[0, 1, 2, 0])
        torch.testing.assert_close(out[c, 1, 2, 0], expected.as_tensor())


def test_prior_is_shared_by_all_image_channels():
    image = torch.tensor([X, [[1.0, 1.0], [1.0, 1.0]]])
    emphasis = SamAugCImage("emphasis")(image, _prior())
    np.testing.assert_allclose(np.asarray(emphasis[1]), [[0.5, 1.0], [0.75, 0.625]], atol=1e-6)
    samaug = SamAugCImage("samaug")(image, _prior())
    assert samaug.shape == (2, 2, 2)  # the raw image's channels, not SAMAug's three
    np.testing.assert_allclose(np.asarray(samaug[1]), [[2.0, 2.9], [2.4, 1.0]], atol=1e-6)


def test_modes_3d():
    image = torch.arange(1.0, 9.0).reshape(1, 2, 2, 2)  # x[0, h, w, d] = 1 + 4h + 2w + d
    p = torch.zeros(1, 2, 2, 2)
    p[..., 1] = 1.0  # slice d = 0 has no salient pixel, slice d = 1 is salient everywhere
    prior = MetaTensor(p, meta={"channel_names": ["samaugc_prior"]})
    out = SamAugCImage("emphasis")(image, prior)
    expected = [[[[0.5, 2.0], [1.5, 4.0]], [[2.5, 6.0], [3.5, 8.0]]]]
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-6)
    out = SamAugCImage("add")(image, prior)
    np.testing.assert_allclose(np.asarray(out), [[[[1.0, 3.0], [3.0, 5.0]], [[5.0, 7.0], [7.0, 9.0]]]], atol=1e-6)
    sb = torch.zeros(2, 2, 2, 2)
    sb[0, 0, 0, 0], sb[1, 1, 1, 1] = 0.5, 1.0
    out = SamAugCImage("samaug")(image, MetaTensor(sb, meta={"channel_names": ["sam_seg_prior", "sam_boundary_prior"]}))
    expected = image.clone()
    expected[0, 0, 0, 0], expected[0, 1, 1, 1] = 1.5, 9.0
    np.testing.assert_allclose(np.asarray(out), np.asarray(expected), atol=1e-6)


@pytest.mark.parametrize(
    "mode, names, missing",
    [
        ("emphasis", ["sam_seg_prior", "sam_boundary_prior"], "samaugc_prior"),
        ("add", ["sam_seg_prior"], "samaugc_prior"),
        ("samaug", ["samaugc_prior"], "sam_seg_prior"),
        ("samaug", ["samaugc_prior", "sam_seg_prior"], "sam_boundary_prior"),
    ],
)
def test_missing_prior_names_it(mode, names, missing):
    with pytest.raises(ValueError, match=f"mode='{mode}' needs .*'{missing}'"):
        SamAugCImage(mode)(torch.tensor([X]), _prior(names))


def test_prior_names_without_meta():
    plain = _prior(["samaugc_prior"], meta=False)
    with pytest.raises(ValueError, match="no names"):
        SamAugCImage()(torch.tensor([X]), plain)
    expected = [DEFAULT_OUT]
    np.testing.assert_allclose(np.asarray(SamAugCImage(prior_names=["samaugc_prior"])(torch.tensor([X]), plain)),
                               expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(SamAugCImage()(torch.tensor([X]), plain, ["samaugc_prior"])),
                               expected, atol=1e-6)
    with pytest.raises(ValueError, match="3 channels but 1 channel names"):
        SamAugCImage()(torch.tensor([X]), _prior(meta=False), ["samaugc_prior"])


def test_meta_names_win_over_constructor_names():
    out = SamAugCImage(prior_names=["a", "b", "c"])(torch.tensor([X]), _prior())
    np.testing.assert_allclose(np.asarray(out), [DEFAULT_OUT], atol=1e-6)


def test_spatial_mismatch():
    with pytest.raises(ValueError, match="spatial shape"):
        SamAugCImage()(torch.zeros(1, 2, 3), _prior())


@pytest.mark.parametrize("kwargs, match", [({"mode": "emphasize"}, "emphasis"), ({"mode": "sam"}, "samaug"),
                                           ({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha")])
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamAugCImage(**kwargs)


def test_metatensor_meta_and_affine_kept():
    affine = torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.tensor([X]), affine=affine, meta={"filename_or_obj": "case_1.nii.gz"})
    prior = _prior()
    prior.meta["filename_or_obj"] = "cache/case_1"
    out = SamAugCImage()(image, prior)
    assert isinstance(out, MetaTensor)
    assert out.meta["filename_or_obj"] == "case_1.nii.gz" and "channel_names" not in out.meta
    torch.testing.assert_close(out.affine, affine)
    assert image.meta["filename_or_obj"] == "case_1.nii.gz"  # the input is left alone
    np.testing.assert_allclose(np.asarray(image), [X])


def test_integer_and_numpy_images():
    out = SamAugCImage()(np.array([[[2, 4], [6, 8]]], dtype=np.int16), _prior())
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, [DEFAULT_OUT], atol=1e-6)


def test_concat_gives_dual_input():
    out = SamAugCImage("add", concat=True)(torch.tensor([X]), _prior())
    assert out.shape == (2, 2, 2)
    np.testing.assert_allclose(np.asarray(out), [X, [[2.0, 5.0], [6.5, 8.25]]], atol=1e-6)


def test_dictionary_wrapper():
    affine = torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0], dtype=torch.float64))
    data = {"image": MetaTensor(torch.tensor([X]), affine=affine), "image_prior": _prior(), "label": 1}
    out = SamAugCImaged("image", mode="add")(data)
    assert set(out) == {"image", "image_prior", "image_aug", "label"}
    assert out["image"] is data["image"]
    np.testing.assert_allclose(np.asarray(out["image_aug"]), [[[2.0, 5.0], [6.5, 8.25]]], atol=1e-6)
    torch.testing.assert_close(out["image_aug"].affine, affine)
    dual = SamAugCImaged("image", concat=True, output_postfix="_dual")(data)
    np.testing.assert_allclose(np.asarray(dual["image_dual"]), [X, DEFAULT_OUT], atol=1e-6)


def test_dictionary_wrapper_missing_keys():
    with pytest.raises(KeyError, match="image_prior"):
        SamAugCImaged("image")({"image": torch.tensor([X])})
    assert SamAugCImaged("image", allow_missing_keys=True)({"label": 0}) == {"label": 0}
    with pytest.raises(ValueError, match="output_postfix"):
        SamAugCImaged("image", output_postfix="")
