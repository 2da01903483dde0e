"""GPU path of SAM-Mix's trainable SAM (``-m gpu``; skipped without CUDA): ViT-B with LoRA under autocast.

ViT-B is built with random weights and saved as a checkpoint here (Meta's weights cannot be downloaded at test time);
what is checked is the machinery: mixed-precision forward and backward, gradients only where SAM-Mix trains, an
adapter that round-trips on the device, and autocast staying close to float32.
"""

import pytest
import torch

from bundle.sam.adapter import load_adapter, save_adapter
from bundle.sam.loading import build_sam, load_sam
from bundle.sam.trainable import TrainableSam

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def vit_b_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit_b") / "vit_b_random.pth"
    torch.save(build_sam("vit_b").state_dict(), path)
    return path


def _batch(device):
    torch.manual_seed(1)
    x = torch.rand(2, 1, 256, 256, device=device)
    boxes = torch.tensor([[60.0, 50.0, 180.0, 170.0], [20.0, 30.0, 120.0, 200.0]], device=device)
    return x, boxes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_vit_b_lora_step_under_autocast(vit_b_checkpoint, dtype):
    sam = load_sam("vit_b", vit_b_checkpoint, device="cuda")
    model = TrainableSam(sam, lora_rank=8).cuda()
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    x, boxes = _batch("cuda")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    with torch.autocast("cuda", dtype=dtype):
        logits, _ = model(x, boxes)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), torch.zeros_like(logits.float()))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = {k for k, v in sam.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(".lora_" in k or k.startswith(("prompt_encoder.", "mask_decoder.")) for k in changed)


def test_autocast_close_to_float32_and_adapter_round_trip_on_cuda(vit_b_checkpoint, tmp_path):
    sam = load_sam("vit_b", vit_b_checkpoint, device="cuda")
    model = TrainableSam(sam, lora_rank=8).cuda().eval()
    for name, p in model.named_parameters():
        if ".lora_q_b" in name or ".lora_v_b" in name:
            torch.nn.init.normal_(p, std=0.02)  # a non-trivial adapter
    x, boxes = _batch("cuda")
    with torch.no_grad():
        ref, _ = model(x, boxes)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            mixed, _ = model(x, boxes)
    agree = ((mixed.float() > 0) == (ref > 0)).float().mean()
    assert agree > 0.98
    path = save_adapter(sam, tmp_path / "adapter.pt")
    merged = load_sam("vit_b", vit_b_checkpoint, device="cuda", adapter=path)
    reloaded = TrainableSam(load_adapter(load_sam("vit_b", vit_b_checkpoint, device="cuda"), path), lora_rank=0,
                            tune=False).cuda().eval()
    with torch.no_grad():
        a, _ = TrainableSam(merged, lora_rank=0, tune=False).cuda().eval()(x, boxes)
        b, _ = reloaded(x, boxes)
    torch.testing.assert_close(b, ref, atol=1e-4, rtol=1e-4)
    assert ((a > 0) == (ref > 0)).float().mean() > 0.999
