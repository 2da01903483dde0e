"""Train a small SAM on synthetic shapes, so tests and benchmarks have a SAM whose masks follow image structure.

A SAM with random weights returns near-identical masks for every prompt (box NMS then leaves one), which says nothing
about whether a faster automatic-mask pipeline keeps the reference's semantics. Training a ``tiny`` SAM (same
``segment_anything.modeling`` classes, 256 input) on random ellipses gives it image-dependent masks with spread-out
IoU predictions and stability scores; the result is saved as an ordinary SAM state dict and loaded through
:func:`bundle.sam.load_sam`, exercising the real checkpoint path. It is a test instrument, not a medical model.

Measured limitation: after 60 (or 400) steps it still largely ignores *where* the point is: its three outputs are
roughly the foreground, the whole slice and a speck, whatever the point. Tests of automatic masks built on it
exercise thresholds, NMS and finishing on a few distinct masks per slice, not on the tens of overlapping masks a
trained SAM gives; they are complemented by candidate-by-candidate comparisons with Meta's generator.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bundle.atomic import atomic_path
from bundle.sam.loading import load_sam

__all__ = ["random_shapes", "train_on_shapes", "make_shapes_checkpoint"]


def random_shapes(rng: np.random.Generator, size: int = 64, max_shapes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """One grey image ``[size, size]`` uint8 of overlapping ellipses on a textured background, and its region map."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    image = np.full((size, size), rng.uniform(0, 60), np.float32)
    regions = np.zeros((size, size), np.int32)
    for k in range(1, int(rng.integers(2, max_shapes + 1)) + 1):
        cy, cx = rng.uniform(0.15, 0.85, 2) * size
        ry, rx = rng.uniform(0.08, 0.3, 2) * size
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
        inside = u**2 + v**2 < 1
        image[inside] = rng.uniform(70, 250)
        regions[inside] = k
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), regions


def _batch(rng, batch: int, size: int, points: int):
    images, targets, coords = [], [], []
    for _ in range(batch):
        img, reg = random_shapes(rng, size)
        ys, xs = rng.integers(0, size, points), rng.integers(0, size, points)
        images.append(np.repeat(img[..., None], 3, axis=-1))
        targets.append(np.stack([reg == reg[y, x] for y, x in zip(ys, xs)]))
        coords.append(np.stack([xs + 0.5, ys + 0.5], axis=1))
    return np.stack(images), np.stack(targets), np.stack(coords).astype(np.float32)


def train_on_shapes(model: torch.nn.Module, steps: int = 300, batch: int = 8, points: int = 8, seed: int = 0,
                    lr: float = 1e-3, size: int = 64) -> list[float]:
    """Train ``model`` in place (point prompt -> region under the point); returns the loss per step."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    img_size = model.image_encoder.img_size
    scale = img_size / size
    losses = []
    for _ in range(steps):
        images, targets, coords = _batch(rng, batch, size, points)
        x = torch.as_tensor(images).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
        emb = model.image_encoder(model.preprocess(x))
        pe = model.prompt_encoder.get_dense_pe()
        loss = 0.0
        for i in range(batch):
            pts = torch.as_tensor(coords[i] * scale)[:, None, :]
            sparse, dense = model.prompt_encoder(points=(pts, torch.ones(points, 1, dtype=torch.int)), boxes=None,
                                                 masks=None)
            low, iou = model.mask_decoder(emb[i : i + 1], pe, sparse, dense, multimask_output=True)
            target = torch.as_tensor(targets[i], dtype=torch.float32)[:, None]
            target = F.interpolate(target, size=low.shape[-2:], mode="area").expand_as(low)
            bce = F.binary_cross_entropy_with_logits(low, target, reduction="none").mean(dim=(2, 3))
            prob = torch.sigmoid(low)
            inter = (prob * target).sum(dim=(2, 3))
            dice = 1 - (2 * inter + 1) / (prob.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + 1)
            per_mask = bce + dice
            hard = (low > 0).float()
            true_iou = (hard * target).sum(dim=(2, 3)) / ((hard + target).clamp(max=1).sum(dim=(2, 3)) + 1e-6)
            # SAM's recipe: only the best of the three outputs is trained on the mask, every IoU prediction is trained
            loss = loss + per_mask.min(dim=1).values.mean() + F.mse_loss(iou, true_iou.detach())
        loss = loss / batch
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    model.eval()
    return losses


def make_shapes_checkpoint(
    path: str | os.PathLike, model_type: str = "tiny", steps: int = 300, batch: int = 8, seed: int = 0
) -> Path:
    """Train a ``model_type`` SAM on shapes and save its state dict to ``path`` (atomically; the tests' fixture)."""
    torch.manual_seed(seed)
    model = load_sam(model_type, random_weights=True)  # trained from scratch here
    train_on_shapes(model, steps=steps, batch=batch, seed=seed)
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)
    return Path(path)
