"""Tests of bundle.sam.lora and bundle.sam.adapter: LoRA on both qkv layouts, merging, adapter files and loading."""

from __future__ import annotations

import copy
import hashlib
import shutil

import pytest
import torch
from torch import nn

from bundle.folders import CONFIGS_DIR
from bundle.sam.adapter import ADAPTER_FORMAT, adapter_header, load_adapter, read_adapter, save_adapter
from bundle.sam.engine import SamEngine
from bundle.priors.settings import PriorSettings
from bundle.sam.factory import make_engine
from bundle.sam.loading import build_sam, load_sam, sam_info
from bundle.sam.lora import (
    LoRAQKV,
    apply_lora,
    has_lora,
    lora_config,
    lora_modules,
    lora_state_dict,
    mark_trainable,
    merge_lora,
    qv_rows,
)
from bundle.sam.tiny_vit import WindowAttention
from bundle.sam.torchvision_compat import import_segment_anything

import_segment_anything()
from segment_anything.modeling.image_encoder import Attention  # noqa: E402

TYPES = ["tiny", "lite_medsam"]


def _randomize_lora(sam: nn.Module, seed: int = 1, std: float = 0.05) -> None:
    """Non-zero B (and fresh A) everywhere, as after some training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in lora_modules(sam).values():
            for lin in (module.lora_q_a, module.lora_q_b, module.lora_v_a, module.lora_v_b):
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * std)


def _perturb_decoder(sam: nn.Module, seed: int = 2) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if name.startswith(("prompt_encoder.", "mask_decoder.")):
                p.add_(torch.randn(p.shape, generator=gen) * 0.01)


def _image(seed: int = 0, size: int = 256) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _encode(sam: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return sam.image_encoder(x)


def _decode(sam: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks (thresholded at 0) and low-res logits of SAM's own forward for one box prompt."""
    batch = [{"image": image[0] * 40 + 120, "original_size": tuple(image.shape[-2:]),
              "boxes": torch.tensor([[40.0, 60.0, 180.0, 200.0]])}]
    with torch.no_grad():
        out = sam(batch, multimask_output=False)[0]
    return out["masks"], out["low_res_logits"]


def _first_attention(sam: nn.Module) -> nn.Module:
    return next(m for m in sam.image_encoder.modules() if isinstance(m, (Attention, WindowAttention)))


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture
def tiny_base(tiny_sam_checkpoint):
    return load_sam("tiny", tiny_sam_checkpoint)


@pytest.fixture
def tiny_adapter(tiny_sam_checkpoint, tmp_path):
    """A tiny SAM with trained-looking LoRA and decoder, and the adapter saved from it."""
    model = load_sam("tiny", tiny_sam_checkpoint)
    apply_lora(model, rank=4, alpha=2.0)
    _randomize_lora(model)
    _perturb_decoder(model)
    path = save_adapter(model, tmp_path / "adapters" / "tiny_lora.pt", extra={"run": "test", "epochs": 3})
    return model, path


# ------------------------------------------------------------------------------------------------------- LoRA modules


@pytest.mark.parametrize("model_type", TYPES)
def test_fresh_adapter_changes_nothing(model_type):
    torch.manual_seed(0)
    model = build_sam(model_type)
    x = _image()
    before = _encode(model, x)
    names = apply_lora(model, rank=4)
    assert names and all(isinstance(model.get_submodule(n), LoRAQKV) for n in names)
    assert torch.equal(_encode(model, x), before)


def _rows_by_layout(attention: nn.Module) -> dict[str, torch.Tensor]:
    """q / k / v rows as each attention's forward reshapes its qkv output (written out, not via qv_rows)."""
    qkv = attention.qkv
    dim = qkv.in_features
    idx = torch.arange(3 * dim)
    if isinstance(attention, Attention):  # reshape(B, N, 3, heads, hd): [all q | all k | all v]
        q, k, v = idx.view(3, dim)
    else:  # view(..., heads, 3 * hd).chunk(3): [q_h | k_h | v_h] per head
        per_head = idx.view(attention.num_heads, 3, dim // attention.num_heads)
        q, k, v = per_head[:, 0].flatten(), per_head[:, 1].flatten(), per_head[:, 2].flatten()
    return {"q": q, "k": k, "v": v}


@pytest.mark.parametrize("model_type", TYPES)
def test_only_query_and_value_rows_change(model_type):
    torch.manual_seed(0)
    model = build_sam(model_type)
    attention = _first_attention(model)
    rows = _rows_by_layout(attention)
    q_rows, v_rows = qv_rows(attention)
    assert torch.equal(q_rows, rows["q"]) and torch.equal(v_rows, rows["v"])

    base = attention.qkv
    original = copy.deepcopy(attention)
    edited = copy.deepcopy(attention)  # the same update written into the weight rows by hand
    apply_lora(model, rank=3, alpha=6.0)
    wrapped = attention.qkv
    assert isinstance(wrapped, LoRAQKV) and wrapped.base is base and wrapped.scale == 2.0
    _randomize_lora(model, std=0.2)
    dim = base.in_features
    x = torch.randn(2, 5, dim)
    with torch.no_grad():
        out, plain = wrapped(x), base(x)
        assert torch.equal(out[..., rows["k"]], plain[..., rows["k"]])
        assert (out[..., rows["q"]] != plain[..., rows["q"]]).all()
        assert (out[..., rows["v"]] != plain[..., rows["v"]]).all()
        w = edited.qkv.weight
        w[rows["q"]] += 2.0 * wrapped.lora_q_b.weight @ wrapped.lora_q_a.weight
        w[rows["v"]] += 2.0 * wrapped.lora_v_b.weight @ wrapped.lora_v_a.weight
        torch.testing.assert_close(out, edited.qkv(x), atol=1e-5, rtol=1e-5)
        # the attention itself reads the update where the hand-edited weights put it
        tokens = torch.randn(1, 8, 8, dim)
        torch.testing.assert_close(attention(tokens), edited(tokens), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(attention(tokens), original(tokens), atol=1e-3)


def test_qv_rows_refuses_other_modules():
    with pytest.raises(ValueError, match="nn.modules.linear.Linear"):
        qv_rows(nn.Linear(4, 12))


def test_apply_twice_and_bad_arguments_are_refused():
    model = build_sam("tiny")
    with pytest.raises(ValueError, match="rank must be >= 1"):
        apply_lora(model, rank=0)
    assert not has_lora(model)  # nothing wrapped by the refused call
    apply_lora(model, rank=2)
    with pytest.raises(ValueError, match="already carries LoRA.*image_encoder.blocks.0.attn.qkv"):
        apply_lora(model, rank=2)
    with pytest.raises(ValueError, match="no image_encoder"):
        apply_lora(nn.Linear(2, 2))


def test_lora_state_dict_and_config():
    model = build_sam("tiny")
    names = apply_lora(model, rank=4)
    assert names == ["image_encoder.blocks.0.attn.qkv", "image_encoder.blocks.1.attn.qkv"]
    state = lora_state_dict(model)
    assert set(state) == {f"{n}.lora_{w}_{ab}.weight" for n in names for w in "qv" for ab in "ab"}
    full = model.state_dict()
    assert all(torch.equal(full[k], v) for k, v in state.items())
    assert state[f"{names[0]}.lora_q_a.weight"].shape == (4, 64)
    assert state[f"{names[0]}.lora_q_b.weight"].shape == (64, 4)
    assert lora_config(model) == {"rank": 4, "alpha": 4.0, "modules": names}


def test_mark_trainable_selects_lora_prompt_encoder_and_decoder():
    model = build_sam("tiny")
    apply_lora(model, rank=2)
    names = mark_trainable(model)
    expected = {n for n, _ in model.named_parameters()
                if ".lora_" in n or n.startswith(("prompt_encoder.", "mask_decoder."))}
    assert set(names) == expected and len(names) == len(expected)
    assert sum(".lora_" in n for n in names) == 8  # 2 blocks x (A, B) x (q, v)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    assert any(n.startswith("image_encoder.") for n, p in model.named_parameters() if not p.requires_grad)
    # gradients reach the LoRA updates (B first: A's gradient is zero while B is) and nothing frozen
    loss = model.image_encoder(_image()).square().mean()
    loss.backward()
    for n, p in model.named_parameters():
        if n.endswith("_b.weight") and ".lora_" in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        elif n.startswith("image_encoder.") and ".lora_" not in n:
            assert p.grad is None, n


# ---------------------------------------------------------------------------------------------------------- merging


@pytest.mark.parametrize("model_type", TYPES)
def test_merge_matches_unmerged(model_type, tiny_sam_checkpoint):
    torch.manual_seed(0)
    model = load_sam("tiny", tiny_sam_checkpoint) if model_type == "tiny" else build_sam(model_type)
    base_keys = set(model.state_dict())
    x = _image()
    before = _encode(model, x)
    apply_lora(model, rank=4, alpha=8.0)
    _randomize_lora(model, std=0.1)
    unmerged = _encode(model, x)
    masks, logits = _decode(model, x) if model_type == "tiny" else (None, None)
    merged_model = merge_lora(copy.deepcopy(model))
    assert not has_lora(merged_model) and not lora_modules(merged_model)
    assert all(type(m.qkv) is nn.Linear for m in merged_model.image_encoder.modules()
               if isinstance(m, (Attention, WindowAttention)))
    assert set(merged_model.state_dict()) == base_keys
    merged = _encode(merged_model, x)
    assert not torch.allclose(merged, before, atol=1e-3)  # the updates matter: the comparison is not vacuous
    torch.testing.assert_close(merged, unmerged, atol=1e-5 * unmerged.abs().max().item(), rtol=1e-5)
    if masks is not None:
        merged_masks, merged_logits = _decode(merged_model, x)
        assert masks.any() and not masks.all()
        assert torch.equal(merged_masks, masks)
        torch.testing.assert_close(merged_logits, logits, atol=1e-4, rtol=1e-4)


def test_merge_restores_requires_grad_and_is_a_no_op_without_lora():
    model = build_sam("tiny")
    apply_lora(model, rank=2)
    assert not model.image_encoder.blocks[0].attn.qkv.base.weight.requires_grad  # frozen while wrapped
    merge_lora(model)
    assert model.image_encoder.blocks[0].attn.qkv.weight.requires_grad
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merge_lora(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------------------------------- adapter files


def test_adapter_round_trip_is_exact(tiny_adapter, tiny_sam_checkpoint):
    trained, path = tiny_adapter
    data = read_adapter(path)
    assert data["format"] == ADAPTER_FORMAT
    assert data["base"] == {"model_type": "tiny", "checkpoint_sha256": trained.sam_info.checkpoint_sha256}
    assert data["lora"] == {"rank": 4, "alpha": 2.0, "modules": list(lora_modules(trained))}
    assert set(data["state"]) == set(lora_state_dict(trained)) | {
        k for k in trained.state_dict() if k.startswith(("prompt_encoder.", "mask_decoder."))}
    assert adapter_header(path) == {k: v for k, v in data.items() if k != "state"}
    assert adapter_header(path)["extra"] == {"run": "test", "epochs": 3}

    fresh = load_sam("tiny", tiny_sam_checkpoint)
    assert not torch.equal(fresh.mask_decoder.iou_token.weight, trained.mask_decoder.iou_token.weight)
    assert load_adapter(fresh, path) is fresh
    assert has_lora(fresh)
    _assert_same_state(fresh, trained)  # LoRA, prompt encoder, decoder, and the untouched base, bitwise
    assert fresh.sam_info.adapter == str(path)
    assert fresh.sam_info.adapter_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    x = _image()
    assert torch.equal(_encode(fresh, x), _encode(trained, x))


def test_adapter_of_another_base_is_refused(tiny_adapter, tmp_path):
    _, path = tiny_adapter
    torch.manual_seed(123)
    other_ckpt = tmp_path / "other_tiny.pth"
    torch.save(build_sam("tiny").state_dict(), other_ckpt)
    other = load_sam("tiny", other_ckpt)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError) as err:
        load_adapter(other, path)
    text = str(err.value)
    assert str(path) in text and read_adapter(path)["base"]["checkpoint_sha256"] in text
    assert other.sam_info.checkpoint_sha256 in text
    assert not has_lora(other) and other.sam_info.adapter is None
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    # sam_info says so before any model is built
    with pytest.raises(ValueError, match="adapter for SAM tiny") as err:
        sam_info("tiny", other_ckpt, path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="random weights"):
        load_adapter(build_sam("tiny"), path)


def test_adapter_already_applied_is_refused(tiny_adapter, tiny_sam_checkpoint):
    _, path = tiny_adapter
    model = load_sam("tiny", tiny_sam_checkpoint, adapter=path)  # merged: no LoRA module left, but an adapter
    with pytest.raises(ValueError, match="already carries LoRA or an adapter"):
        load_adapter(model, path)


def test_non_adapter_files_are_named(tiny_sam_checkpoint, tiny_adapter, tmp_path):
    _, path = tiny_adapter
    with pytest.raises(ValueError) as err:
        read_adapter(tiny_sam_checkpoint)
    assert str(tiny_sam_checkpoint) in str(err.value) and "SAM checkpoint" in str(err.value)

    truncated = tmp_path / "truncated.pt"
    raw = path.read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError) as err:
        read_adapter(truncated)
    assert str(truncated) in str(err.value) and "truncated" in str(err.value)

    other = tmp_path / "other.pt"
    torch.save({"format": "bundle-sam-adapter/9", "state": {}}, other)
    with pytest.raises(ValueError, match="does not read"):
        read_adapter(other)
    torch.save([1, 2], other)
    with pytest.raises(ValueError, match="not a SAM adapter"):
        read_adapter(other)

    damaged = read_adapter(path)
    del damaged["state"][f"{damaged['lora']['modules'][0]}.lora_v_b.weight"]
    torch.save(damaged, other)
    with pytest.raises(ValueError, match="LoRA tensors missing"):
        read_adapter(other)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        read_adapter(tmp_path / "missing.pt")


def test_save_adapter_refuses_random_weights_and_missing_lora(tmp_path, tiny_base):
    model = build_sam("tiny")
    apply_lora(model)
    with pytest.raises(ValueError, match="random weights"):
        save_adapter(model, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="no LoRA"):
        save_adapter(tiny_base, tmp_path / "a.pt")
    apply_lora(tiny_base)
    with pytest.raises(ValueError, match="JSON"):
        save_adapter(tiny_base, tmp_path / "a.pt", extra={"path": tmp_path})
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


def test_adapter_tensors_must_fit_the_model(tiny_adapter, tiny_sam_checkpoint, tmp_path):
    _, path = tiny_adapter
    data = read_adapter(path)
    key = "mask_decoder.iou_token.weight"
    data["state"][key] = torch.zeros(1, 7)
    bad = tmp_path / "bad_shape.pt"
    torch.save(data, bad)
    model = load_sam("tiny", tiny_sam_checkpoint)
    with pytest.raises(ValueError, match="do not fit") as err:
        load_adapter(model, bad)
    assert str(bad) in str(err.value) and key in str(err.value)
    assert not has_lora(model)


# ------------------------------------------------------------------------------------- loading, engine, configuration


def test_sam_info_signature_with_adapter(tiny_adapter, tiny_sam_checkpoint, tmp_path):
    _, path = tiny_adapter
    plain = sam_info("tiny", tiny_sam_checkpoint)
    adapted = sam_info("tiny", tiny_sam_checkpoint, path)
    assert set(plain.signature()) == {"model_type", "checkpoint_sha256", "config", "preprocessing", "prompts"}
    assert plain.adapter is None and plain.adapter_sha256 is None
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert adapted.signature() == {**plain.signature(), "adapter_sha256": sha}
    assert adapted.adapter == str(path)
    moved = tmp_path / "elsewhere" / "renamed.pt"
    moved.parent.mkdir()
    shutil.copy(path, moved)
    assert sam_info("tiny", tiny_sam_checkpoint, moved).signature() == adapted.signature()  # path not in the key
    with pytest.raises(FileNotFoundError) as err:
        sam_info("tiny", tiny_sam_checkpoint, tmp_path / "nope.pt")
    assert "nope.pt" in str(err.value) and "adapter" in str(err.value)


def test_load_sam_with_adapter_matches_manual_loading(tiny_adapter, tiny_sam_checkpoint):
    trained, path = tiny_adapter
    manual = load_adapter(load_sam("tiny", tiny_sam_checkpoint), path, merge=False)
    unmerged = load_sam("tiny", tiny_sam_checkpoint, adapter=path, merge_adapter=False)
    merged = load_sam("tiny", tiny_sam_checkpoint, adapter=path)
    assert has_lora(unmerged) and not has_lora(merged)
    _assert_same_state(unmerged, manual)
    for model in (unmerged, merged):
        assert model.sam_info.adapter == str(path)
        assert model.sam_info.signature() == sam_info("tiny", tiny_sam_checkpoint, path).signature()
    x = _image(3)
    reference = _encode(manual, x)
    assert torch.equal(_encode(unmerged, x), reference)
    torch.testing.assert_close(_encode(merged, x), reference, atol=1e-5 * reference.abs().max().item(), rtol=1e-5)
    masks, _ = _decode(manual, x)
    assert torch.equal(_decode(merged, x)[0], masks)
    assert not torch.equal(_decode(load_sam("tiny", tiny_sam_checkpoint), x)[1], _decode(manual, x)[1])


def test_engine_and_factory_carry_the_adapter(tiny_adapter, tiny_sam_checkpoint):
    _, path = tiny_adapter
    engine = SamEngine(sam_info("tiny", tiny_sam_checkpoint, path), autocast="none", device="cpu")
    assert "adapter_sha256" in engine.signature()["sam"] and not engine.loaded
    assert engine.model.sam_info.adapter_sha256 == engine.info.adapter_sha256 and not has_lora(engine.model)
    expected = load_sam("tiny", tiny_sam_checkpoint, adapter=path)
    _assert_same_state(engine.model, expected)

    made = make_engine("tiny", str(tiny_sam_checkpoint), "cpu", 2, "none", str(path))
    assert made.signature() == engine.signature() and not made.loaded
    plain = make_engine("tiny", str(tiny_sam_checkpoint), "cpu", 2, "none")
    assert "adapter_sha256" not in plain.signature()["sam"]
    settings = PriorSettings(sam_model_type="tiny", sam_checkpoint=str(tiny_sam_checkpoint), sam_autocast="none",
                             sam_adapter=str(path))
    assert settings.mask_generator("cpu").engine.info.adapter_sha256 == engine.info.adapter_sha256
    with pytest.raises(ValueError, match="fallback"):
        PriorSettings(sam_model_type="fallback", sam_adapter=str(path))


def test_configs_pass_the_adapter(tiny_adapter, tiny_sam_checkpoint):
    from monai.bundle import ConfigParser

    _, path = tiny_adapter
    overrides = {"device": "cpu", "priors#sam_model_type": "tiny", "priors#sam_checkpoint": str(tiny_sam_checkpoint),
                 "priors#sam_autocast": "none"}
    parser = ConfigParser()
    parser.read_config(str(CONFIGS_DIR / "sam_priors.json"))
    parser.update(overrides)
    assert parser["priors#sam_adapter"] is None
    assert parser.get_parsed_content("mask_generator").engine.info.adapter is None
    parser = ConfigParser()
    parser.read_config([str(CONFIGS_DIR / "sam_priors.json"), str(CONFIGS_DIR / "train_weak.json")])
    parser.update({**overrides, "priors#sam_adapter": str(path)})
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert parser.get_parsed_content("mask_generator").engine.info.adapter_sha256 == sha
    assert parser.get_parsed_content("sam_engine").info.adapter_sha256 == sha


def test_lite_medsam_packaged_weights_adapter(tmp_path):
    model = load_sam("lite_medsam")
    apply_lora(model, rank=8)
    # LoRA rank 8 on LiteMedSAM's 10 attention blocks: 4 * 8 * dim per block, dims 2 x 128, 6 x 160, 2 x 320
    # -> 32 * 1856 = 59,392 parameters (the prompt encoder and mask decoder, saved too, hold 4,064,560)
    assert sum(v.numel() for v in lora_state_dict(model).values()) == 59_392
    _randomize_lora(model, std=0.02)
    _perturb_decoder(model)
    path = save_adapter(model, tmp_path / "lite_medsam_lora.pt")
    assert path.stat().st_size < 25 * 2**20  # measured: about 16.6 MB, float32
    fresh = load_sam("lite_medsam", adapter=path)  # merged
    assert fresh.sam_info.adapter_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    x = _image(5).sigmoid()  # the encoder's input is min-max scaled to [0, 1]
    expected = _encode(model, x)
    assert not torch.allclose(_encode(load_sam("lite_medsam"), x), expected, atol=1e-3)
    torch.testing.assert_close(_encode(fresh, x), expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-5)
    unmerged = load_adapter(load_sam("lite_medsam"), path)
    assert torch.equal(_encode(unmerged, x), expected)
