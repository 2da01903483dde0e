"""GPU paths of the SAM engine (``-m gpu``; skipped without CUDA): autocast and batched encoders on a real device."""

import numpy as np
import pytest
import torch

from bundle.sam import SamEngine, load_sam
from bundle.sam.automatic import SamAutomaticMasks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("autocast", ["bf16", "fp16"])
def test_autocast_embeddings_close_to_float32(shapes_sam_checkpoint, autocast):
    images = np.random.default_rng(0).integers(0, 255, (4, 96, 80, 3), dtype=np.uint8)
    model = load_sam("tiny", shapes_sam_checkpoint, device="cuda")
    ref = SamEngine(model, batch_size=4, autocast="none").embed(images).embeddings
    mixed = SamEngine(model, batch_size=4, autocast=autocast).embed(images).embeddings
    assert mixed.dtype == torch.float32
    rel = (mixed - ref).norm() / ref.norm()
    assert rel < 0.05


def test_auto_autocast_picks_a_half_type_on_cuda(shapes_sam_checkpoint):
    engine = SamEngine(load_sam("tiny", shapes_sam_checkpoint, device="cuda"), autocast="auto")
    assert engine.autocast_dtype in (torch.bfloat16, torch.float16)


def test_automatic_masks_on_gpu_match_cpu(shapes_sam_checkpoint):
    from bundle.testing.shapes_training import random_shapes

    rng = np.random.default_rng(1)
    images = np.stack([np.repeat(random_shapes(rng, 96)[0][..., None], 3, -1) for _ in range(3)])
    kw = dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    cpu = SamAutomaticMasks(SamEngine(load_sam("tiny", shapes_sam_checkpoint), autocast="none"), **kw)
    gpu = SamAutomaticMasks(SamEngine(load_sam("tiny", shapes_sam_checkpoint, device="cuda"), autocast="none"), **kw)
    for a, b in zip(cpu.generate_batch(images), gpu.generate_batch(images)):
        sa = sum(r["segmentation"].astype(float) * r["stability_score"] for r in a)
        sb = sum(r["segmentation"].astype(float) * r["stability_score"] for r in b)
        assert np.corrcoef(np.ravel(sa), np.ravel(sb))[0, 1] > 0.98


def test_lite_medsam_on_gpu_matches_cpu():
    """LiteMedSAM's TinyViT (fused attention with a bias mask, channels-last) and its box grid on CUDA."""
    from bundle.sam.box_grid import SamBoxGridMasks

    images = np.zeros((2, 96, 112, 3), np.uint8)
    images[:, 10:80, 12:100] = 90
    images[:, 20:45, 25:60] = 210
    images[1, 50:70, 60:90] = 160
    cpu = SamEngine(load_sam("lite_medsam"), autocast="none")
    gpu = SamEngine(load_sam("lite_medsam", device="cuda"), autocast="none")
    torch.testing.assert_close(gpu.embed(images).embeddings.cpu(), cpu.embed(images).embeddings, atol=1e-3, rtol=1e-3)
    for a, b in zip(SamBoxGridMasks(cpu).generate_batch(images), SamBoxGridMasks(gpu).generate_batch(images)):
        assert abs(len(a) - len(b)) <= 1
