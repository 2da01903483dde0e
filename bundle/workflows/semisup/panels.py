"""TensorBoard panels of SAM-Mix: image, Grad-CAM, box prompt, prediction and label of a few validation slices.

One row per slice (``[3, H, 5 W]``), written every epoch under ``panels/<case>_<slice>``: the image, the CAM (values
in [0, 1]), the image with the box prompt drawn in, the predicted mask and the ground-truth mask. The U-Net baseline
has no CAM or box: those tiles stay black.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bundle.workflows.common.handlers import to_unit_range

__all__ = ["draw_box", "panel_row", "write_panels"]


def draw_box(image: torch.Tensor, box: Sequence[float]) -> torch.Tensor:
    """``[H, W]`` grey image -> ``[3, H, W]`` RGB with the ``XYXY`` box outlined in red."""
    height, width = image.shape
    rgb = image.expand(3, height, width).clone()
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    x0, x1 = max(0, min(x0, width - 1)), max(0, min(x1, width - 1))
    y0, y1 = max(0, min(y0, height - 1)), max(0, min(y1, height - 1))
    red = torch.tensor([1.0, 0.0, 0.0])[:, None]
    for y in (y0, y1):
        rgb[:, y, x0 : x1 + 1] = red
    for x in (x0, x1):
        rgb[:, y0 : y1 + 1, x] = red
    return rgb


def panel_row(image: torch.Tensor, cam: torch.Tensor | None, box, prediction: torch.Tensor,
              label: torch.Tensor) -> torch.Tensor:
    """One slice's tiles side by side: ``[3, H, 5 W]`` (all ``[H, W]`` inputs)."""
    grey = to_unit_range(image.float())
    blank = torch.zeros_like(grey)
    tiles = [grey, blank if cam is None else cam.float(), None, prediction.float(), label.float()]
    rgb = [t.expand(3, *t.shape).clone() if t is not None else None for t in tiles]
    rgb[2] = draw_box(grey, box) if box is not None else grey.expand(3, *grey.shape).clone()
    return torch.cat(rgb, dim=2)


@torch.no_grad()
def write_panels(writer, network, samples: Sequence[dict], step: int, device) -> None:
    """Panels of ``samples`` (slice dictionaries with ``image``, ``label``, ``case_id``, ``slice_index``)."""
    was_training = network.training
    network.eval()
    try:
        for sample in samples:
            x = sample["image"][None].to(device).float()
            label = sample["label"][0] > 0.5
            if hasattr(network, "predict"):
                out = network.predict(x)
                cam, box, logits = out["cam"][0, 0].cpu(), out["boxes"][0].cpu(), out["logits"]
            else:
                cam, box, logits = None, None, network(x)
            row = panel_row(sample["image"][0], cam, box, (logits[0, 0] > 0).cpu(), label)
            writer.add_image(f"panels/{sample['case_id']}_{sample['slice_index']}", row, step)
    finally:
        network.train(was_training)
