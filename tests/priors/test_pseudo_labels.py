"""Tests of bundle.priors.pseudo_labels: blur, per-slice pseudo labels, label values of class groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import correlate1d

from bundle.priors.pseudo_labels import (
    class_map_to_label,
    class_values_for_groups,
    gaussian_blur,
    gaussian_kernel,
    pseudo_label_slice,
)

BRATS_REGIONS = ((1, 2, 4), (1, 4), (4,))  # whole tumour, tumour core, enhancing tumour
ABDOMEN = ((1,), (2,), (3,), (4,))
WHOLE_TUMOUR = ((1, 2, 4),)


def _scipy_blur(maps, kernel_size, sigma):
    # independent reference: scipy's "mirror" mode is the reflect-101 border (d c b | a b c d | c b a)
    x = np.arange(kernel_size) - (kernel_size - 1) / 2
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    out = correlate1d(np.asarray(maps, dtype=np.float64), kernel, axis=1, mode="mirror")
    return correlate1d(out, kernel, axis=2, mode="mirror")


def test_kernel_is_normalised_and_symmetric():
    kernel = gaussian_kernel(21, 3.5)
    assert kernel.shape == (21,) and kernel.dtype == torch.float32
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(kernel, kernel.flip(0))
    assert int(kernel.argmax()) == 10


@pytest.mark.parametrize("shape", [(2, 30, 40), (1, 6, 5), (1, 1, 3)])
def test_blur_keeps_a_constant_map_constant(shape):
    out = gaussian_blur(torch.full(shape, 0.7))
    assert out.shape == shape and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full(shape, 0.7), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape, kernel_size, sigma", [((2, 30, 40), 21, 3.5), ((1, 6, 5), 21, 3.5), ((1, 9, 8), 5, 1)])
def test_blur_matches_reflect_101_reference(shape, kernel_size, sigma):
    maps = np.random.default_rng(0).random(shape)
    out = gaussian_blur(maps, kernel_size, sigma)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_allclose(out.numpy(), _scipy_blur(maps, kernel_size, sigma), rtol=0, atol=1e-5)


def test_blur_border_is_not_zero_padded():
    maps = torch.zeros(1, 30, 30)
    maps[:, :, :3] = 1.0
    out = gaussian_blur(maps)
    # reflect-101 mirrors the bright columns 1-2 outside: the edge column stays well above what zero padding gives
    assert float(out[0, 15, 0]) > 0.45


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kernel_size": 20}, "odd"),
        ({"kernel_size": 0}, "odd integer >= 1"),
        ({"sigma": 0.0}, "sigma must be"),
    ],
)
def test_blur_bad_kernel(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gaussian_blur(torch.zeros(1, 8, 8), **kwargs)


def test_blur_needs_channels():
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        gaussian_blur(torch.zeros(8, 8))


def test_negative_classes_are_zeroed():
    refined = np.ones((3, 16, 16), dtype=np.float32)
    masks = pseudo_label_slice(refined, [True, False, True], (40, 48))
    assert masks.shape == (3, 40, 48) and masks.dtype == torch.uint8
    assert bool((masks[0] == 1).all()) and bool((masks[1] == 0).all()) and bool((masks[2] == 1).all())


def test_binary_threshold_after_upsampling_and_blur():
    refined = torch.zeros(1, 16, 16)
    refined[0, :, :8] = 1.0  # left half
    masks = pseudo_label_slice(refined, torch.tensor([True]), (64, 64))
    # reference: bilinear (align_corners=False), reflect-101 blur, threshold 0.5
    up = torch.nn.functional.interpolate(refined[None], size=(64, 64), mode="bilinear", align_corners=False)[0]
    expected = _scipy_blur(up.numpy(), 21, 3.5) > 0.5
    np.testing.assert_array_equal(masks.numpy().astype(bool), expected)
    # the symmetric edge sits between columns 31 and 32
    assert bool(masks[0, :, :32].all()) and not bool(masks[0, :, 32:].any())


def test_threshold_is_strict_and_configurable():
    refined = torch.full((1, 8, 8), 0.4)
    assert not bool(pseudo_label_slice(refined, [True], (16, 16)).any())
    assert bool(pseudo_label_slice(refined, [True], (16, 16), threshold=0.3).all())


def _two_class_maps():
    # class 0 high on the left third, class 1 on the right third, both 0.4 in the middle
    refined = torch.full((2, 30, 30), 0.1)
    refined[0, :, :10] = 0.9
    refined[1, :, 20:] = 0.8
    refined[:, :, 10:20] = 0.4
    return refined


def test_multi_class_argmax_with_background_threshold():
    refined = _two_class_maps()
    kwargs = {"size": (30, 30), "kernel_size": 3, "sigma": 0.5, "multi_class": True}
    labels = pseudo_label_slice(refined, [True, True], **kwargs)
    assert labels.shape == (30, 30) and labels.dtype == torch.int64
    assert bool((labels[:, :8] == 1).all()) and bool((labels[:, 22:] == 2).all())
    assert bool((labels[:, 12:18] == 0).all())  # max 0.4 <= 0.5: background
    lowered = pseudo_label_slice(refined, [True, True], background_threshold=0.3, **kwargs)
    assert bool((lowered[:, 12:18] > 0).all())


def test_multi_class_negative_class_never_wins():
    refined = _two_class_maps()
    labels = pseudo_label_slice(refined, [True, False], (30, 30), kernel_size=3, sigma=0.5, multi_class=True)
    assert not bool((labels == 2).any())
    assert bool((labels[:, 22:] == 0).all()) and bool((labels[:, :8] == 1).all())


@pytest.mark.parametrize(
    "args, message",
    [
        ((torch.zeros(8, 8), [True], (8, 8)), r"\[C, h, w\]"),
        ((torch.zeros(2, 8, 8), [True], (8, 8)), "one per class"),
        ((torch.zeros(1, 8, 8), [True], (8,)), r"\(H, W\)"),
        ((torch.zeros(1, 8, 8), [True], (0, 8)), "positive sizes"),
    ],
)
def test_pseudo_label_bad_inputs(args, message):
    with pytest.raises(ValueError, match=message):
        pseudo_label_slice(*args)


def test_pseudo_label_bad_threshold():
    with pytest.raises(ValueError, match="threshold must be finite"):
        pseudo_label_slice(torch.zeros(1, 8, 8), [True], (8, 8), threshold=float("nan"))


@pytest.mark.parametrize(
    "groups, values",
    [
        (BRATS_REGIONS, (2, 1, 4)),
        (ABDOMEN, (1, 2, 3, 4)),
        (WHOLE_TUMOUR, (1,)),
        (((4,), (1, 4), (1, 2, 4)), (4, 1, 2)),  # order of the classes does not matter
        (((1, 2), (2, 3)), (1, 3)),  # overlapping, not nested: 2 would read back as both
    ],
)
def test_class_values_for_groups(groups, values):
    assert class_values_for_groups(groups) == values


@pytest.mark.parametrize(
    "groups, message",
    [
        (((1, 2), (1,), (2,)), "no label value identifies class 0"),
        (((1,), (1,)), "same values"),
        (((1,), ()), "group 1 is empty"),
        (((0, 1),), "background"),
        ((), "at least one class"),
    ],
)
def test_class_values_for_groups_errors(groups, message):
    with pytest.raises(ValueError, match=message):
        class_values_for_groups(groups)


def _read_back(label, groups):
    """What a reader of the label file gets: one mask per class, and the most specific class of each pixel."""
    masks = np.stack([np.isin(label, group) for group in groups])
    sizes = np.array([len(set(group)) for group in groups])
    # the class with the smallest group among those read, 0 where none is
    ranked = np.where(masks, sizes.reshape(-1, *([1] * label.ndim)), np.iinfo(np.int64).max)
    class_map = np.where(masks.any(axis=0), ranked.argmin(axis=0) + 1, 0)
    return masks, class_map


@pytest.mark.parametrize("groups", [BRATS_REGIONS, ABDOMEN, WHOLE_TUMOUR, ((1, 2), (2, 3))])
@pytest.mark.parametrize("shape", [(12, 10), (6, 7, 5)])
def test_class_map_round_trip_through_groups(groups, shape):
    class_map = np.random.default_rng(0).integers(0, len(groups) + 1, size=shape)
    label = class_map_to_label(class_map, class_values_for_groups(groups))
    assert isinstance(label, np.ndarray) and label.shape == shape and label.dtype == np.int64
    masks, back = _read_back(label, groups)
    np.testing.assert_array_equal(back, class_map)
    # and each pixel reads as its class and exactly the classes enclosing it
    for c, group in enumerate(groups):
        enclosing = [d for d, other in enumerate(groups) if set(group) <= set(other)]
        for d in range(len(groups)):
            np.testing.assert_array_equal(masks[d][class_map == c + 1], d in enclosing)
    assert not masks[:, class_map == 0].any()


def test_class_map_to_label_keeps_tensors():
    class_map = torch.tensor([[0, 1], [2, 3]])
    label = class_map_to_label(class_map, (2, 1, 4))
    assert isinstance(label, torch.Tensor) and label.dtype == torch.int64
    assert label.tolist() == [[0, 2], [1, 4]]


@pytest.mark.parametrize(
    "class_map, message",
    [
        (np.array([[0, 4]]), r"\[0, 3\]"),
        (np.array([[-1, 0]]), r"\[0, 3\]"),
        (np.zeros((2, 2), dtype=np.float32), "integers"),
        (np.zeros(4, dtype=np.int64), r"\[H, W\] or \[H, W, D\]"),
    ],
)
def test_class_map_to_label_errors(class_map, message):
    with pytest.raises(ValueError, match=message):
        class_map_to_label(class_map, (2, 1, 4))


@pytest.mark.parametrize("multi_class", [False, True])
def test_blur_in_the_authors_256_frame_then_nearest_to_the_slice(multi_class):
    rng = np.random.default_rng(3)
    refined = torch.as_tensor(rng.random((2, 16, 16)), dtype=torch.float32)
    positive = [True, True]
    framed = pseudo_label_slice(refined, positive, (256, 256), multi_class=multi_class)  # the authors' frame
    expected = torch.nn.functional.interpolate(framed.reshape(-1, 1, 256, 256).float(), size=(64, 48),
                                               mode="nearest").reshape(*framed.shape[:-2], 64, 48).to(framed.dtype)
    out = pseudo_label_slice(refined, positive, (64, 48), multi_class=multi_class, frame=256)
    assert torch.equal(out, expected)
    # the native blur (sigma 3.5 in a 64 x 48 slice's pixels) is four times wider: another label
    assert not torch.equal(pseudo_label_slice(refined, positive, (64, 48), multi_class=multi_class), out)
    with pytest.raises(ValueError, match="frame"):
        pseudo_label_slice(refined, positive, (64, 48), frame=-1)
