"""From a channel-first CT/MRI volume to the ``H x W x 3`` uint8 RGB slices SAM expects (docs/methods.md §0).

A volume is ``[C, H, W, D]`` after ``EnsureChannelFirst`` + ``Orientation("RAS")``; slice ``d`` is ``[..., d]`` and
becomes an ``[H, W, 3]`` image in array order (rows = first spatial axis). Priors are stacked back in the same frame,
so the orientation SAM sees does not matter for the result, only its consistency.

Intensity scaling is fitted once per volume (:meth:`SliceWindow.fit`) and then applied chunk by chunk
(:meth:`SliceWindow.slices`), so a 512 x 512 x 200 CT never needs a full uint8 copy in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from monai.utils import look_up_option

__all__ = ["WINDOW_PRESETS", "SliceWindow", "FittedWindow", "volume_filename"]

# name -> (kind, low, high); kind "hu": fixed intensity window, "percentile": per-volume percentiles,
# "minmax": per-volume min/max (WeakMedSAM's choice, kept as an option)
WINDOW_PRESETS = {
    "ct_soft_tissue": ("hu", -160.0, 240.0),
    "ct_liver": ("hu", -160.0, 240.0),
    "ct_abdomen": ("hu", -125.0, 275.0),
    "mr_percentile": ("percentile", 0.5, 99.5),
    "minmax": ("minmax", None, None),
}


def volume_filename(volume) -> str:
    """The source file of a MONAI MetaTensor, for error messages ('<array>' for plain arrays)."""
    meta = getattr(volume, "meta", None) or {}
    name = meta.get("filename_or_obj", None)
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    return str(name) if name else "<array>"


@dataclass
class FittedWindow:
    """Per-channel ``(low, high)`` intensity bounds for the channels that feed SAM's R, G, B."""

    channels: tuple
    low: np.ndarray
    high: np.ndarray


class SliceWindow:
    """Turn axial slices of a ``[C, H, W, D]`` volume into uint8 RGB images and flag empty slices.

    Args:
        preset: a key of :data:`WINDOW_PRESETS` (CT HU windows, MR percentile or min-max scaling).
        channels: the input channel that feeds SAM (replicated to R, G, B), or three channels used as R, G, B
            (e.g. BraTS FLAIR, T1ce, T2).
        low: overrides the preset's lower bound (HU for CT, percentile for MR).
        high: overrides the preset's upper bound.
        foreground_level: a pixel counts as foreground when its scaled intensity exceeds this fraction of 255.
        min_foreground_fraction: a slice with fewer foreground pixels than this fraction is empty: SAM is not run on
            it and its priors are zero (air above the body, outside the skull).
    """

    def __init__(
        self,
        preset: str = "mr_percentile",
        channels: int | Sequence[int] = 0,
        low: float | None = None,
        high: float | None = None,
        foreground_level: float = 0.05,
        min_foreground_fraction: float = 0.001,
    ) -> None:
        kind, p_low, p_high = look_up_option(preset, WINDOW_PRESETS)
        self.preset, self.kind = preset, kind
        self.low = p_low if low is None else float(low)
        self.high = p_high if high is None else float(high)
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError(f"window low ({self.low}) must be below high ({self.high})")
        chans = (channels,) if isinstance(channels, (int, np.integer)) else tuple(int(c) for c in channels)
        if len(chans) not in (1, 3):
            raise ValueError(f"channels must name 1 channel (replicated to RGB) or 3 (R, G, B), got {chans}")
        self.channels = chans
        self.foreground_level = float(foreground_level)
        self.min_foreground_fraction = float(min_foreground_fraction)

    def signature(self) -> dict:
        """Everything that changes the uint8 slices (part of the prior cache key)."""
        return {
            "preset": self.preset,
            "low": self.low,
            "high": self.high,
            "channels": list(self.channels),
            "foreground_level": self.foreground_level,
            "min_foreground_fraction": self.min_foreground_fraction,
        }

    def _check(self, volume) -> None:
        name = volume_filename(volume)
        if volume.ndim != 4:
            raise ValueError(
                f"{name}: expected a channel-first 3D volume [C, H, W, D], got shape {tuple(volume.shape)}"
            )
        if max(self.channels) >= volume.shape[0]:
            raise ValueError(
                f"{name}: SAM input channels {list(self.channels)} requested but the volume has "
                f"{volume.shape[0]} channel(s)"
            )

    def fit(self, volume: torch.Tensor | np.ndarray) -> FittedWindow:
        """Fit the intensity bounds of one volume (for fixed HU windows there is nothing to fit)."""
        self._check(volume)
        lows, highs = [], []
        for c in self.channels:
            data = torch.as_tensor(volume[c]).detach().float()
            finite = torch.isfinite(data)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise ValueError(f"{volume_filename(volume)}: channel {c} has {bad} non-finite value(s) (NaN or inf)")
            if self.kind == "hu":
                lo, hi = self.low, self.high
            elif self.kind == "minmax":
                lo, hi = float(data.min()), float(data.max())
            else:
                flat = data.flatten()
                if flat.numel() > 2_000_000:  # percentiles of a strided sample: same values to < 0.1 %, far less memory
                    flat = flat[:: flat.numel() // 2_000_000 + 1]
                q = torch.quantile(flat, torch.tensor([self.low / 100.0, self.high / 100.0]))
                lo, hi = float(q[0]), float(q[1])
            lows.append(lo)
            highs.append(hi)
        return FittedWindow(self.channels, np.asarray(lows, np.float32), np.asarray(highs, np.float32))

    def slices(self, volume, fitted: FittedWindow, indices: Sequence[int]) -> np.ndarray:
        """``[n, H, W, 3]`` uint8 RGB images of the axial slices ``indices``."""
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        out = []
        for c, lo, hi in zip(fitted.channels, fitted.low, fitted.high):
            data = torch.as_tensor(volume[c]).detach()[..., idx].float().permute(2, 0, 1)  # [n, H, W]
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
            out.append(((data - lo) * scale).clamp_(0, 255).round_().to(torch.uint8))
        rgb = torch.stack(out * 3 if len(out) == 1 else out, dim=-1)
        return rgb.cpu().numpy()

    def nonempty(self, volume, fitted: FittedWindow) -> np.ndarray:
        """Boolean ``[D]``: slices with enough foreground to be worth running SAM on."""
        level = self.foreground_level * 255.0
        fraction = None
        for c, lo, hi in zip(fitted.channels, fitted.low, fitted.high):
            data = torch.as_tensor(volume[c]).detach().float()
            if not hi > lo:  # constant volume: nothing to segment
                frac = torch.zeros(data.shape[-1])
            else:
                frac = ((data - lo) * (255.0 / (hi - lo)) > level).float().mean(dim=(0, 1))
            fraction = frac if fraction is None else torch.maximum(fraction, frac)
        return (fraction >= max(self.min_foreground_fraction, 1e-12)).cpu().numpy()
