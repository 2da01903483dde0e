"""bundle.sam.box_grid: the box-prompt grid and the box-grid automatic masks (mechanics on the shapes-trained tiny SAM;
tests/sam/test_lite_medsam.py runs them with LiteMedSAM's real weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bundle.sam.automatic import masks_to_boxes, stability_score
from bundle.sam.box_grid import SamBoxGridMasks, box_grid, foreground_box
from bundle.sam.engine import SamEngine
from bundle.priors.settings import PriorSettings
from bundle.sam.factory import resolve_prompt_mode
from bundle.sam.loading import load_sam


def test_foreground_box():
    mask = np.zeros((10, 12), bool)
    assert foreground_box(mask) is None
    mask[2:5, 3:9] = True
    assert foreground_box(mask) == (3, 2, 9, 5)


@pytest.mark.parametrize(
    "region, sizes, stride, expected",
    [
        ((0, 0, 100, 100), (1.0,), 0.5, [[0, 0, 100, 100]]),
        ((0, 0, 100, 100), (0.5,), 1.0, [[0, 0, 50, 50], [0, 50, 50, 100], [50, 0, 100, 50], [50, 50, 100, 100]]),
        ((10, 20, 110, 60), (0.5,), 1.0, [[10, 20, 60, 60], [60, 20, 110, 60]]),  # 40 high: cut to the region
    ],
)
def test_box_grid_tiles_the_region(region, sizes, stride, expected):
    np.testing.assert_allclose(box_grid(region, sizes, stride), np.array(expected, float))


def test_box_grid_covers_every_pixel_with_the_stride():
    boxes = box_grid((3, 5, 97, 61), (0.5, 0.25), 0.5)
    for size in (0.5 * 94, 0.25 * 94):
        mine = boxes[np.isclose(boxes[:, 2] - boxes[:, 0], size)]
        xs, ys = np.unique(mine[:, 0]), np.unique(mine[:, 1])
        assert xs[0] == 3 and np.isclose(xs[-1] + size, 97) and np.all(np.diff(xs) <= 0.5 * size + 1e-6)
        assert ys[0] == 5 and np.isclose(ys[-1] + min(size, 56), 61)


@pytest.fixture(scope="module")
def engine(shapes_sam_checkpoint):
    return SamEngine(load_sam("tiny", shapes_sam_checkpoint), autocast="none", device="cpu")


def _slices() -> np.ndarray:
    images = np.zeros((2, 48, 64, 3), np.uint8)
    images[0, 6:40, 8:56] = 90  # a body
    images[0, 12:26, 14:30] = 220  # an organ in it
    images[0, 28:36, 36:50] = 160
    return images  # slice 1 is empty


def test_boxes_cover_only_the_foreground(engine):
    generator = SamBoxGridMasks(engine, box_sizes=(0.5, 0.25), box_stride=0.5, min_box_foreground=0.5)
    image = _slices()[0]
    boxes = generator.slice_boxes(image)
    x0, y0, x1, y1 = foreground_box(image.max(-1) > 13)
    assert len(boxes) > 0
    assert (boxes[:, 0] >= x0).all() and (boxes[:, 1] >= y0).all()
    assert (boxes[:, 2] <= x1).all() and (boxes[:, 3] <= y1).all()
    assert len(generator.slice_boxes(_slices()[1])) == 0
    everything = SamBoxGridMasks(engine, box_sizes=(0.5, 0.25), box_stride=0.5, min_box_foreground=0.0)
    assert len(everything.slice_boxes(image)) >= len(boxes)


@pytest.fixture(scope="module")
def lite_engine():
    """LiteMedSAM with its real weights: the tiny test SAM was never trained on boxes (one unstable mask per box)."""
    return SamEngine(load_sam("lite_medsam"), autocast="none", device="cpu")


def test_records_thresholds_and_nms(lite_engine):
    engine = lite_engine
    generator = SamBoxGridMasks(engine, box_sizes=(0.5, 0.25), box_stride=0.5, stability_score_thresh=0.6,
                                box_nms_thresh=0.5)
    images = _slices()
    records, empty = generator.generate_batch(images)
    assert empty == [] and len(records) > 3
    thr = engine.model.mask_threshold
    for r in records:
        assert set(r) >= {"segmentation", "area", "bbox", "predicted_iou", "stability_score", "point_coords",
                          "crop_box", "box_prompt"}
        assert r["segmentation"].shape == (48, 64) and r["area"] == int(r["segmentation"].sum()) > 0
        assert r["stability_score"] >= 0.6
    # kept masks never overlap beyond the NMS threshold (boxes as torchvision computes them)
    boxes = masks_to_boxes(torch.as_tensor(np.stack([r["segmentation"] for r in records])))
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
    iou = inter / (area[:, None] + area[None] - inter)
    assert float(iou.fill_diagonal_(0).max()) <= 0.5
    # the recorded stability score is the full-resolution one of the returned mask's logits
    emb = engine.embed(images[:1])
    r = records[0]
    masks, _, _ = engine.predict(emb, torch.tensor([0]), multimask_output=False, return_logits=True,
                                 boxes=torch.tensor([r["box_prompt"]], dtype=torch.float32))
    assert float(stability_score(masks[0, 0], thr, 1.0)) == pytest.approx(r["stability_score"], abs=1e-6)
    np.testing.assert_array_equal(masks[0, 0].numpy() > thr, r["segmentation"])


def test_empty_slices_are_not_encoded(engine, monkeypatch):
    calls = []
    monkeypatch.setattr(engine, "embed", lambda images: calls.append(images) or pytest.fail("encoded"))
    generator = SamBoxGridMasks(engine)
    assert generator.generate_batch(np.zeros((3, 32, 32, 3), np.uint8)) == [[], [], []]
    assert not calls


def test_signature_holds_every_setting(engine):
    sig = SamBoxGridMasks(engine, box_sizes=(0.5,), box_stride=0.25, min_box_foreground=0.3, foreground_level=20,
                          stability_score_thresh=0.8, box_nms_thresh=0.6, stability_band=0.02).signature()
    assert sig["generator"] == "sam_box_grid_masks"
    assert {k: sig[k] for k in ("box_sizes", "box_stride", "min_box_foreground", "foreground_level",
                                "stability_score_thresh", "box_nms_thresh", "stability_band")} == {
        "box_sizes": [0.5], "box_stride": 0.25, "min_box_foreground": 0.3, "foreground_level": 20,
        "stability_score_thresh": 0.8, "box_nms_thresh": 0.6, "stability_band": 0.02}


@pytest.mark.parametrize("kwargs, match", [({"box_sizes": (0.0,)}, "box_sizes"), ({"box_stride": 1.5}, "box_stride"),
                                           ({"min_box_foreground": 2.0}, "min_box_foreground")])
def test_invalid_settings(engine, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamBoxGridMasks(engine, **kwargs)


@pytest.mark.parametrize("mode, model_prompts, expected", [("auto", "boxes", "boxes"), ("auto", "points", "points"),
                                                           ("points", "boxes", "points"), ("boxes", "points", "boxes")])
def test_prompt_mode(mode, model_prompts, expected):
    assert resolve_prompt_mode(mode, model_prompts) == expected


def test_factory_picks_the_generator_without_building_sam(shapes_sam_checkpoint, monkeypatch):
    import bundle.sam.loading as loading

    monkeypatch.setattr(loading, "build_sam", lambda *a, **k: pytest.fail("SAM was built"))
    lite = PriorSettings().mask_generator("cpu")
    assert type(lite).__name__ == "SamBoxGridMasks" and lite.signature()["sam"]["model_type"] == "lite_medsam"
    tiny = PriorSettings(sam_model_type="tiny", sam_checkpoint=str(shapes_sam_checkpoint)).mask_generator("cpu")
    assert type(tiny).__name__ == "SamAutomaticMasks"
    boxes = PriorSettings(sam_model_type="tiny", sam_checkpoint=str(shapes_sam_checkpoint), sam_prompt_mode="boxes")
    assert type(boxes.mask_generator("cpu")).__name__ == "SamBoxGridMasks"
    assert type(PriorSettings(sam_model_type="fallback").mask_generator()).__name__ == "RegionProposalMasks"
    with pytest.raises(FileNotFoundError, match="needs a checkpoint"):
        PriorSettings(sam_model_type="vit_b").mask_generator()
    with pytest.raises(ValueError, match="sam_prompt_mode: 'box' is not one of auto"):
        PriorSettings(sam_prompt_mode="box")


def test_refinement_prompts_the_masks_tight_boxes(lite_engine):
    image = _slices()[:1]
    grid = SamBoxGridMasks(lite_engine, refine_rounds=0, stability_score_thresh=0.5)
    refined = SamBoxGridMasks(lite_engine, refine_rounds=1, stability_score_thresh=0.5)
    grid_boxes = {tuple(b) for b in grid.slice_boxes(image[0]).round(3).tolist()}
    (plain,) = grid.generate_batch(image)
    (tight,) = refined.generate_batch(image)
    assert plain and tight
    assert all(tuple(round(v, 3) for v in r["box_prompt"]) in grid_boxes for r in plain)
    # most refined prompts are the (pixel-edge) bounding boxes of first-round masks, not grid boxes
    assert sum(tuple(round(v, 3) for v in r["box_prompt"]) not in grid_boxes for r in tight) > len(tight) // 2
    assert refined.signature()["refine_rounds"] == 1 != grid.signature()["refine_rounds"]
