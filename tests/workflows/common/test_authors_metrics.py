"""The authors' distance conventions (WeakMedSAM, SAM-Mix) pinned against hand computations on tiny masks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.workflows.common.authors_metrics import (
    WEAK_FRAME,
    max_hausdorff,
    region_distances,
    resize_nearest,
    sam_mix_authors_slice,
    trim_box,
    weak_authors_metrics,
)
from bundle.workflows.common.case_report import summarise, write_report
from bundle.workflows.common.seg_metrics import slice_surface_distances
from bundle.workflows.segmentation.report import SegmentationReport


def _squares() -> tuple[np.ndarray, np.ndarray]:
    """A 3 x 3 square centred in a 5 x 5 square."""
    p, g = np.zeros((7, 7), bool), np.zeros((7, 7), bool)
    p[2:5, 2:5] = True
    g[1:6, 1:6] = True
    return p, g


def test_region_distances_use_every_pixel_not_the_boundary():
    p, g = _squares()
    hd95, assd = region_distances(p, g)
    # by hand: P -> G all 0 (9 values); G -> P: 9 zeros, 12 edge pixels at 1, 4 corners at sqrt(2)
    assert assd == pytest.approx(0.5 * (12 + 4 * math.sqrt(2)) / 25)
    # 34 pooled values sorted: 18 zeros, 12 ones, 4 x sqrt(2); the 95th percentile falls between items 31 and 32
    assert hd95 == pytest.approx(math.sqrt(2))
    assert max_hausdorff(p, g) == pytest.approx(math.sqrt(2))
    # the bundle's own (boundary) ASSD of the same pair: P's ring is 1 from G's ring, G's ring 12 x 1 and 4 x sqrt 2
    assert slice_surface_distances(p, g)[0] == pytest.approx(0.5 * (1 + (12 + 4 * math.sqrt(2)) / 16))


def test_region_hd95_interpolates_like_the_percentile_of_the_pooled_distances():
    p, g = np.zeros((5, 5), bool), np.zeros((5, 5), bool)
    p[2, 0] = True
    g[2, 0] = g[2, 3] = True
    hd95, assd = region_distances(p, g)
    assert hd95 == pytest.approx(2.7)  # pooled [0, 0, 3]: 0.95 * 2 = 1.9 -> 0 + 0.9 * 3
    assert assd == pytest.approx(0.75)  # (0 + (0 + 3) / 2) / 2
    assert math.isnan(region_distances(np.zeros_like(p), g)[0])


def test_trim_and_nearest_resize():
    image = np.zeros((1, 8, 8))
    image[0, 2:6, 3:5] = 1.0
    assert trim_box(image) == (slice(2, 6), slice(3, 5))
    assert trim_box(np.full((8, 8), 3.0)) == (slice(None), slice(None))  # nothing differs: the whole slice
    np.testing.assert_array_equal(resize_nearest(np.array([[1, 0], [0, 0]]), 4),
                                  [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


def _weak_case():
    """One 8 x 8 slice whose 'brain' is rows 2-5, cols 2-5; a second slice with an empty prediction."""
    image = np.zeros((1, 8, 8, 2))
    image[0, 2:6, 2:6, :] = 1.0
    pred, label = np.zeros((1, 8, 8, 2), bool), np.zeros((1, 8, 8, 2), bool)
    pred[0, 2, 2, 0] = True
    label[0, 2, 2, 0] = label[0, 2, 5, 0] = True
    label[0, 3, 3, 1] = True
    return pred, label, image


def test_weak_authors_metrics_in_the_trimmed_frame():
    pred, label, image = _weak_case()
    out = weak_authors_metrics(pred, label, image=image, class_names=["tumour"], size=8)["tumour"]
    # trimmed to the 4 x 4 box and doubled: P a 2 x 2 block at cols 0-1; G that block and one at cols 6-7.
    # P -> G: 4 zeros; G -> P: 4 zeros and 5, 6, 5, 6. Pooled: 8 zeros, 5, 5, 6, 6 -> HD95 6, ASSD (0 + 22/8) / 2
    assert out == {"authors_assd": pytest.approx(1.375), "authors_hd95": pytest.approx(6.0), "authors_slices": 1.0}
    # untrimmed, same size: distances in native pixels (3 px apart), so the trim is what scales them
    plain = weak_authors_metrics(pred, label, class_names=["tumour"], size=8)["tumour"]
    assert plain["authors_hd95"] == pytest.approx(2.7) and plain["authors_assd"] == pytest.approx(0.75)
    # the default frame is the authors' 256: the same case, 64 x the trimmed box
    big = weak_authors_metrics(pred, label, image=image, class_names=["tumour"])["tumour"]
    assert WEAK_FRAME == 256 and big["authors_hd95"] > 8 * out["authors_hd95"]
    with pytest.raises(ValueError, match="label's grid"):
        weak_authors_metrics(pred, label, image=image[:, :4])


def test_sam_mix_max_hausdorff_at_1024_and_infinite_for_an_empty_prediction():
    p, g = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    p[0, 0] = True
    g[0, 0] = g[0, 2] = True
    # x 256 at 1024: P covers cols 0-255, G also cols 512-767; the farthest G pixel (col 767) is 512 from col 255
    assert sam_mix_authors_slice(p, g) == pytest.approx(512.0)
    assert sam_mix_authors_slice(p, g, size=4) == pytest.approx(2.0)
    assert sam_mix_authors_slice(np.zeros_like(p), g) == math.inf
    assert math.isnan(sam_mix_authors_slice(p, np.zeros_like(g)))


def test_summary_pools_over_slices_and_keeps_infinity(tmp_path):
    records = [{"case_id": "a", "metrics": {"x": {"h": 2.0, "n": 1.0}}},
               {"case_id": "b", "metrics": {"x": {"h": 5.0, "n": 3.0}}},
               {"case_id": "c", "metrics": {"x": {"h": float("nan"), "n": 0.0}}}]
    pooled = summarise(records, ["x"], ["h", "n"], pooling={"h": "n"})["x"]["h"]
    assert pooled["mean"] == pytest.approx(4.25) and pooled["n"] == 2 and pooled["pooled_by"] == "n"  # not 3.5
    records[0]["metrics"]["x"]["h"] = float("inf")
    assert summarise(records, ["x"], ["h", "n"], pooling={"h": "n"})["x"]["h"]["mean"] == math.inf
    # without pooling the mean stays over cases (and an infinite case is left out, as before)
    assert summarise(records, ["x"], ["h"])["x"]["h"]["mean"] == pytest.approx(5.0)
    summary = write_report(records, tmp_path, ["x"], ["h", "n"], pooling={"h": "n"})
    assert json.loads((tmp_path / "metrics_summary.json").read_text())["metrics"]["x"]["h"]["mean"] is None
    assert summary["metrics"]["x"]["n"]["mean"] == pytest.approx(4 / 3)


def test_segmentation_report_adds_the_authors_family_next_to_the_standard_one():
    pred, label, image = _weak_case()
    as_meta = lambda x: MetaTensor(torch.as_tensor(x.astype(np.float32)), affine=torch.eye(4))  # noqa: E731
    plain = SegmentationReport("unused")
    assert not any(m.startswith("authors_") for m in plain.metric_names)
    report = SegmentationReport("unused", authors_metrics=True, authors_image_key="img")
    assert {"slice_hd95", "slice_assd", "authors_hd95", "authors_assd", "authors_slices"} <= set(report.metric_names)
    assert report.metric_pooling == {"authors_assd": "authors_slices", "authors_hd95": "authors_slices"}
    extras = report.case_extras({"img": torch.as_tensor(image)})
    record = report.score_case(as_meta(pred), as_meta(label), ["tumour"], "case", **extras)
    metrics = record["metrics"]["tumour"]
    assert metrics["authors_slices"] == 1.0 and metrics["authors_hd95"] > metrics["slice_hd95"]
    with pytest.raises(ValueError, match="authors_image_key 'img' is not in the batch"):
        report.case_extras({"image": image})


def test_a_report_asked_for_the_trimmed_frame_without_the_image_refuses():
    report = SegmentationReport("unused", authors_metrics=True, authors_image_key="input_grid_image")
    with pytest.raises(ValueError, match="authors_image_key 'input_grid_image' is not in the batch"):
        report.case_extras({"image": np.zeros((1, 4, 4, 1))})
