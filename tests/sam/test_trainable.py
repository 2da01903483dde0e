"""The trainable SAM path: same masks as the inference engine, gradients only where SAM-Mix trains, frozen encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bundle.sam.engine import SamEngine
from bundle.sam.loading import build_sam, load_sam
from bundle.sam.lora import lora_modules
from bundle.sam.trainable import TrainableSam

TRAINED = ("prompt_encoder.", "mask_decoder.")


def _slices(batch: int, size: int = 256, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (batch, 1, size, size)).astype(np.float32) / 255.0  # exact on the 0-255 scale
    x[:, :, size // 4 : size // 2, size // 3 : size // 2] = 0.9
    return torch.from_numpy(x)


@pytest.fixture
def tiny(tiny_sam_checkpoint):
    return load_sam("tiny", tiny_sam_checkpoint)


@pytest.mark.parametrize("multimask", ["multimask", "single"])
def test_without_adapter_it_reproduces_the_inference_engine(tiny, multimask):
    """On slices of the encoder's size (no resize) the torch preprocessing equals the engine's PIL path."""
    model = TrainableSam(tiny, lora_rank=0, tune=False, multimask=multimask)
    x = _slices(2)
    boxes = torch.tensor([[60.0, 50.0, 140.0, 130.0], [10.0, 20.0, 200.0, 90.0]])
    with torch.no_grad():
        logits, iou = model(x, boxes)
    engine = SamEngine(tiny, autocast="none")
    rgb = (x[:, 0, :, :, None].expand(-1, -1, -1, 3) * 255).round().to(torch.uint8).numpy()
    emb = engine.embed(rgb)
    multi = multimask == "multimask"
    ref, ref_iou, _ = engine.predict(emb, torch.arange(2), multimask_output=multi, return_logits=True, boxes=boxes)
    best = ref_iou.argmax(dim=1)
    expected = ref[torch.arange(2), best][:, None]
    assert logits.shape == (2, 1, 256, 256)
    torch.testing.assert_close(iou, ref_iou[torch.arange(2), best], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, expected, atol=1e-3, rtol=1e-3)


def test_multimask_auto_follows_the_model_card(tiny):
    assert TrainableSam(tiny, lora_rank=0, tune=False).multimask  # point-trained SAM: IoU head trained
    lite = build_sam("lite_medsam")
    assert not TrainableSam(lite, lora_rank=0, tune=False).multimask  # box-trained: single-mask output


def test_non_square_slices_come_back_at_their_size(tiny):
    model = TrainableSam(tiny, lora_rank=4)
    logits, _ = model(torch.rand(1, 1, 40, 56), torch.tensor([[5.0, 5.0, 30.0, 20.0]]))
    assert logits.shape == (1, 1, 40, 56)


def test_fixed_guidance_shifts_the_embedding_and_learned_guidance_starts_at_zero(tiny):
    x, boxes = _slices(1), torch.tensor([[60.0, 50.0, 140.0, 130.0]])
    guidance = torch.zeros(1, 1, 256, 256)
    guidance[..., 64:128, 80:128] = 1
    fixed = TrainableSam(tiny, lora_rank=0, tune=False, guidance="fixed", guidance_weight=1.0)
    off = TrainableSam(tiny, lora_rank=0, tune=False, guidance="fixed", guidance_weight=0.0)
    learned = TrainableSam(tiny, lora_rank=0, tune=True, guidance="learned")
    with torch.no_grad():
        plain, _ = fixed(x, boxes)
        assert not torch.allclose(plain, fixed(x, boxes, guidance)[0])
        assert torch.equal(plain, off(x, boxes, guidance)[0])
        assert torch.equal(plain, learned(x, boxes, guidance)[0])  # zero gain: the published SAM at the start
    assert learned.guidance_gain.requires_grad and not fixed.guidance_gain.requires_grad
    # the learned gain moves with training where the guidance is on
    optimizer = torch.optim.Adam([learned.guidance_gain], lr=1e-2)
    learned(x, boxes, guidance)[0].mean().backward()
    optimizer.step()
    assert learned.guidance_gain.abs().sum() > 0


def _step(model: TrainableSam, x, boxes, target) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    model.train()
    logits, _ = model(x, boxes)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
    optimizer.step()


@pytest.mark.parametrize("model_type", ["tiny", "lite_medsam"])
def test_training_changes_only_lora_prompt_encoder_and_decoder(model_type, tiny_sam_checkpoint):
    sam = load_sam("tiny", tiny_sam_checkpoint) if model_type == "tiny" else build_sam("lite_medsam")
    model = TrainableSam(sam, lora_rank=8)
    assert len(lora_modules(sam)) > 0
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    x, boxes = _slices(1), torch.tensor([[60.0, 50.0, 140.0, 130.0]])
    target = torch.zeros(1, 1, 256, 256)
    target[..., 64:128, 85:128] = 1
    _step(model, x, boxes, target)
    _step(model, x, boxes, target)
    after = sam.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing was trained"
    assert all(".lora_" in k or k.startswith(TRAINED) for k in changed), sorted(changed)[:5]
    assert any(".lora_" in k for k in changed) and any(k.startswith("mask_decoder.") for k in changed)
    # the frozen encoder: weights *and* buffers (TinyViT's batch-norm statistics) untouched, eval mode kept
    encoder = [k for k in before if k.startswith("image_encoder.") and ".lora_" not in k]
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert not sam.image_encoder.training and sam.mask_decoder.training


def test_frozen_model_has_no_trainable_parameter(tiny):
    model = TrainableSam(tiny, lora_rank=0, tune=False)
    assert not any(p.requires_grad for p in model.parameters())


def test_one_box_per_slice_is_required(tiny):
    model = TrainableSam(tiny, lora_rank=0, tune=False)
    with pytest.raises(ValueError, match="one box per slice"):
        model(torch.rand(2, 1, 32, 32), torch.zeros(1, 4))
