"""Tests of bundle.sam.slices: windowing presets, per-slice uint8 RGB images, empty slices, input errors."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage

from bundle.sam.slices import WINDOW_PRESETS, SliceWindow, volume_filename


def _load(path):
    return LoadImage(image_only=True, ensure_channel_first=True)(str(path))


def _nifti(tmp_path, data, name="vol.nii.gz"):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), np.diag([0.8, 0.8, 2.5, 1.0])), str(path))
    return path


def _rgb(window, volume):
    fitted = window.fit(volume)
    return window.slices(volume, fitted, range(volume.shape[-1])), fitted


HU_CASES = [
    # preset, low, high (None: the preset's)
    ("ct_soft_tissue", None, None),
    ("ct_liver", None, None),
    ("ct_abdomen", None, None),
    ("ct_abdomen", -1000.0, 1000.0),
]


@pytest.mark.parametrize("preset, low, high", HU_CASES)
def test_hu_window_maps_bounds_to_0_and_255(preset, low, high):
    _, p_low, p_high = WINDOW_PRESETS[preset]
    lo, hi = (p_low if low is None else low), (p_high if high is None else high)
    quarter = lo + (hi - lo) * 0.25
    values = [lo - 500.0, lo, quarter, hi, hi + 500.0]
    volume = torch.tensor(values).reshape(1, 1, 5, 1)
    rgb, fitted = _rgb(SliceWindow(preset, low=low, high=high), volume)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 1, 5, 3)
    assert rgb[0, 0, :, 0].tolist() == [0, 0, round(255 * 0.25), 255, 255]
    assert fitted.low.tolist() == [lo] and fitted.high.tolist() == [hi]
    # one channel feeds SAM's three: the same image in R, G and B
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


def test_hu_window_does_not_depend_on_the_volume():
    ct = torch.linspace(-1000, 2000, 3000).reshape(1, 10, 30, 10)
    w = SliceWindow("ct_soft_tissue")
    assert w.fit(ct).low.tolist() == w.fit(ct * 0.5).low.tolist() == [-160.0]


def test_mr_percentile_window(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.gamma(2.0, 100.0, (24, 20, 6)).astype(np.float32)
    data[0, 0, 0] = 1e5  # an outlier that min-max scaling would let dominate
    volume = _load(_nifti(tmp_path, data))
    rgb, fitted = _rgb(SliceWindow("mr_percentile"), volume)
    lo, hi = np.percentile(data, [0.5, 99.5])
    np.testing.assert_allclose([fitted.low[0], fitted.high[0]], [lo, hi], rtol=1e-4)
    assert rgb.min() == 0 and rgb.max() == 255
    middle = (data > lo * 1.2) & (data < hi * 0.8)
    assert np.isin(rgb[..., 0].transpose(1, 2, 0)[middle], [0, 255]).mean() < 0.01  # the bulk is not clipped
    assert rgb[0, 0, 0, 0] == 255


def test_mr_percentile_of_a_large_volume_is_sampled_but_accurate():
    data = torch.from_numpy(np.random.default_rng(1).normal(300, 50, (1, 160, 160, 100)).astype(np.float32))
    fitted = SliceWindow("mr_percentile", low=1.0, high=99.0).fit(data)
    lo, hi = np.percentile(data.numpy(), [1.0, 99.0])
    np.testing.assert_allclose([fitted.low[0], fitted.high[0]], [lo, hi], rtol=2e-3)


def test_minmax_window():
    volume = torch.tensor([3.0, 5.0, 7.0, 11.0]).reshape(1, 2, 2, 1)
    rgb, fitted = _rgb(SliceWindow("minmax"), volume)
    assert (fitted.low[0], fitted.high[0]) == (3.0, 11.0)
    assert rgb[0, :, :, 0].tolist() == [[0, round(255 * 2 / 8)], [round(255 * 4 / 8), 255]]


def test_three_channels_as_rgb():
    volume = torch.zeros(4, 3, 3, 2)
    for c in range(4):
        volume[c] = torch.arange(18.0).reshape(3, 3, 2) * (c + 1)  # same pattern, different scale per modality
    volume[3] = -volume[3]  # channel 3 is inverted: it must not leak into R, G or B
    rgb, fitted = _rgb(SliceWindow("minmax", channels=(2, 0, 1)), volume)
    assert rgb.shape == (2, 3, 3, 3)
    assert fitted.channels == (2, 0, 1)
    assert fitted.high.tolist() == [17.0 * 3, 17.0 * 1, 17.0 * 2]  # each channel scaled on its own range
    # after per-channel scaling the three patterns are identical
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb[1, 2, 2, 0] == 255 and rgb[0, 0, 0, 0] == 0


def test_slices_come_in_the_requested_order():
    volume = torch.arange(5.0).reshape(1, 1, 1, 5).expand(1, 2, 3, 5).contiguous()
    w = SliceWindow("minmax")
    rgb = w.slices(volume, w.fit(volume), [4, 0, 2])
    assert rgb.shape == (3, 2, 3, 3)
    assert rgb[:, 0, 0, 0].tolist() == [255, 0, round(255 * 0.5)]


def test_empty_slices_are_flagged():
    volume = torch.zeros(1, 50, 40, 5)
    volume[0, 10:30, 10:30, 1] = 100.0  # a large structure
    volume[0, 0, 0, 2] = 100.0  # one bright pixel: 1 / 2000 of the slice
    volume[0, :, :, 3] = 2.0  # faint, below 5 % of the range
    volume[0, 5:45, 5:35, 4] = 60.0
    w = SliceWindow("minmax")
    assert w.nonempty(volume, w.fit(volume)).tolist() == [False, True, False, False, True]
    assert SliceWindow("minmax", min_foreground_fraction=1e-4).nonempty(volume, w.fit(volume))[2]
    assert SliceWindow("minmax", foreground_level=0.01).nonempty(volume, w.fit(volume))[3]


@pytest.mark.parametrize("preset", ["mr_percentile", "minmax"])
def test_constant_volume_has_no_nonempty_slice(preset):
    volume = torch.full((1, 8, 8, 4), 37.0)
    w = SliceWindow(preset)
    fitted = w.fit(volume)
    assert not w.nonempty(volume, fitted).any()
    assert (w.slices(volume, fitted, range(4)) == 0).all()


@pytest.mark.parametrize("channels, shape", [(1, (1, 4, 4, 2)), ((0, 1, 3), (3, 4, 4, 2)), ((0, 0, 4), (4, 4, 4, 2))])
def test_wrong_channel_index_names_file_and_count(channels, shape):
    volume = MetaTensor(torch.rand(shape), meta={"filename_or_obj": "/data/case_007_flair.nii.gz"})
    with pytest.raises(ValueError) as err:
        SliceWindow("minmax", channels=channels).fit(volume)
    text = str(err.value)
    assert "case_007_flair.nii.gz" in text and f"{shape[0]} channel" in text


@pytest.mark.parametrize("shape", [(8, 8, 4), (1, 1, 8, 8, 4), (8, 8)])
def test_wrong_dimensionality_names_shape_and_file(tmp_path, shape):
    volume = MetaTensor(torch.rand(shape), meta={"filename_or_obj": str(tmp_path / "ct.nii.gz")})
    with pytest.raises(ValueError) as err:
        SliceWindow("ct_abdomen").fit(volume)
    assert str(tuple(shape)) in str(err.value) and "ct.nii.gz" in str(err.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_name_file_and_count(tmp_path, bad):
    data = np.random.default_rng(0).normal(0, 1, (6, 6, 3)).astype(np.float32)
    data[1, 2, 0] = data[3, 3, 2] = data[5, 0, 1] = bad
    path = _nifti(tmp_path, data, "broken_t1.nii.gz")
    volume = _load(path)
    for preset in ("mr_percentile", "ct_soft_tissue"):
        with pytest.raises(ValueError) as err:
            SliceWindow(preset).fit(volume)
        assert str(path) in str(err.value) and "3 non-finite" in str(err.value)


def test_filename_of_plain_arrays_and_metatensors():
    assert volume_filename(np.zeros((1, 2, 2, 2))) == "<array>"
    assert volume_filename(MetaTensor(torch.zeros(1, 2, 2, 2), meta={"filename_or_obj": ["a.nii", "b.nii"]})) == "a.nii"


def test_numpy_and_tensor_inputs_agree(tmp_path):
    data = np.random.default_rng(3).uniform(-300, 400, (1, 9, 7, 3)).astype(np.float32)
    w = SliceWindow("ct_abdomen")
    as_np = w.slices(data, w.fit(data), range(3))
    as_torch = w.slices(torch.from_numpy(data), w.fit(torch.from_numpy(data)), range(3))
    np.testing.assert_array_equal(as_np, as_torch)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"preset": "ct_softtissue"}, "ct_soft_tissue"),
        ({"preset": "ct_abdomen", "low": 100, "high": 50}, "below"),
        ({"channels": (0, 1)}, "1 channel"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SliceWindow(**kwargs)


def test_signature_changes_with_every_parameter():
    base = SliceWindow("ct_abdomen").signature()
    variants = [
        SliceWindow("ct_soft_tissue"),
        SliceWindow("ct_abdomen", low=-100),
        SliceWindow("ct_abdomen", high=300),
        SliceWindow("ct_abdomen", channels=1),
        SliceWindow("ct_abdomen", foreground_level=0.1),
        SliceWindow("ct_abdomen", min_foreground_fraction=0.01),
    ]
    signatures = [v.signature() for v in variants]
    assert all(s != base for s in signatures)
    assert SliceWindow("ct_abdomen").signature() == base
