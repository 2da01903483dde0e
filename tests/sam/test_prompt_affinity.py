"""bundle.sam.prompt_affinity: prompt placements, one encoder run per slice, equality with per-prompt decoding (tiny
SAM), and what LiteMedSAM's real weights make of a bright disc (one 128 x 128 slice, about 1 s)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bundle.sam.box_grid import foreground_box
from bundle.sam.engine import SamEngine
from bundle.sam.loading import load_sam, sam_info
from bundle.sam.prompt_affinity import (
    PLACEMENTS,
    PromptAffinityMiner,
    default_placement,
    pooled_embedding,
    prompt_placement,
)

H, W = 40, 56  # not square: resize, padding and coordinate scaling all matter


# ---------------------------------------------------------------------------------------------------- placements
@pytest.mark.parametrize("shape, grid", [((40, 56), 4), ((256, 256), 4), ((30, 90), 3), ((17, 17), 1)])
def test_grid_points_are_cell_centres(shape, grid):
    p = prompt_placement("grid", shape, grid)
    assert p["point_coords"].shape == (grid * grid, 1, 2) and p["point_coords"].dtype == np.float32
    assert p["point_labels"].shape == (grid * grid, 1) and np.all(p["point_labels"] == 1)
    h, w = shape
    expected = {((i + 0.5) * w / grid, (j + 0.5) * h / grid) for i in range(grid) for j in range(grid)}
    got = {tuple(xy) for xy in p["point_coords"][:, 0].astype(float).round(4)}
    assert got == {(round(x, 4), round(y, 4)) for x, y in expected}


@pytest.mark.parametrize("shape", [(40, 56), (512, 512)])
def test_grid_compat_puts_every_point_in_the_top_left_16_pixels(shape):
    xy = prompt_placement("grid_compat", shape, 4)["point_coords"][:, 0]
    assert len(xy) == 16 and xy.min() >= 0 and xy.max() < 16
    np.testing.assert_allclose(np.unique(xy[:, 0]), [2, 6, 10, 14])
    np.testing.assert_allclose(np.unique(xy[:, 1]), [2, 6, 10, 14])


def _blobs(shape, centres, heights, sigma=3.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cam = np.zeros(shape, np.float32)
    for (x, y), a in zip(centres, heights):
        cam += a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return cam


def test_cam_peaks_land_on_the_cam_maxima_strongest_first():
    centres, heights = [(10, 30), (45, 8), (30, 20)], [0.5, 1.0, 0.8]
    xy = prompt_placement("cam_peaks", (H, W), 4, cams=_blobs((H, W), centres, heights))["point_coords"][:, 0]
    # pixel (col, row) has its centre at (col + 0.5, row + 0.5)
    np.testing.assert_allclose(xy, np.array([(45, 8), (30, 20), (10, 30)]) + 0.5)


def test_cam_peaks_of_several_classes_and_of_a_coarser_cam():
    cams = np.stack([_blobs((H, W), [(10, 30)], [1.0]), _blobs((H, W), [(45, 8)], [0.7])])
    xy = prompt_placement("cam_peaks", (H, W), 4, cams=cams)["point_coords"][:, 0]
    np.testing.assert_allclose(xy, [(10.5, 30.5), (45.5, 8.5)])
    from_tensor = prompt_placement("cam_peaks", (H, W), 4, cams=torch.from_numpy(cams))["point_coords"][:, 0]
    np.testing.assert_array_equal(from_tensor, xy)
    coarse = _blobs((H // 2, W // 2), [(5, 15)], [1.0])  # half resolution: pixel (5, 15) covers slice pixels 10-11
    xy = prompt_placement("cam_peaks", (H, W), 4, cams=coarse)["point_coords"][:, 0]
    np.testing.assert_allclose(xy, [(11.0, 31.0)])


def test_cam_peaks_keep_their_distance_and_count():
    centres = [(10 + 4 * k, 20) for k in range(10)]  # a ridge of maxima 4 px apart
    cam = _blobs((H, W), centres, np.linspace(1.0, 0.5, 10), sigma=1.0)
    xy = prompt_placement("cam_peaks", (H, W), 2, cams=cam, peak_distance=7.5)["point_coords"][:, 0]
    assert len(xy) == 4  # at most G * G
    d = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
    assert d[np.triu_indices(len(xy), 1)].min() >= 7.5
    np.testing.assert_allclose(xy[0], (10.5, 20.5))
    assert len(prompt_placement("cam_peaks", (H, W), 4, cams=np.full((H, W), 0.3))["point_coords"]) == 0


@pytest.mark.parametrize("margin", [0.0, 0.5, 1.0])
def test_boxes_tile_the_slice(margin):
    boxes = prompt_placement("boxes", (H, W), 4, box_margin=margin)["boxes"]
    assert boxes.shape == (16, 4) and boxes.dtype == np.float32
    assert boxes[:, 0].min() == 0 and boxes[:, 1].min() == 0 and boxes[:, 2].max() == W and boxes[:, 3].max() == H
    if margin == 0:
        np.testing.assert_allclose(boxes[:, 2] - boxes[:, 0], W / 4)
        np.testing.assert_allclose(boxes[:, 3] - boxes[:, 1], H / 4)
    else:  # an interior box spans 1 + 2 * margin cells
        np.testing.assert_allclose(boxes[5, 2:] - boxes[5, :2], [(1 + 2 * margin) * W / 4, (1 + 2 * margin) * H / 4])


def test_boxes_stay_inside_the_foreground_box():
    foreground = np.zeros((H, W), bool)
    foreground[6:31, 12:50] = True
    foreground[20, 5] = True  # a stray pixel widens the box
    x0, y0, x1, y1 = foreground_box(foreground)
    boxes = prompt_placement("boxes", (H, W), 4, foreground=foreground)["boxes"]
    assert len(boxes) == 16
    assert boxes[:, 0].min() == x0 and boxes[:, 1].min() == y0 and boxes[:, 2].max() == x1 and boxes[:, 3].max() == y1
    assert prompt_placement("boxes", (H, W), 4, foreground=np.zeros((H, W), bool))["boxes"].shape == (0, 4)


@pytest.mark.parametrize(
    "args, match",
    [
        (("gird", (H, W)), "grid"),
        (("cam_peaks", (H, W)), "needs the slice's CAM"),
        (("grid", (H, W), 0), "grid must be >= 1"),
        (("boxes", (H, W), 4, None, np.ones((H, W + 1), bool)), "does not match"),
    ],
)
def test_placement_errors(args, match):
    with pytest.raises(ValueError, match=match):
        prompt_placement(*args)


def test_default_placement_follows_the_model_card(tiny_sam_checkpoint):
    assert default_placement(sam_info("lite_medsam")) == "boxes"
    assert default_placement(sam_info("medsam_vit_b")) == "boxes"
    assert default_placement(sam_info("tiny", tiny_sam_checkpoint)) == "grid"
    engine = SamEngine(sam_info("tiny", tiny_sam_checkpoint), autocast="none", device="cpu")
    assert default_placement(engine) == "grid" and PromptAffinityMiner(engine).placement == "grid"
    assert not engine.loaded


def test_signature_changes_with_the_settings_and_never_builds_sam(tiny_sam_checkpoint):
    engine = SamEngine(sam_info("tiny", tiny_sam_checkpoint), autocast="none", device="cpu")
    sigs = [PromptAffinityMiner(engine, **kw).signature() for kw in
            ({}, {"placement": "boxes"}, {"grid": 3}, {"affinity_size": 32}, {"placement": "boxes", "box_margin": 0})]
    assert all(a != b for i, a in enumerate(sigs) for b in sigs[i + 1 :])
    assert sigs[0]["engine"] == engine.signature() and sigs[0]["placement"] == "grid"
    assert PromptAffinityMiner(engine, prompt_batch=3).signature() == sigs[0]
    assert not engine.loaded
    with pytest.raises(ValueError, match="grid_compat"):
        PromptAffinityMiner(engine, placement="grid_compt")


# ---------------------------------------------------------------------------------------------------- tiny SAM
@pytest.fixture(scope="module")
def engine(tiny_sam_checkpoint):
    return SamEngine(load_sam("tiny", tiny_sam_checkpoint), batch_size=2, autocast="none", device="cpu")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 60, (3, H, W, 3), dtype=np.uint8)
    imgs[0, 10:30, 5:40] = 230
    imgs[1, 4:20, 30:52] = 180
    imgs[2, 22:38, 8:24] = 250
    return imgs


def _cams(images):
    return [_blobs((H, W), [(20, 20), (44, 10)], [1.0, 0.6 + 0.1 * b]) for b in range(len(images))]


def _foreground(images):
    return images.max(axis=-1) > 100


@pytest.mark.parametrize("grid", [1, 4, 6])
def test_the_encoder_runs_once_per_slice(engine, images, grid):
    seen = []
    hook = engine.model.image_encoder.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    try:
        maps = PromptAffinityMiner(engine, "grid", grid=grid, prompt_batch=5).logit_maps(images)
    finally:
        hook.remove()
    assert sum(seen) == len(images) and len(seen) == 2  # batch_size 2: slices {0, 1}, {2}
    assert maps.shape == (3, 64, 64) and maps.dtype == torch.float32


def _reference(engine, images, miner, cams=None, foreground=None, mode="bilinear"):
    """The authors' M: every prompt decoded on its own (``engine.predict``), upscaled logits summed, resized."""
    out = []
    for b, image in enumerate(images):
        emb = engine.embed(image[None])
        prompts = miner.prompts((H, W), None if cams is None else cams[b], None if foreground is None else foreground[b])
        total = torch.zeros(1, 1, H, W)
        for k in range(len(next(iter(prompts.values())))):
            one = {key: torch.as_tensor(v[k : k + 1]) for key, v in prompts.items()}
            logits, _, _ = engine.predict(emb, [0], multimask_output=False, return_logits=True, **one)
            total += logits
        size = (miner.affinity_size, miner.affinity_size)
        resize = {"mode": "nearest"} if mode == "nearest" else {"mode": "bilinear", "align_corners": False}
        out.append(F.interpolate(total, size=size, **resize)[0, 0])
    return torch.stack(out)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_summed_logits_equal_per_prompt_decoding(engine, images, placement):
    cams, foreground = _cams(images), _foreground(images)
    miner = PromptAffinityMiner(engine, placement, affinity_size=32, prompt_batch=7)
    maps = miner.logit_maps(images, cams=cams, foreground=foreground)
    assert maps.shape == (3, 32, 32) and maps.dtype == torch.float32
    expected = _reference(engine, images, miner, cams, foreground)
    assert float(expected.abs().mean()) > 0.01  # a map of real logits, not zeros (random tiny SAM: small ones)
    torch.testing.assert_close(maps, expected, rtol=1e-4, atol=1e-5)


def test_precomputed_embeddings_and_empty_slices(engine, images):
    miner = PromptAffinityMiner(engine, "boxes")
    emb = engine.embed(images)
    foreground = _foreground(images)
    foreground[1] = False  # no foreground: no prompt, M = 0
    maps = miner.logit_maps_from_embeddings(emb, foreground=foreground)
    torch.testing.assert_close(maps, miner.logit_maps(images, foreground=foreground))
    assert float(maps[1].abs().max()) == 0.0 and float(maps[0].abs().max()) > 0.0
    with pytest.raises(ValueError, match="foreground has 2 slices"):
        miner.logit_maps_from_embeddings(emb, foreground=foreground[:2])


@pytest.mark.parametrize("shape, valid", [((H, W), (12, 16)), ((W, H), (16, 12)), ((32, 32), (16, 16))])
def test_pooled_embedding_averages_the_cells_over_the_slice(engine, shape, valid):
    image = np.random.default_rng(1).integers(0, 256, (2, *shape, 3), dtype=np.uint8)
    emb = engine.embed(image)  # tiny SAM: 256 input, 16 x 16 embedding; 40 x 56 -> 183 x 256 covers 12 of 16 rows
    pooled = pooled_embedding(emb)
    assert pooled.shape == (2, emb.embeddings.shape[1]) and pooled.dtype == torch.float32
    rows, cols = valid
    torch.testing.assert_close(pooled, emb.embeddings[:, :, :rows, :cols].mean(dim=(2, 3)))
    emb.embeddings = emb.embeddings.clone()
    emb.embeddings[:, :, rows:, :] = 1e6  # the padding's cells do not count
    emb.embeddings[:, :, :, cols:] = 1e6
    torch.testing.assert_close(pooled_embedding(emb), pooled)


# ---------------------------------------------------------------------------------------------------- LiteMedSAM
def test_lite_medsam_boxes_separate_a_disc_better_than_points():
    """LiteMedSAM was trained on box prompts: a box grid's M ranks disc pixels above background pixels almost
    perfectly; its point-prompted masks are nearly empty and their M separates the disc less (measured: AUC 0.997 vs
    0.865)."""
    size, radius = 128, 40
    yy, xx = np.mgrid[:size, :size]
    disc = (xx + 0.5 - 64) ** 2 + (yy + 0.5 - 64) ** 2 < radius**2
    image = np.full((1, size, size, 3), 20, np.uint8)
    image[0, disc] = 220
    engine = SamEngine(load_sam("lite_medsam"), autocast="none", device="cpu")
    emb = engine.embed(image)
    assert default_placement(engine) == "boxes"
    cover = F.interpolate(torch.tensor(disc, dtype=torch.float32)[None, None], size=(64, 64), mode="area")[0, 0]

    def auc(placement):
        m = PromptAffinityMiner(engine, placement).logit_maps_from_embeddings(emb)[0]
        inside, outside = m[cover == 1], m[cover == 0]
        return float((inside[:, None] > outside[None, :]).float().mean()), float(inside.mean() - outside.mean())

    (auc_boxes, gap_boxes), (auc_grid, _) = auc("boxes"), auc("grid")
    assert auc_boxes > 0.98 and gap_boxes > 0
    assert auc_grid < auc_boxes - 0.05


def test_nearest_resize_of_m_is_the_authors_and_changes_the_signature(engine, images):
    bilinear = PromptAffinityMiner(engine, "grid", affinity_size=16)
    nearest = PromptAffinityMiner(engine, "grid", affinity_size=16, affinity_resize="nearest")
    expected = _reference(engine, images, nearest, mode="nearest")
    torch.testing.assert_close(nearest.logit_maps(images), expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(bilinear.logit_maps(images), expected)
    # the default's cache key is what it was before the option existed; nearest maps are never reused as bilinear
    assert bilinear.signature()["logits"] == "sum of single-mask logits, upscaled, bilinear"
    assert nearest.signature() != bilinear.signature()
    with pytest.raises(ValueError, match=r"^pam_resize: .*'nearest'"):
        PromptAffinityMiner(engine, "grid", affinity_resize="nearst")
