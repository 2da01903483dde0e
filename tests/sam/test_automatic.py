"""Tests of bundle.sam.automatic against segment-anything's SamAutomaticMaskGenerator, on the shapes-trained tiny SAM.

The acceptance criterion of the fast generator: over a set of test slices, the SAMAug priors computed from its masks
and from Meta's generator (same model, same parameters) have Pearson correlation >= 0.98 (segmentation prior) and
Dice >= 0.95 (boundary prior).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bundle.priors import samaug_prior_maps
from bundle.sam.automatic import SamAutomaticMasks, point_grid, stability_score
from bundle.sam.engine import SamEngine
from bundle.testing.shapes_training import random_shapes
from bundle.sam.torchvision_compat import import_segment_anything

SamAutomaticMaskGenerator = import_segment_anything().SamAutomaticMaskGenerator

FIELDS = {"segmentation", "area", "bbox", "predicted_iou", "stability_score", "point_coords", "crop_box"}


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=-1))


@pytest.fixture(scope="module")
def slices() -> list[np.ndarray]:
    """Synthetic shape slices: four square, one wide and one tall (resize and padding differ)."""
    rng = np.random.default_rng(7)
    out = [_rgb(random_shapes(rng, 64)[0]) for _ in range(4)]
    out.append(_rgb(random_shapes(rng, 80)[0][:48]))
    out.append(_rgb(random_shapes(rng, 72)[0][:, 10:50]))
    return out


@pytest.fixture(scope="module")
def engine(shapes_sam):
    return SamEngine(shapes_sam, batch_size=4, autocast="none")


def _ours(engine, images, **kwargs):
    gen = SamAutomaticMasks(engine, **kwargs)
    return [gen.generate_batch(im[None])[0] for im in images]


def _meta(model, images, **kwargs):
    gen = SamAutomaticMaskGenerator(model, **kwargs)
    return [gen.generate(im) for im in images]


def _pooled_priors(records_per_slice, images):
    seg, bnd = zip(*(samaug_prior_maps(r, im.shape[:2]) for r, im in zip(records_per_slice, images)))
    return np.concatenate([s.ravel() for s in seg]), np.concatenate([b.ravel() for b in bnd])


AGREEMENT = [
    # every mask the model yields (NMS at Meta's default)
    {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 0.7},
    # a nonzero stability threshold (filtered at low resolution first, then re-checked at full resolution)
    {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.9, "box_nms_thresh": 0.7},
]
AGREEMENT_SLOW = [
    {"points_per_side": 16, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 0.7},
    {"points_per_side": 16, "pred_iou_thresh": 0.05, "stability_score_thresh": 0.5, "box_nms_thresh": 0.95},
    {"points_per_side": 12, "pred_iou_thresh": 0.2, "stability_score_thresh": 0.95, "box_nms_thresh": 0.5},
]


def _check_agreement(engine, model, images, params):
    ours = _ours(engine, images, **params)
    meta = _meta(model, images, **params)
    assert sum(map(len, meta)) >= len(images) // 2, "the model must yield masks at these thresholds"
    seg_ours, bnd_ours = _pooled_priors(ours, images)
    seg_meta, bnd_meta = _pooled_priors(meta, images)
    pearson = np.corrcoef(seg_ours, seg_meta)[0, 1]
    dice = 2 * np.sum(bnd_ours * bnd_meta) / (bnd_ours.sum() + bnd_meta.sum())
    assert pearson >= 0.98, pearson
    assert dice >= 0.95, dice
    # Pearson is blind to scale: a generator that skipped NMS (every mask 64 times) still scores 0.999 on it, so
    # the prior's mass and the number of masks per slice must agree as well
    assert np.abs(seg_ours - seg_meta).sum() <= 0.05 * seg_meta.sum()
    # (Meta also returns empty masks, with a 0/0 stability score, when stability_score_thresh is 0: not counted)
    counts = [(len(o), sum(r["area"] > 0 for r in m)) for o, m in zip(ours, meta)]
    assert all(abs(a - b) <= max(1, b // 10) for a, b in counts), counts


@pytest.mark.parametrize("params", AGREEMENT, ids=["all-masks", "stability-0.9"])
def test_priors_agree_with_meta(engine, shapes_sam, slices, params):
    _check_agreement(engine, shapes_sam, slices, params)


@pytest.mark.slow
@pytest.mark.parametrize("params", AGREEMENT_SLOW, ids=["dense-grid", "loose-nms", "samaug-like"])
def test_priors_agree_with_meta_more_settings(engine, shapes_sam, slices, params):
    rng = np.random.default_rng(11)
    more = [_rgb(random_shapes(rng, 96)[0]) for _ in range(4)]
    _check_agreement(engine, shapes_sam, slices + more, params)


def _by_prompt(records):
    """Records grouped by prompt point, each group sorted by predicted IoU (the outputs of one point)."""
    groups: dict = {}
    for r in records:
        groups.setdefault(tuple(np.round(r["point_coords"][0], 3)), []).append(r)
    return {point: sorted(group, key=lambda r: r["predicted_iou"]) for point, group in groups.items()}


@pytest.mark.parametrize("stability", [0.0, 0.9])
def test_every_prompt_gives_meta_records_without_nms(engine, shapes_sam, slices, stability):
    """With NMS off, each (point, output) candidate is compared with Meta's one by one."""
    params = {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": stability,
              "box_nms_thresh": 1.0}
    for image in (slices[0], slices[4]):
        (ours,) = _ours(engine, [image], **params)
        (meta,) = _meta(shapes_sam, [image], **params)
        meta = [r for r in meta if r["area"] > 0]  # Meta keeps empty masks (0/0 stability); they add no prior
        mine, theirs = _by_prompt(ours), _by_prompt(meta)
        assert mine.keys() == theirs.keys()
        assert [len(g) for g in mine.values()] == [len(theirs[k]) for k in mine]
        # pairs by point and IoU rank; the IoUs agree to float noise (a 4-decimal key would split at a rounding edge)
        pairs = [(o, r) for k in theirs for o, r in zip(mine[k], theirs[k])]
        for o, r in pairs:
            assert abs(o["predicted_iou"] - r["predicted_iou"]) < 1e-3
            # candidates are kept as float16 logits: a pixel at the threshold and the score may move a little
            assert np.count_nonzero(o["segmentation"] != r["segmentation"]) <= 2
            assert abs(o["area"] - r["area"]) <= 2
            assert abs(o["stability_score"] - r["stability_score"]) < 2e-3
            assert np.allclose(o["bbox"], r["bbox"], atol=1)


def test_records_have_meta_fields_and_types(engine, shapes_sam, slices):
    params = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.5}
    image = slices[5]
    h, w = image.shape[:2]
    (ours,) = _ours(engine, [image], **params)
    (meta,) = _meta(shapes_sam, [image], **params)
    assert ours and meta
    assert all(set(r) == FIELDS for r in ours) and set(meta[0]) == FIELDS
    for r in ours:
        seg = r["segmentation"]
        assert isinstance(seg, np.ndarray) and seg.dtype == bool and seg.shape == (h, w)
        assert type(r["area"]) is int and r["area"] == np.count_nonzero(seg) > 0
        rows, cols = np.nonzero(seg)
        assert all(type(v) is float for v in r["bbox"])
        assert r["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min(), rows.max() - rows.min()]
        assert type(r["predicted_iou"]) is float and type(r["stability_score"]) is float
        ((x, y),) = r["point_coords"]
        assert type(x) is float and type(y) is float and 0 <= x < w and 0 <= y < h
        assert list(r["crop_box"]) == [0, 0, w, h]
    # the same values as Meta's records (NMS order: highest predicted IoU first)
    assert [round(r["predicted_iou"], 4) for r in ours] == [round(r["predicted_iou"], 4) for r in meta]
    assert len(ours) == len(meta)
    for o, m in zip(ours, meta):
        assert np.allclose(o["bbox"], m["bbox"], atol=1) and np.allclose(o["point_coords"], m["point_coords"])


@pytest.mark.parametrize("iou_thresh, stability", [(0.0, 0.9), (0.3, 0.0), (0.2, 0.95)])
def test_returned_records_satisfy_the_thresholds(engine, slices, iou_thresh, stability):
    images = np.stack(slices[:3])
    gen = SamAutomaticMasks(engine, points_per_side=6, pred_iou_thresh=iou_thresh, stability_score_thresh=stability,
                            box_nms_thresh=0.9)
    emb = engine.embed(images)
    records = gen.generate_from_embeddings(emb, images)
    assert sum(map(len, records)) > 0
    thr = engine.model.mask_threshold
    for s, slice_records in enumerate(records):
        for r in slice_records:
            assert r["predicted_iou"] > iou_thresh and r["stability_score"] >= stability
            # recompute from the model: the record's mask is one of the three outputs of its point prompt
            point = torch.tensor([r["point_coords"]], dtype=torch.float32)
            logits, iou, _ = engine.predict(emb, torch.tensor([s]), point_coords=point,
                                            point_labels=torch.ones(1, 1, dtype=torch.int), return_logits=True)
            k = int(torch.argmin((iou[0] - r["predicted_iou"]).abs()))
            assert abs(float(iou[0, k]) - r["predicted_iou"]) < 1e-4
            assert np.count_nonzero((logits[0, k] > thr).numpy() != r["segmentation"]) <= 2
            recomputed = float(stability_score(logits[0, k], thr, gen.stability_score_offset))
            assert abs(recomputed - r["stability_score"]) < 2e-3


def test_blank_slice_has_no_masks_at_meta_defaults(engine, shapes_sam):
    blank = np.zeros((64, 64, 3), np.uint8)
    assert SamAutomaticMasks(engine, points_per_side=8).generate_batch(blank[None]) == [[]]
    assert SamAutomaticMaskGenerator(shapes_sam, points_per_side=8).generate(blank) == []


def test_no_slices_no_records(engine):
    gen = SamAutomaticMasks(engine, points_per_side=4)
    assert gen.generate_batch([]) == []
    assert gen.generate_batch(np.zeros((0, 32, 32, 3), np.uint8)) == []


class _CountingEngine:
    """The real engine, counting the prompts sent to the decoder."""

    def __init__(self, engine):
        self._engine, self.prompts = engine, 0

    def decode_tokens(self, emb, image_index, **kwargs):
        self.prompts += len(image_index)
        return self._engine.decode_tokens(emb, image_index, **kwargs)

    def __getattr__(self, name):
        return getattr(self._engine, name)


def test_skip_background_points(engine, slices):
    assert SamAutomaticMasks(engine).skip_background_points is False
    image = slices[0].copy()
    image[:, :32] = 0  # the left half is background
    counts = {}
    for skip in (False, True):
        spy = _CountingEngine(engine)
        SamAutomaticMasks(spy, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.5,
                          skip_background_points=skip).generate_batch(image[None])
        counts[skip] = spy.prompts
    assert counts[False] == 64 and counts[True] == 32
    # a blank slice decodes nothing at all
    spy = _CountingEngine(engine)
    gen = SamAutomaticMasks(spy, points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                            skip_background_points=True)
    assert gen.generate_batch(np.zeros((1, 64, 64, 3), np.uint8)) == [[]] and spy.prompts == 0


def test_batched_slices_equal_one_at_a_time(engine, slices):
    """Prompts of several slices share decoder batches (5 does not divide the 16 prompts of a slice)."""
    params = {"points_per_side": 4, "points_per_batch": 5, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.8}
    images = np.stack(slices[:3])
    together = SamAutomaticMasks(engine, **params).generate_batch(images)
    alone = _ours(engine, images, **params)
    assert len(together) == 3
    for a, b in zip(together, alone):
        assert [r["predicted_iou"] for r in a] == pytest.approx([r["predicted_iou"] for r in b], abs=1e-4)
        assert all(np.count_nonzero(x["segmentation"] != y["segmentation"]) <= 2 for x, y in zip(a, b))


def test_point_grid_is_metas():
    from segment_anything.utils.amg import build_point_grid

    for n in (1, 4, 7):
        np.testing.assert_allclose(point_grid(n), build_point_grid(n))


def test_signature_changes_with_parameters(engine):
    base = SamAutomaticMasks(engine).signature()
    assert base["generator"] == "sam_automatic_masks" and base["sam"]["model_type"] == "tiny"
    for change in ({"points_per_side": 16}, {"pred_iou_thresh": 0.5}, {"stability_score_thresh": 0.9},
                   {"stability_score_offset": 2.0}, {"box_nms_thresh": 0.5}, {"skip_background_points": True}):
        assert SamAutomaticMasks(engine, **change).signature() != base, change


def test_invalid_arguments(engine):
    with pytest.raises(ValueError, match="points_per_side"):
        SamAutomaticMasks(engine, points_per_side=0)


def test_slices_of_different_sizes_are_refused_with_their_sizes(engine):
    images = [np.zeros((32, 32, 3), np.uint8), np.zeros((40, 32, 3), np.uint8)]
    with pytest.raises(ValueError, match=r"share their size.*\(32, 32, 3\).*\(40, 32, 3\)"):
        SamAutomaticMasks(engine, points_per_side=2).generate_batch(images)
