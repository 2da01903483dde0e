"""Label maps <-> overlapping region channels, the target and output format of the SAMAug segmentation networks.

The networks predict one sigmoid channel per *region* (``bundle.data.labels``: BraTS WT = {1, 2, 4},
TC = {1, 4}, ET = {4}; LiTS liver = {1, 2}, tumour = {2}; AbdomenCT-1K one organ each), so regions may overlap.

- :class:`LabelToRegions` turns a label map ``[1, *spatial]`` into ``[R, *spatial]`` binary channels (training and
  evaluation targets).
- :class:`RegionsToLabel` turns region probabilities (or binary masks) ``[R, *spatial]`` back into a label map with
  the dataset's label values, for inference outputs. Each voxel gets the label value whose region membership is the
  most likely under independent per-region probabilities: for label value ``v`` with membership ``m_v[r] = 1`` when
  ``v`` belongs to region ``r`` (background: all zero),

      ``score(v) = sum_r  m_v[r] * log(p_r) + (1 - m_v[r]) * log(1 - p_r)``

  and the label is ``argmax_v score(v)``. For consistent binary predictions this is the exact inverse of
  :class:`LabelToRegions` (BraTS: ET -> 4, TC without ET -> 1, WT without TC -> 2); for inconsistent ones (ET
  predicted outside TC) it picks a label that disagrees with the fewest channels, and with probabilities (what
  the inference config passes) the most probable one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

__all__ = [
    "check_regions",
    "region_membership",
    "LabelToRegions",
    "LabelToRegionsd",
    "RegionsToLabel",
    "RegionsToLabeld",
]


def check_regions(regions: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Validate ``{region name: label values}``: at least one region, each with non-zero integer values.

    Raises:
        ValueError: empty mapping, a region without values, or background (0) inside a region.
    """
    if not isinstance(regions, Mapping) or not regions:
        raise ValueError(f"regions must map region names to label values, e.g. {{'WT': [1, 2, 4]}}, got {regions!r}.")
    out = {}
    for name, values in regions.items():
        values = (values,) if isinstance(values, (int, np.integer)) else tuple(int(v) for v in values)
        if not values:
            raise ValueError(f"region {name!r} lists no label value.")
        if 0 in values:
            raise ValueError(f"region {name!r} contains the background label 0: {list(values)}.")
        out[str(name)] = values
    return out


def region_membership(regions: Mapping[str, Sequence[int]]) -> tuple[list[int], np.ndarray]:
    """Label values (background 0 first, then the regions' values ascending) and their ``[V, R]`` 0/1 membership."""
    regions = check_regions(regions)
    values = [0] + sorted({v for vs in regions.values() for v in vs})
    membership = np.array([[v in vs for vs in regions.values()] for v in values], dtype=np.float32)
    return values, membership


class LabelToRegions(Transform):
    """Label map ``[1, *spatial]`` -> ``[R, *spatial]`` float32, channel r = 1 where the label is in region r.

    Args:
        regions: ``{name: label values}`` in channel order, e.g. ``{"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]}``.

    Raises:
        ValueError: invalid regions, or a label with more than one channel.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, regions: Mapping[str, Sequence[int]]) -> None:
        self.regions = check_regions(regions)

    def __call__(self, label):
        lab = convert_to_tensor(label, track_meta=False)
        if lab.ndim < 2 or lab.shape[0] != 1:
            raise ValueError(f"label must be channel-first with one channel [1, *spatial], got {tuple(lab.shape)}.")
        lab = torch.round(lab[0].float()).long()
        out = torch.stack([torch.isin(lab, torch.tensor(vs, device=lab.device)) for vs in self.regions.values()])
        out, *_ = convert_to_dst_type(out.float(), label, dtype=torch.float32)
        return out


class LabelToRegionsd(MapTransform):
    """Dictionary wrapper of :class:`LabelToRegions`.

    Args:
        keys: label keys.
        regions: see :class:`LabelToRegions`.
        allow_missing_keys: don't raise if a key is missing (e.g. inference without labels).
    """

    backend = LabelToRegions.backend

    def __init__(
        self, keys: KeysCollection, regions: Mapping[str, Sequence[int]], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = LabelToRegions(regions)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class RegionsToLabel(Transform):
    """Region probabilities or masks ``[R, *spatial]`` -> label map ``[1, *spatial]`` with the dataset's values.

    See the module docstring for the rule (most likely label under independent per-region probabilities).

    Args:
        regions: ``{name: label values}`` in channel order, as given to :class:`LabelToRegions`.
        eps: probabilities are clipped to ``[eps, 1 - eps]`` before the logarithm (binary inputs stay decisive).
        dtype: output dtype.

    Raises:
        ValueError: the input does not have one channel per region.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self, regions: Mapping[str, Sequence[int]], eps: float = 1e-4, dtype: torch.dtype = torch.uint8
    ) -> None:
        self.regions = check_regions(regions)
        values, membership = region_membership(self.regions)
        if max(values) > torch.iinfo(torch.uint8).max and dtype == torch.uint8:
            dtype = torch.int16
        self.values = torch.tensor(values)
        self.membership = torch.from_numpy(membership)
        self.eps = float(eps)
        self.dtype = dtype

    def __call__(self, probs):
        p = convert_to_tensor(probs, track_meta=False).float()
        if p.shape[0] != self.membership.shape[1]:
            raise ValueError(
                f"expected {self.membership.shape[1]} region channels {list(self.regions)}, got shape {tuple(p.shape)}."
            )
        p = p.clamp(self.eps, 1 - self.eps)
        log_p, log_q = torch.log(p).flatten(1), torch.log1p(-p).flatten(1)  # [R, N]
        m = self.membership.to(p.device)
        scores = m @ log_p + (1 - m) @ log_q  # [V, N]
        label = self.values.to(p.device)[scores.argmax(dim=0)].reshape(1, *p.shape[1:])
        out, *_ = convert_to_dst_type(label.to(self.dtype), probs, dtype=self.dtype)
        return out


class RegionsToLabeld(MapTransform):
    """Dictionary wrapper of :class:`RegionsToLabel`.

    Args:
        keys: keys of the region probabilities (e.g. ``pred``), replaced by the label map.
        regions: see :class:`RegionsToLabel`.
        eps: see :class:`RegionsToLabel`.
        allow_missing_keys: don't raise if a key is missing.
    """

    backend = RegionsToLabel.backend

    def __init__(
        self,
        keys: KeysCollection,
        regions: Mapping[str, Sequence[int]],
        eps: float = 1e-4,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = RegionsToLabel(regions, eps)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d
