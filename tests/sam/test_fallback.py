import inspect
import json
import warnings

import numpy as np
import pytest

import bundle.sam.fallback as fallback
from bundle.sam.fallback import RegionProposalMasks, box_nms

FIELDS = {"segmentation", "area", "bbox", "predicted_iou", "stability_score", "point_coords", "crop_box"}
DISCS = [(60, 60, 25, 200), (170, 90, 30, 160), (120, 190, 20, 230)]  # centre y, centre x, radius, grey level


def _discs(noise=10.0, seed=0, size=256):
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size), 40.0)
    truths = []
    for cy, cx, r, value in DISCS:
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        image[disc] = value
        truths.append(disc)
    image += np.random.default_rng(seed).normal(0, noise, image.shape)
    rgb = np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    return rgb, truths


def _make(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return RegionProposalMasks(**kwargs)


def _dice(a, b):
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _key(record):
    return (tuple(record["bbox"]), record["area"])


@pytest.fixture(scope="module")
def discs():
    return _discs()


def test_records_have_meta_fields_and_types(discs):
    image, _ = discs
    records = _make().generate_batch([image])[0]
    assert records
    for r in records:
        assert set(r) == FIELDS
        seg = r["segmentation"]
        assert isinstance(seg, np.ndarray) and seg.dtype == bool and seg.shape == (256, 256)
        assert type(r["area"]) is int and r["area"] == np.count_nonzero(seg)
        rows, cols = np.nonzero(seg)
        assert all(type(v) is float for v in r["bbox"])
        # segment-anything's XYWH: width / height are max - min of the pixel indices
        assert r["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min(), rows.max() - rows.min()]
        assert type(r["predicted_iou"]) is float and 0.0 <= r["predicted_iou"] <= 1.0
        assert type(r["stability_score"]) is float and 0.0 <= r["stability_score"] <= 1.0
        (x, y), = r["point_coords"]
        assert type(x) is float and type(y) is float and seg[int(y), int(x)]
        assert r["crop_box"] == [0, 0, 256, 256]
    scores = [r["predicted_iou"] for r in records]
    assert scores == sorted(scores, reverse=True)


def test_each_disc_found(discs):
    image, truths = discs
    records = _make().generate_batch([image])[0]
    for truth in truths:
        assert max(_dice(r["segmentation"], truth) for r in records) > 0.8


@pytest.mark.parametrize("key", ["stability_score", "predicted_iou"])
def test_thresholds_filter(discs, key):
    image = np.ascontiguousarray(np.roll(discs[0], 40, axis=1))  # a disc cut by the border, for variety
    name = "stability_score_thresh" if key == "stability_score" else "pred_iou_thresh"
    previous_count, previous_keys = None, None
    for thresh in [0.0, 0.5, 0.7, 0.76, 0.9, 0.97, 0.99]:
        kept = _make(**{name: thresh}).generate(image)
        assert all(r[key] >= thresh if key == "stability_score" else r[key] > thresh for r in kept)
        if previous_count is not None:
            assert len(kept) <= previous_count
        previous_count = len(kept)
        # without NMS a higher threshold keeps a subset (with NMS this holds here, not in general)
        keys = {_key(r) for r in _make(**{name: thresh}, box_nms_thresh=1.0).generate(image)}
        if previous_keys is not None:
            assert keys <= previous_keys
        previous_keys = keys


def test_deterministic(discs):
    image, _ = discs
    first = _make().generate_batch([image, image])
    second = _make().generate_batch([image])[0]
    for records in (first[1], second):
        assert len(records) == len(first[0])
        for a, b in zip(first[0], records):
            assert {k: v for k, v in a.items() if k != "segmentation"} == {
                k: v for k, v in b.items() if k != "segmentation"
            }
            np.testing.assert_array_equal(a["segmentation"], b["segmentation"])


@pytest.mark.parametrize("value", [0, 128, 255])
def test_blank_image_gives_no_masks(value, discs):
    blank = np.full((32, 48, 3), value, dtype=np.uint8)
    out = _make().generate_batch([blank, discs[0], blank])
    assert len(out) == 3 and out[0] == [] and out[2] == [] and out[1]


@pytest.mark.parametrize(
    "image",
    [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32)],
)
def test_invalid_image(image):
    with pytest.raises(ValueError, match=r"\[H, W, 3\] uint8"):
        _make().generate_batch([image])


def test_signature_lists_every_parameter():
    sig = _make().signature()
    assert sig["generator"] == "region_proposals"
    params = set(inspect.signature(RegionProposalMasks).parameters)
    assert params <= set(sig)
    assert json.loads(json.dumps(sig)) == sig
    assert _make(delta=4).signature() != sig


@pytest.mark.parametrize(
    "kwargs",
    [{"classes": 1}, {"classes": 6}, {"connectivity": 3}, {"min_area": 0.5, "max_area": 0.1}, {"sigma": -1},
     {"compactness_weight": 2.0}, {"ring_width": 0}],
)
def test_invalid_parameters(kwargs):
    with pytest.raises(ValueError):
        _make(**kwargs)


def test_warns_once_per_process(monkeypatch):
    monkeypatch.setattr(fallback, "_WARNED", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RegionProposalMasks()
        RegionProposalMasks(classes=4)
    messages = [str(w.message) for w in caught if "not SAM priors" in str(w.message)]
    assert len(messages) == 1 and "region proposals" in messages[0]


NMS_CASES = [
    # boxes XYXY, scores, threshold, kept (highest score first)
    ([[0, 0, 10, 10], [0, 0, 10, 5]], [0.9, 0.8], 0.5, [0, 1]),  # IoU exactly 0.5: not strictly greater
    ([[0, 0, 10, 10], [0, 0, 10, 5]], [0.9, 0.8], 0.4, [0]),
    ([[0, 0, 10, 10], [0, 0, 10, 5]], [0.7, 0.8], 0.4, [1]),
    ([[0, 0, 10, 10], [20, 20, 30, 30], [1, 0, 10, 10]], [0.5, 0.6, 0.7], 0.7, [2, 1]),
    # greedy order: 1 is suppressed by 0, so it does not suppress 2
    ([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]], [0.9, 0.8, 0.7], 0.3, [0, 2]),
    (np.zeros((0, 4)), [], 0.5, []),
]


@pytest.mark.parametrize("boxes, scores, thresh, kept", NMS_CASES)
def test_box_nms(boxes, scores, thresh, kept):
    assert box_nms(np.asarray(boxes, float), np.asarray(scores, float), thresh) == kept


def test_box_nms_matches_torch_reference():
    torch = pytest.importorskip("torch")
    from bundle.sam.torchvision_compat import nms

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (40, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 30, (40, 2))], axis=1).astype(np.float32)
    scores = rng.random(40).astype(np.float32)
    for thresh in (0.1, 0.3, 0.7):
        expected = nms(torch.from_numpy(boxes), torch.from_numpy(scores), thresh).tolist()
        assert box_nms(boxes, scores, thresh) == expected
