"""Tests of bundle.sam.engine against segment-anything's own SamPredictor, on a tiny SAM loaded from a checkpoint."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from bundle.hashing import file_sha256
from bundle.sam.engine import SamEngine
from bundle.sam.loading import build_sam, load_sam, sam_info
from bundle.sam.torchvision_compat import import_segment_anything

SamPredictor = import_segment_anything().SamPredictor

H, W = 40, 56  # not square, smaller than the encoder input: resize, padding and coordinate scaling all matter
TOL = 1e-4


@pytest.fixture(scope="module")
def model(tiny_sam_checkpoint):
    return load_sam("tiny", tiny_sam_checkpoint)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, H, W, 3), dtype=np.uint8)
    imgs[1, 10:30, 5:40] = 230  # some structure
    return imgs


@pytest.fixture(scope="module")
def engine(model):
    return SamEngine(model, batch_size=2, autocast="none")


@pytest.fixture(scope="module")
def emb(engine, images):
    return engine.embed(images)


@pytest.fixture(scope="module")
def reference(model, images):
    """SamPredictor after ``set_image`` of each slice: features and sizes, kept to restore it without re-encoding."""
    predictor = SamPredictor(model)
    states = []
    for im in images:
        predictor.set_image(im)
        states.append((predictor.features.clone(), predictor.original_size, predictor.input_size))
    return predictor, states


def _meta_predict(predictor, state, prompts, multimask_output, offset=None):
    """segment-anything's predict_torch for one prompt, with SamPredictor's own coordinate transforms."""
    features, predictor.original_size, predictor.input_size = state
    predictor.features = features if offset is None else features + offset
    predictor.is_image_set = True
    tf = predictor.transform
    coords = prompts.get("point_coords")
    boxes = prompts.get("boxes")
    return predictor.predict_torch(
        point_coords=None if coords is None else tf.apply_coords_torch(coords, predictor.original_size),
        point_labels=prompts.get("point_labels"),
        boxes=None if boxes is None else tf.apply_boxes_torch(boxes, predictor.original_size),
        mask_input=prompts.get("mask_inputs"),
        multimask_output=multimask_output,
        return_logits=True,
    )


def _prompts(kind: str, n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    if kind in ("points", "all"):
        out["point_coords"] = torch.as_tensor(rng.uniform(0, [W, H], (n, 2, 2)), dtype=torch.float32)
        out["point_labels"] = torch.as_tensor(rng.integers(0, 2, (n, 2)))
    if kind in ("boxes", "all"):
        xy = rng.uniform(0, [W / 2, H / 2], (n, 2))
        out["boxes"] = torch.as_tensor(np.concatenate([xy, xy + rng.uniform(4, 20, (n, 2))], 1), dtype=torch.float32)
    if kind in ("masks", "all"):
        out["mask_inputs"] = torch.as_tensor(rng.normal(0, 3, (n, 1, 64, 64)), dtype=torch.float32)
    return out


def test_embeddings_equal_set_image_features(emb, reference, images):
    _, states = reference
    assert emb.embeddings.shape == (3, 64, 16, 16) and emb.embeddings.dtype == torch.float32
    assert emb.original_size == (H, W) and emb.input_size == (183, 256)
    for b in range(3):
        torch.testing.assert_close(emb.embeddings[b : b + 1], states[b][0], atol=TOL, rtol=0)
        assert states[b][1:] == (emb.original_size, emb.input_size)


# several slices in one call, slices in any order and repeated
IMAGE_INDEX = [2, 0, 0, 1, 2, 1]


@pytest.mark.parametrize("kind", ["points", "boxes", "masks", "all"])
@pytest.mark.parametrize("multimask_output", [True, False])
def test_predict_equals_predict_torch(engine, emb, reference, kind, multimask_output):
    predictor, states = reference
    prompts = _prompts(kind, len(IMAGE_INDEX))
    masks, iou, low = engine.predict(emb, torch.tensor(IMAGE_INDEX), multimask_output=multimask_output,
                                     return_logits=True, **prompts)
    m = 3 if multimask_output else 1
    assert masks.shape == (len(IMAGE_INDEX), m, H, W) and iou.shape == (len(IMAGE_INDEX), m)
    assert low.shape == (len(IMAGE_INDEX), m, 64, 64)
    for i, b in enumerate(IMAGE_INDEX):
        one = {k: v[i : i + 1] for k, v in prompts.items()}
        ref_masks, ref_iou, ref_low = _meta_predict(predictor, states[b], one, multimask_output)
        torch.testing.assert_close(masks[i], ref_masks[0], atol=TOL, rtol=0)
        torch.testing.assert_close(iou[i], ref_iou[0], atol=TOL, rtol=0)
        torch.testing.assert_close(low[i], ref_low[0], atol=TOL, rtol=0)


def test_binary_masks_are_thresholded_logits(engine, emb):
    prompts = _prompts("points", 4, seed=1)
    logits, _, _ = engine.predict(emb, torch.tensor([0, 1, 2, 0]), return_logits=True, **prompts)
    masks, _, _ = engine.predict(emb, torch.tensor([0, 1, 2, 0]), **prompts)
    assert masks.dtype == torch.bool
    assert torch.equal(masks, logits > engine.model.mask_threshold)


@pytest.mark.parametrize("kind", ["points", "masks"])
def test_embedding_offset(engine, emb, reference, kind):
    predictor, states = reference
    index = torch.tensor([1, 0, 1])
    prompts = _prompts(kind, 3, seed=2)
    plain = engine.predict(emb, index, return_logits=True, **prompts)
    zero = engine.predict(emb, index, return_logits=True, embedding_offset=torch.zeros(3, 1, 16, 16), **prompts)
    for a, b in zip(plain, zero):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    offset = torch.as_tensor(np.random.default_rng(3).normal(0, 0.5, (3, 1, 16, 16)), dtype=torch.float32)
    shifted = engine.predict(emb, index, return_logits=True, embedding_offset=offset, **prompts)
    assert (shifted[2] - plain[2]).abs().max() > 1e-2
    # the offset is added to the image embedding, as SAM-Mix adds its CAM: same as shifted SamPredictor features
    for i, b in enumerate(index.tolist()):
        one = {k: v[i : i + 1] for k, v in prompts.items()}
        ref = _meta_predict(predictor, states[b], one, True, offset=offset[i : i + 1])
        torch.testing.assert_close(shifted[2][i], ref[2][0], atol=TOL, rtol=0)


def test_deterministic(engine, images):
    prompts = _prompts("all", 3, seed=4)
    first = engine.predict(engine.embed(images), torch.tensor([0, 1, 2]), return_logits=True, **prompts)
    second = engine.predict(engine.embed(images), torch.tensor([0, 1, 2]), return_logits=True, **prompts)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_batch_size_invariance(model, images):
    one = SamEngine(model, batch_size=1).embed(images)
    three = SamEngine(model, batch_size=3).embed(images)
    torch.testing.assert_close(one.embeddings, three.embeddings, atol=1e-5, rtol=0)


def test_mask_logits_of_a_selection(engine, emb):
    prompts = _prompts("points", 5, seed=5)
    decoded = engine.decode_tokens(emb, torch.tensor([0, 1, 2, 2, 1]), **prompts)
    full = engine.mask_logits(decoded)
    select = torch.tensor([False, True, False, True, True])
    torch.testing.assert_close(engine.mask_logits(decoded, select), full[select], atol=1e-5, rtol=0)
    single = engine.mask_logits(decoded, multimask_output=False)
    assert single.shape == (5, 1, 64, 64)


def test_bf16_autocast_on_cpu_stays_close(model, images, emb, engine):
    bf16 = SamEngine(model, batch_size=3, autocast="bf16")
    assert bf16.autocast_dtype == torch.bfloat16 and bf16.signature()["autocast"] == "bfloat16"
    low_emb = bf16.embed(images)
    assert low_emb.embeddings.dtype == torch.float32
    rel = (low_emb.embeddings - emb.embeddings).norm() / emb.embeddings.norm()
    assert 0 < rel < 0.05
    prompts = _prompts("points", 3, seed=6)
    _, iou, low = bf16.predict(low_emb, torch.tensor([0, 1, 2]), **prompts)
    _, ref_iou, ref_low = engine.predict(emb, torch.tensor([0, 1, 2]), **prompts)
    assert low.dtype == torch.float32
    assert (low - ref_low).norm() / ref_low.norm() < 0.1
    assert (iou - ref_iou).abs().max() < 0.05


def test_auto_autocast_on_cpu_is_float32(model):
    auto = SamEngine(model, autocast="auto", device="cpu")
    assert auto.autocast_dtype is None
    assert auto.signature()["autocast"] == "float32"


def test_signature_records_the_checkpoint_by_content(engine, tiny_sam_checkpoint, tmp_path):
    sig = engine.signature()
    assert sig["sam"]["model_type"] == "tiny" and "checkpoint" not in sig["sam"]
    assert sig["sam"]["checkpoint_sha256"] == file_sha256(tiny_sam_checkpoint)
    assert sig["sam"]["preprocessing"] == {"size": 256, "resize": "longest_side", "intensity": "pixel_mean_std"}
    moved = tmp_path / "moved.pth"
    shutil.copy(tiny_sam_checkpoint, moved)
    assert SamEngine(load_sam("tiny", moved)).signature() == sig  # a moved checkpoint keeps its cached priors


def test_lazy_engine_builds_sam_only_when_used(monkeypatch, engine, tiny_sam_checkpoint):
    lazy = SamEngine(sam_info("tiny", tiny_sam_checkpoint), device="cpu")
    assert lazy.signature() == engine.signature() and not lazy.loaded
    images = np.random.default_rng(0).integers(0, 255, (2, 40, 56, 3), dtype=np.uint8)
    torch.testing.assert_close(lazy.embed(images).embeddings, engine.embed(images).embeddings)
    assert lazy.loaded


def test_random_weights_have_no_signature(model):
    with pytest.raises(ValueError, match="no recorded checkpoint"):
        SamEngine(build_sam("tiny")).signature()


@pytest.mark.parametrize(
    "kwargs, match",
    [({"autocast": "bf32"}, "bf16"), ({"batch_size": 0}, "batch_size")],
)
def test_invalid_engine_arguments(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamEngine(model, **kwargs)


@pytest.mark.parametrize(
    "images, shape",
    [(np.zeros((8, 8, 3), np.uint8), "(8, 8, 3)"), (np.zeros((1, 8, 8, 3), np.float32), "float32"),
     (np.zeros((1, 8, 8, 4), np.uint8), "(1, 8, 8, 4)")],
)
def test_wrong_images_are_refused(engine, images, shape):
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\] uint8") as err:
        engine.embed(images)
    assert shape in str(err.value)


def test_prompt_errors(engine, emb):
    with pytest.raises(ValueError, match="at least one prompt"):
        engine.decode_tokens(emb, torch.tensor([0]))
    with pytest.raises(ValueError, match="point_labels"):
        engine.decode_tokens(emb, torch.tensor([0]), point_coords=torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="boxes has 2 prompts but image_index has 3"):
        engine.decode_tokens(emb, torch.tensor([0, 1, 2]), boxes=torch.zeros(2, 4))
