"""Tests of bundle.sam.loading: official and small SAM builds, checkpoint round trips and checkpoint errors."""

from __future__ import annotations

import hashlib
import json
import sys
from types import SimpleNamespace

import pytest
import torch

import bundle.sam.loading as loading
from bundle.sam.loading import SAM_CONFIGS, SamConfig, build_sam, infer_config, load_sam
from bundle.sam.torchvision_compat import import_segment_anything

segment_anything = import_segment_anything()
# the package exports a function named build_sam, which hides the module of the same name
sa_build = sys.modules["segment_anything.build_sam"]


class _Built(torch.nn.Module):
    """What the spied builder returns instead of a real (slow to initialise) ViT-L/H."""


@pytest.fixture
def registry_spy(monkeypatch):
    """Record the arguments segment-anything's own builder receives, without building the network."""
    calls = []

    def fake_build_sam(**kwargs):
        calls.append(kwargs)
        return _Built()

    monkeypatch.setattr(sa_build, "_build_sam", fake_build_sam)
    return calls


@pytest.fixture(scope="module")
def tiny_state(tiny_sam_checkpoint):
    return torch.load(tiny_sam_checkpoint, map_location="cpu", weights_only=True)


def _same_state(model, state):
    mine = model.state_dict()
    assert mine.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(mine[k], v), k


@pytest.mark.parametrize("name, official", [("vit_b", "vit_b"), ("vit_l", "vit_l"), ("vit_h", "vit_h"),
                                            ("medsam_vit_b", "vit_b")])
def test_official_types_use_segment_anything_registry(registry_spy, name, official):
    model = load_sam(name, random_weights=True)
    assert isinstance(model, _Built)
    (kwargs,) = registry_spy
    cfg = SAM_CONFIGS[name]
    expected = {"encoder_embed_dim": cfg.encoder_embed_dim, "encoder_depth": cfg.encoder_depth,
                "encoder_num_heads": cfg.encoder_num_heads,
                "encoder_global_attn_indexes": list(cfg.encoder_global_attn_indexes), "checkpoint": None}
    kwargs["encoder_global_attn_indexes"] = list(kwargs["encoder_global_attn_indexes"])
    assert kwargs == expected
    assert model.sam_info.model_type == name and model.sam_info.checkpoint is None
    # the config recorded in the cache key is the architecture the registry built
    assert model.sam_info.config["encoder_embed_dim"] == {"vit_b": 768, "vit_l": 1024, "vit_h": 1280}[official]


def test_vit_b_builds_for_real():
    model = load_sam("vit_b", random_weights=True)
    enc = model.image_encoder
    assert enc.img_size == 1024 and enc.patch_embed.proj.out_channels == 768 and len(enc.blocks) == 12
    assert infer_config(model.state_dict()) == {"encoder_embed_dim": 768, "encoder_depth": 12, "img_size": 1024,
                                                "prompt_embed_dim": 256}
    assert not model.training
    assert model.sam_info.checkpoint_sha256 is None


@pytest.mark.parametrize("name, img_size, width", [("tiny", 256, 64), ("small", 512, 192)])
def test_small_types_are_sam_modules(name, img_size, width):
    model = build_sam(name)
    assert isinstance(model, segment_anything.modeling.Sam)
    assert model.image_encoder.img_size == img_size
    assert infer_config(model.state_dict())["encoder_embed_dim"] == width
    # a SamConfig or a mapping of its fields builds the same architecture
    cfg = SAM_CONFIGS[name]
    for spec in (cfg, {**cfg.__dict__, "encoder_global_attn_indexes": list(cfg.encoder_global_attn_indexes)}):
        assert {k: v.shape for k, v in build_sam(spec).state_dict().items()} == {
            k: v.shape for k, v in model.state_dict().items()}


def test_unknown_model_type_names_the_closest():
    with pytest.raises(ValueError, match="vit_b"):
        load_sam("vit_bb")


def test_tiny_checkpoint_round_trip(tiny_sam_checkpoint, tiny_state):
    model = load_sam("tiny", tiny_sam_checkpoint)
    _same_state(model, tiny_state)
    info = model.sam_info
    assert info.checkpoint_sha256 == hashlib.sha256(tiny_sam_checkpoint.read_bytes()).hexdigest()
    assert info.model_type == "tiny" and info.checkpoint == str(tiny_sam_checkpoint)
    assert json.loads(json.dumps(info.as_dict()))["config"]["img_size"] == 256
    # saved again, it loads to the same weights (save -> load -> save is stable)
    assert load_sam("tiny", tiny_sam_checkpoint).sam_info.checkpoint_sha256 == info.checkpoint_sha256


WRAPPERS = [
    ("model", lambda sd: {"model": sd, "epoch": 3}),
    ("state_dict", lambda sd: {"state_dict": sd, "optimizer": {"lr": 1.0}}),
    ("module prefix", lambda sd: {f"module.{k}": v for k, v in sd.items()}),
    ("wrapped and prefixed", lambda sd: {"network": {f"module.{k}": v for k, v in sd.items()}}),
]


@pytest.mark.parametrize("label, wrap", WRAPPERS, ids=[w[0] for w in WRAPPERS])
def test_wrapped_checkpoints(tmp_path, tiny_state, label, wrap):
    path = tmp_path / "wrapped.pth"
    torch.save(wrap(tiny_state), path)
    _same_state(load_sam("tiny", path), tiny_state)


@pytest.mark.parametrize("name, mentions", [("vit_b", "sam_vit_b_01ec64.pth"), ("tiny", "large_files.yml"),
                                            ("medsam_vit_b", "large_files.yml")])
def test_missing_checkpoint_says_where_and_how(tmp_path, monkeypatch, name, mentions):
    built = []
    monkeypatch.setattr(loading, "build_sam", lambda *a, **k: built.append(a) or build_sam("tiny"))
    missing = tmp_path / "nowhere" / "sam.pth"
    with pytest.raises(FileNotFoundError) as err:
        load_sam(name, missing)
    text = str(err.value)
    assert str(missing.resolve()) in text and "large_files.yml" in text and mentions in text
    assert not built, "a missing file must be reported before any (slow, large) model is built"


def test_checkpoint_of_another_type_names_its_type(tiny_sam_checkpoint):
    with pytest.raises(ValueError) as err:
        load_sam("small", tiny_sam_checkpoint)
    text = str(err.value)
    assert str(tiny_sam_checkpoint) in text and "SAM tiny checkpoint" in text and "model_type=small" in text


def test_custom_size_checkpoint_described(tmp_path):
    cfg = SamConfig(32, 1, 2, (0,), img_size=128, window_size=4, prompt_embed_dim=32, decoder_mlp_dim=64,
                    iou_head_hidden_dim=32)
    path = tmp_path / "custom.pth"
    torch.save(build_sam(cfg).state_dict(), path)
    with pytest.raises(ValueError, match=r"custom configuration encoder_embed_dim=32, encoder_depth=1, img_size=128"):
        load_sam("tiny", path)
    assert load_sam(cfg, path).sam_info.model_type == "custom"


def test_extra_keys_are_reported_with_the_file(tmp_path, tiny_state):
    path = tmp_path / "with_adapter.pth"
    torch.save({**tiny_state, "image_encoder.blocks.0.attn.qkv.lora_A": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError) as err:
        load_sam("tiny", path)
    assert str(path) in str(err.value) and "lora_A" in str(err.value)


BAD_FILES = [
    ("text", lambda p: p.write_text("this is not a checkpoint\n"), "cannot be read as a torch checkpoint"),
    ("empty", lambda p: p.write_bytes(b""), "cannot be read as a torch checkpoint"),
    ("tensor list", lambda p: torch.save([torch.zeros(2)], p), "not a SAM checkpoint"),
    ("other state dict", lambda p: torch.save({"fc.weight": torch.zeros(2, 2)}, p), "not a SAM checkpoint"),
    ("non-tensor values", lambda p: torch.save({"a": 1}, p), "not a SAM checkpoint"),
]


@pytest.mark.parametrize("label, write, message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_not_a_checkpoint_names_the_file(tmp_path, label, write, message):
    path = tmp_path / "bad.pth"
    write(path)
    with pytest.raises(ValueError) as err:
        load_sam("tiny", path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_torch_load_is_safe(monkeypatch, tiny_sam_checkpoint):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(SimpleNamespace(args=args, kwargs=kwargs))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_sam("tiny", tiny_sam_checkpoint)
    (call,) = calls
    assert call.kwargs.get("weights_only") is True
    assert call.kwargs.get("map_location") is not None


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": SimpleNamespace(x=1)}, path)  # needs unpickling of an arbitrary class
    with pytest.raises(ValueError, match="cannot be read as a torch checkpoint"):
        load_sam("tiny", path)


def test_signature_without_adapter_is_unchanged(tiny_sam_checkpoint):
    """The prior cache is keyed on this: adapters must not add keys (or values) to a plain model's signature."""
    info = loading.sam_info("tiny", tiny_sam_checkpoint)
    old_style = {k: v for k, v in info.as_dict().items()
                 if k in ("model_type", "checkpoint_sha256", "config", "preprocessing", "prompts")}
    assert info.signature() == old_style
    assert json.dumps(info.signature(), sort_keys=True) == json.dumps(old_style, sort_keys=True)
    assert set(loading.sam_info("lite_medsam").signature()) == set(old_style)
