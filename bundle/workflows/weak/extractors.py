"""Sub-class exploration with any torch network: pooled features of slices from the user's own weights.

WeakMedSAM clustered ImageNet ResNet-18 features; those weights cannot be downloaded here, so the default feature is
SAM's pooled image embedding (:mod:`bundle.workflows.weak.features`, real pretrained weights that ship with the
bundle's dependencies). :class:`NetworkFeatures` is the option for users who have weights of their own (an ImageNet
ResNet saved from torchvision, a MONAI network pretrained on their data, ...): set ``feature_extractor`` in
``configs/train_weak.json`` (docs/weak.md shows how).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bundle.checkpoint_files import load_checkpoint
from bundle.errors import InputError
from bundle.hashing import path_sha256

__all__ = ["NetworkFeatures"]


class NetworkFeatures:
    """Pooled features of axial slices from a torch network with user-supplied weights (fixed, eval mode).

    Args:
        network: the network; its output for ``[B, C, H, W]`` slices is a ``[B, F]`` feature (e.g. MONAI's ResNet with
            ``feed_forward=False``) or a ``[B, F, h, w]`` map (global-average pooled here).
        weights: a state dict file (``torch.save(model.state_dict())``, or a dict holding it under ``state_dict`` /
            ``network`` / ``model``), loaded strictly; None keeps the network's weights as built.
        loader: transform giving a case's ``[C, H, W, D]`` volume under ``image`` (the classifier's volume transform).
        roi_size: slices are resized to this ``(H, W)``.
        repeat_channels: repeat a one-channel slice to this many channels (3 for ImageNet networks); None: as is.
        batch_size: slices per forward pass.
        device: where the network runs.
    """

    def __init__(self, network: torch.nn.Module, weights: str | os.PathLike | None, loader, roi_size: Sequence[int],
                 repeat_channels: int | None = None, batch_size: int = 32, device="cpu") -> None:
        self.weights = None if weights in (None, "") else os.fspath(weights)
        if self.weights is not None:
            if not os.path.isfile(self.weights):
                raise InputError(self.weights, "feature extractor weights not found")
            state = load_checkpoint(self.weights, what="feature extractor weights")
            for key in ("state_dict", "network", "model"):
                if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
                    state = state[key]
            try:
                network.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise InputError(self.weights, f"weights do not fit {type(network).__name__}: {err}") from err
        self.network = network.to(device).eval()
        self.loader, self.roi_size = loader, [int(s) for s in roi_size]
        self.repeat_channels = repeat_channels
        self.batch_size, self.device = int(batch_size), torch.device(device)

    def signature(self) -> dict:
        """What changes the features: the network class, the weights' sha256 and the slice size."""
        return {"network": type(self.network).__name__, "weights": self.weights,
                "weights_sha256": path_sha256(self.weights) if self.weights else None, "roi_size": self.roi_size,
                "repeat_channels": self.repeat_channels}

    @torch.no_grad()
    def _features(self, slices: torch.Tensor) -> np.ndarray:
        x = F.interpolate(slices.float(), size=self.roi_size, mode="bilinear", align_corners=False)
        if self.repeat_channels and x.shape[1] == 1:
            x = x.repeat(1, self.repeat_channels, 1, 1)
        out = self.network(x.to(self.device))
        if out.ndim > 2:
            out = out.flatten(2).mean(dim=2)
        return out.float().cpu().numpy()

    def __call__(self, items: Sequence[Mapping]) -> np.ndarray:
        """``[N, F]`` features of slice items (``case_id``, ``image``, ``slice_index``), one volume load per case."""
        rows: list[np.ndarray | None] = [None] * len(items)
        by_case: dict[str, list[int]] = {}
        for row, item in enumerate(items):
            by_case.setdefault(str(item["case_id"]), []).append(row)
        for case_id, case_rows in by_case.items():
            first = items[case_rows[0]]
            volume = torch.as_tensor(self.loader({"case_id": case_id, "image": first["image"]})["image"])
            indices = [int(items[r]["slice_index"]) for r in case_rows]
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                feats = self._features(volume[..., chunk].permute(3, 0, 1, 2))
                for r, f in zip(case_rows[start : start + self.batch_size], feats):
                    rows[r] = f
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)
