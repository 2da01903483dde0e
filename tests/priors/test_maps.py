import numpy as np
import pytest
from skimage.segmentation import find_boundaries

from bundle.priors import samaug_prior_maps, samaugc_prior_map, stack_segmentations, thick_boundary


def _mask(shape, rows, cols):
    m = np.zeros(shape, dtype=bool)
    m[rows, cols] = True
    return m


def _record(mask, stability=1.0, iou=1.0):
    return {"segmentation": mask, "stability_score": stability, "predicted_iou": iou}


# two overlapping rectangles in a 4 x 5 slice: A = rows 0-1, cols 0-2 (0.9); B = rows 1-2, cols 1-3 (0.5)
MASK_A = _mask((4, 5), slice(0, 2), slice(0, 3))
MASK_B = _mask((4, 5), slice(1, 3), slice(1, 4))
TWO_MASKS = [_record(MASK_A, 0.9, 0.8), _record(MASK_B, 0.5, 0.6)]


def test_seg_prior_overlaps_add():
    seg, _ = samaug_prior_maps(TWO_MASKS, (4, 5))
    expected = np.array(
        [
            [0.9, 0.9, 0.9, 0.0, 0.0],
            [0.9, 1.4, 1.4, 0.5, 0.0],
            [0.0, 0.5, 0.5, 0.5, 0.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
        ],
        dtype=np.float32,
    )
    assert seg.dtype == np.float32 and seg.shape == (4, 5)
    np.testing.assert_allclose(seg, expected, rtol=0, atol=1e-6)


def test_boundary_of_two_masks_is_union_of_rings():
    _, boundary = samaug_prior_maps(TWO_MASKS, (4, 5))
    expected = np.array(
        [
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
        ],
        dtype=np.float32,
    )
    assert boundary.dtype == np.float32
    np.testing.assert_array_equal(boundary, expected)


def test_square_gives_two_pixel_ring():
    square = _mask((8, 8), slice(2, 6), slice(2, 6))
    _, boundary = samaug_prior_maps([_record(square)], (8, 8))
    boundary = boundary.astype(bool)
    inner = square & ~_mask((8, 8), slice(3, 5), slice(3, 5))
    outer = _mask((8, 8), slice(1, 7), slice(2, 6)) | _mask((8, 8), slice(2, 6), slice(1, 7))  # cross dilation
    outer &= ~square
    np.testing.assert_array_equal(boundary & square, inner)
    np.testing.assert_array_equal(boundary & ~square, outer)
    assert inner.sum() == 12 and outer.sum() == 16


def _random_masks(rng, shape, n):
    masks = [rng.random(shape) < rng.uniform(0.2, 0.8) for _ in range(n)]  # speckle: touches every border
    masks.append(_mask(shape, slice(0, shape[0] // 2 + 1), slice(0, shape[1])))  # full-width band at the top edge
    masks.append(np.ones(shape, dtype=bool))  # no boundary at all: the border is not an edge
    masks.append(np.zeros(shape, dtype=bool))
    return masks


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("shape", [(9, 13), (16, 16), (1, 7), (6, 1)])
def test_boundary_equals_find_boundaries_union(seed, shape):
    rng = np.random.default_rng(seed)
    masks = _random_masks(rng, shape, n=int(rng.integers(1, 6)))
    expected = np.zeros(shape, dtype=bool)
    for m in masks:
        expected |= find_boundaries(m, connectivity=1, mode="thick")
    np.testing.assert_array_equal(thick_boundary(np.stack(masks)), expected)
    _, boundary = samaug_prior_maps([_record(m, 0.5) for m in masks], shape)
    np.testing.assert_array_equal(boundary, expected.astype(np.float32))
    for m in masks:  # a single [H, W] mask too
        np.testing.assert_array_equal(thick_boundary(m), find_boundaries(m, connectivity=1, mode="thick"))


def test_empty_list_gives_zeros():
    seg, boundary = samaug_prior_maps([], (3, 4))
    for prior in (seg, boundary, samaugc_prior_map([], (3, 4))):
        assert prior.dtype == np.float32 and prior.shape == (3, 4) and not prior.any()
    assert thick_boundary(np.zeros((0, 3, 4), dtype=bool)).shape == (3, 4)


def test_non_bool_segmentation_is_cast():
    seg, boundary = samaug_prior_maps([_record(MASK_A.astype(np.uint8), 0.9)], (4, 5))
    ref_seg, ref_boundary = samaug_prior_maps([_record(MASK_A, 0.9)], (4, 5))
    np.testing.assert_array_equal(seg, ref_seg)
    np.testing.assert_array_equal(boundary, ref_boundary)


@pytest.mark.parametrize("fn", [samaug_prior_maps, samaugc_prior_map, stack_segmentations])
def test_shape_mismatch_names_both_shapes(fn):
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        fn([_record(MASK_A)], (5, 4))


def test_bad_slice_shape():
    with pytest.raises(ValueError, match="shape"):
        samaug_prior_maps([], (3, 4, 5))


SAMAUGC_CASES = [
    # score, combine, expected before min-max normalisation (min is 0 outside the masks)
    ("stability_score", "sum", [[0.9, 0.9, 0.9, 0, 0], [0.9, 1.4, 1.4, 0.5, 0], [0, 0.5, 0.5, 0.5, 0], [0] * 5]),
    ("stability_score", "max", [[0.9, 0.9, 0.9, 0, 0], [0.9, 0.9, 0.9, 0.5, 0], [0, 0.5, 0.5, 0.5, 0], [0] * 5]),
    ("predicted_iou", "sum", [[0.8, 0.8, 0.8, 0, 0], [0.8, 1.4, 1.4, 0.6, 0], [0, 0.6, 0.6, 0.6, 0], [0] * 5]),
    ("predicted_iou", "max", [[0.8, 0.8, 0.8, 0, 0], [0.8, 0.8, 0.8, 0.6, 0], [0, 0.6, 0.6, 0.6, 0], [0] * 5]),
]


@pytest.mark.parametrize("score, combine, raw", SAMAUGC_CASES)
def test_samaugc_prior_map(score, combine, raw):
    prior = samaugc_prior_map(TWO_MASKS, (4, 5), score=score, combine=combine)
    raw = np.asarray(raw, dtype=np.float64)
    assert prior.dtype == np.float32 and prior.shape == (4, 5)
    np.testing.assert_allclose(prior, raw / raw.max(), atol=1e-6)
    assert prior.min() == 0.0 and prior.max() == pytest.approx(1.0)


def test_samaugc_normalises_with_nonzero_minimum():
    # both masks cover everything: raw map 0.3 / 0.7 / 1.0, normalised with its own minimum 0.3
    left = _mask((2, 3), slice(0, 2), slice(0, 2))
    right = _mask((2, 3), slice(0, 2), slice(1, 3))
    prior = samaugc_prior_map([_record(left, 0.3), _record(right, 0.7)], (2, 3))
    np.testing.assert_allclose(prior, [[0.0, 1.0, 4 / 7], [0.0, 1.0, 4 / 7]], atol=1e-6)


@pytest.mark.parametrize("combine", ["sum", "max"])
def test_samaugc_constant_map_is_zero(combine):
    full = np.ones((3, 3), dtype=bool)
    prior = samaugc_prior_map([_record(full, 0.7)], (3, 3), combine=combine)
    assert prior.dtype == np.float32 and not prior.any()


@pytest.mark.parametrize(
    "kwargs, valid",
    [
        ({"score": "stabilty_score"}, "stability_score"),
        ({"score": "iou"}, "predicted_iou"),
        ({"combine": "mean"}, "max"),
        ({"combine": "summ"}, "sum"),
    ],
)
def test_samaugc_invalid_options(kwargs, valid):
    with pytest.raises(ValueError, match=valid):
        samaugc_prior_map(TWO_MASKS, (4, 5), **kwargs)


@pytest.mark.parametrize(
    "score, combine, expected_row",
    [
        # left mask (cols 0-1): stability 0.3, iou 0.6; right mask (cols 1-2): stability 0.7, iou 0.2
        ("stability_score", "sum", [0.0, 1.0, 4 / 7]),  # raw 0.3, 1.0, 0.7
        ("stability_score", "max", [0.0, 1.0, 1.0]),  # raw 0.3, 0.7, 0.7
        ("predicted_iou", "sum", [2 / 3, 1.0, 0.0]),  # raw 0.6, 0.8, 0.2
        ("predicted_iou", "max", [1.0, 1.0, 0.0]),  # raw 0.6, 0.6, 0.2
    ],
)
def test_samaugc_every_combination_with_nonzero_minimum(score, combine, expected_row):
    left = _mask((2, 3), slice(0, 2), slice(0, 2))
    right = _mask((2, 3), slice(0, 2), slice(1, 3))
    records = [_record(left, 0.3, 0.6), _record(right, 0.7, 0.2)]
    prior = samaugc_prior_map(records, (2, 3), score=score, combine=combine)
    np.testing.assert_allclose(prior, [expected_row, expected_row], atol=1e-6)
