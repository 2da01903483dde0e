import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from bundle.workflows.common.seg_metrics import case_metrics, dice, slice_metrics, volume_metrics


def _zeros(shape=(1, 6, 6, 6)):
    return np.zeros(shape, dtype=bool)


def test_volume_dice_hand_computed():
    pred, label = _zeros(), _zeros()
    pred[0, 1:3, 1:3, 1:3] = True  # 8 voxels
    label[0, 1:3, 1:3, 2:4] = True  # 8 voxels, 4 shared
    out = volume_metrics(pred, label, spacing=(1, 1, 1))["class0"]
    assert out["dice"] == pytest.approx(2 * 4 / 16)
    assert out["jaccard"] == pytest.approx(4 / 12)


EMPTY_CASES = [
    # (pred has foreground, label has foreground, dice, hd95 is nan)
    (False, False, 1.0, True),
    (True, False, 0.0, True),
    (False, True, 0.0, True),
    (True, True, 1.0, False),
]


@pytest.mark.parametrize("pred_fg, label_fg, dice, hd_nan", EMPTY_CASES)
def test_volume_empty_conventions(pred_fg, label_fg, dice, hd_nan):
    pred, label = _zeros(), _zeros()
    pred[0, 2:4, 2:4, 2:4] = pred_fg
    label[0, 2:4, 2:4, 2:4] = label_fg
    out = volume_metrics(pred, label)["class0"]
    assert out["dice"] == dice
    assert out["jaccard"] == dice
    assert math.isnan(out["hd95"]) == hd_nan


@pytest.mark.parametrize(
    "spacing, expected",
    [((1.0, 1.0, 1.0), 2.0), ((1.0, 1.0, 2.0), 4.0), ((0.5, 0.7, 2.0), 4.0), ((3.0, 3.0, 0.5), 1.0)],
)
def test_volume_hd95_scales_with_z_spacing(spacing, expected):
    # one-voxel-thick plates two slices apart: every surface point is exactly 2 * z-spacing from the other plate
    pred, label = _zeros((1, 8, 8, 8)), _zeros((1, 8, 8, 8))
    label[0, 2:6, 2:6, 2] = True
    pred[0, 2:6, 2:6, 4] = True
    assert volume_metrics(pred, label, spacing=spacing)["class0"]["hd95"] == pytest.approx(expected)


def test_volume_metrics_per_class_names_and_torch_input():
    pred = torch.zeros(2, 6, 6, 6)
    label = torch.zeros(2, 6, 6, 6)
    pred[0, 1:3, 1:3, 1:3] = 1
    label[0, 1:3, 1:3, 1:3] = 1
    label[1, 0, 0, 0] = 1
    out = volume_metrics(pred, label, spacing=2.0, class_names=["liver", "tumour"])
    assert list(out) == ["liver", "tumour"]
    assert out["liver"] == {"dice": 1.0, "jaccard": 1.0, "hd95": 0.0}
    assert out["tumour"]["dice"] == 0.0 and math.isnan(out["tumour"]["hd95"])


def _crafted_slices():
    """Five axial slices of one class:
    0 both empty; 1 pred 2x2 inside label 2x4; 2 pred only; 3 label only; 4 single pixels 3 apart."""
    pred, label = _zeros((1, 8, 8, 5)), _zeros((1, 8, 8, 5))
    pred[0, 2:4, 2:4, 1] = True
    label[0, 2:4, 2:6, 1] = True
    pred[0, 5:7, 5:7, 2] = True
    label[0, 1:3, 1:3, 3] = True
    pred[0, 0, 0, 4] = True
    label[0, 0, 3, 4] = True
    return pred, label


def test_slice_convention_on_crafted_case():
    out = slice_metrics(*_crafted_slices())["class0"]
    # dice per slice: 1 (both empty), 2*4/12, 0, 0, 0 -> averaged over all five slices
    assert out["slice_dice"] == pytest.approx((1 + 2 / 3) / 5)
    # jaccard per slice: 1, 4/8, 0, 0, 0
    assert out["slice_jaccard"] == pytest.approx((1 + 0.5) / 5)
    # distances only on slices 1 and 4. Slice 1: pred->label all 0; label->pred 0,0,0,0,1,1,2,2
    # ASSD = (0 + 6/8) / 2; HD95 = 95th percentile of the 12 pooled distances = 2. Slice 4: both 3.
    assert out["slice_assd"] == pytest.approx((0.375 + 3.0) / 2)
    assert out["slice_hd95"] == pytest.approx((2.0 + 3.0) / 2)


def test_slice_distances_nan_without_shared_slices():
    pred, label = _zeros((1, 8, 8, 3)), _zeros((1, 8, 8, 3))
    pred[0, 1:3, 1:3, 0] = True
    label[0, 1:3, 1:3, 2] = True
    out = slice_metrics(pred, label)["class0"]
    assert out["slice_dice"] == pytest.approx(1 / 3)  # only the middle slice (both empty) scores
    assert math.isnan(out["slice_assd"]) and math.isnan(out["slice_hd95"])


def _reference_slice_distances(p2d, g2d):
    """Independent per-slice reference: full-size edges and exact distance transforms."""
    pe = p2d & ~ndimage.binary_erosion(p2d)
    ge = g2d & ~ndimage.binary_erosion(g2d)
    d_pg = ndimage.distance_transform_edt(~ge)[pe]
    d_gp = ndimage.distance_transform_edt(~pe)[ge]
    return 0.5 * (d_pg.mean() + d_gp.mean()), np.percentile(np.concatenate([d_pg, d_gp]), 95)


def test_slice_distances_match_per_slice_reference():
    rng = np.random.default_rng(0)
    blobs = ndimage.gaussian_filter(rng.random((2, 24, 20, 7)), sigma=(0, 2, 2, 0)) > 0.5
    pred, label = blobs[:1], blobs[1:]
    pred[0, 0, :, 3] = True  # touching the image border must still count as surface
    out = slice_metrics(pred, label)["class0"]
    both = [k for k in range(7) if pred[0, ..., k].any() and label[0, ..., k].any()]
    assert len(both) >= 2
    ref = np.array([_reference_slice_distances(pred[0, ..., k], label[0, ..., k]) for k in both]).mean(axis=0)
    assert out["slice_assd"] == pytest.approx(ref[0])
    assert out["slice_hd95"] == pytest.approx(ref[1])


def test_case_metrics_merges_both_families():
    pred, label = _crafted_slices()
    out = case_metrics(pred, label, spacing=(1, 1, 1), class_names=["WT"])
    assert set(out["WT"]) == {"dice", "jaccard", "hd95", "slice_dice", "slice_jaccard", "slice_assd", "slice_hd95"}


@pytest.mark.parametrize(
    "pred, label, match",
    [
        (np.full((1, 4, 4, 4), 0.7), np.zeros((1, 4, 4, 4)), "binary"),
        (np.zeros((1, 4, 4, 4)), np.zeros((1, 4, 4, 5)), "same shape"),
    ],
)
def test_invalid_inputs_raise(pred, label, match):
    with pytest.raises(ValueError, match=match):
        volume_metrics(pred, label)


def test_invalid_spacing_and_names_raise():
    x = np.zeros((2, 4, 4, 4))
    with pytest.raises(ValueError, match="spacing"):
        volume_metrics(x, x, spacing=(1, 1))
    with pytest.raises(ValueError, match="class_names"):
        slice_metrics(x, x, class_names=["only_one"])


def test_the_one_dice_in_3d_and_per_slice():
    pred, truth = np.zeros((4, 4, 3), bool), np.zeros((4, 4, 3), bool)
    pred[:2, :2, 0] = True  # 4 px
    truth[:2, :, 0] = True  # 8 px, 4 shared
    truth[0, 0, 1] = True  # only in the truth
    assert dice(pred, truth) == pytest.approx(2 * 4 / (4 + 9))
    assert dice(pred, truth, slice_axis=-1).tolist() == pytest.approx([2 * 4 / 12, 0.0, 1.0])  # empty/empty = 1
    assert dice(torch.tensor(pred).int(), torch.tensor(pred).int()) == 1.0 == dice(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="same shape"):
        dice(pred, truth[..., :2])
    with pytest.raises(ValueError, match="binary"):
        dice(pred * 0.5, truth)
