"""Volume-level SAM prior transforms (MONAI array + dictionary pair).

:class:`SamPrior` turns a channel-first volume ``[C, H, W, D]`` into prior volumes ``[K, H, W, D]``, one axial slice
at a time: slices are windowed to uint8 RGB (:class:`~bundle.sam.slices.SliceWindow`), empty slices are skipped
(zero priors), the others go to a mask generator in batches (SAM's automatic masks, or the weight-free fallback),
and each slice's mask records become the requested prior maps. Only ``slices_per_batch`` slices are in flight at
once, so embeddings and masks of a whole volume are never held together.
"""

from __future__ import annotations

from typing import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, look_up_option

from bundle.priors.maps import COMBINE_MODES, SCORE_KEYS, samaug_prior_maps, samaugc_prior_map
from bundle.sam.slices import SliceWindow

__all__ = ["PRIOR_KINDS", "SAMAUG_KINDS", "SamPrior", "SamPriord"]

SAMAUG_KINDS = ("sam_seg_prior", "sam_boundary_prior")
PRIOR_KINDS = ("sam_seg_prior", "sam_boundary_prior", "samaugc_prior")


def _as_window(window) -> SliceWindow:
    if isinstance(window, SliceWindow):
        return window
    if isinstance(window, Mapping):
        return SliceWindow(**window)
    if isinstance(window, str):
        return SliceWindow(preset=window)
    raise TypeError(f"window must be a SliceWindow, a preset name or a dict of SliceWindow arguments, got {window!r}")


class SamPrior(Transform):
    """Compute SAM prior volumes for a channel-first volume.

    Args:
        generator: a mask generator (``generate_batch`` + ``signature``; see ``docs/design.md``), e.g.
            :class:`bundle.sam.automatic.SamAutomaticMasks` or :class:`bundle.sam.fallback.RegionProposalMasks`.
        window: how slices become SAM input: a :class:`SliceWindow`, a preset name, or a dict of its arguments.
        kinds: prior channels to produce, in order: ``sam_seg_prior`` (SAMAug: sum of stability scores),
            ``sam_boundary_prior`` (SAMAug: thick mask boundaries), ``samaugc_prior`` (SAMAug-C map in [0, 1]).
        slices_per_batch: slices handed to the generator at once (memory vs. batching efficiency).
        samaugc_score: score field used by ``samaugc_prior`` (``stability_score`` or ``predicted_iou``).
        samaugc_combine: ``sum`` or ``max`` over overlapping masks for ``samaugc_prior``.

    Returns:
        ``[K, H, W, D]`` float32 MetaTensor with the input's affine and metadata; ``meta["channel_names"]`` lists
        the kinds and ``meta["sam_prior_slices"]`` how many slices were sent to the generator.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        generator,
        window: SliceWindow | Mapping | str = "mr_percentile",
        kinds: Sequence[str] = SAMAUG_KINDS,
        slices_per_batch: int = 8,
        samaugc_score: str = "stability_score",
        samaugc_combine: str = "sum",
    ) -> None:
        self.generator = generator
        self.window = _as_window(window)
        self.kinds = tuple(look_up_option(k, PRIOR_KINDS) for k in kinds)
        if not self.kinds:
            raise ValueError("kinds must name at least one prior")
        if slices_per_batch < 1:
            raise ValueError(f"slices_per_batch must be >= 1, got {slices_per_batch}")
        self.slices_per_batch = int(slices_per_batch)
        # checked here, before any slice is computed (they are part of the cache signature)
        self.samaugc_score = look_up_option(samaugc_score, SCORE_KEYS)
        self.samaugc_combine = look_up_option(samaugc_combine, COMBINE_MODES)

    def signature(self) -> dict:
        """Everything that determines the output (the prior cache key)."""
        sig = {"generator": self.generator.signature(), "window": self.window.signature(), "kinds": list(self.kinds)}
        if "samaugc_prior" in self.kinds:
            sig["samaugc"] = {"score": self.samaugc_score, "combine": self.samaugc_combine}
        return sig

    def _slice_maps(self, records: list, shape: tuple) -> list[np.ndarray]:
        maps = {}
        if "sam_seg_prior" in self.kinds or "sam_boundary_prior" in self.kinds:
            maps["sam_seg_prior"], maps["sam_boundary_prior"] = samaug_prior_maps(records, shape)
        if "samaugc_prior" in self.kinds:
            maps["samaugc_prior"] = samaugc_prior_map(records, shape, self.samaugc_score, self.samaugc_combine)
        return [maps[k] for k in self.kinds]

    def __call__(self, img, progress: Callable[[int], object] | None = None) -> MetaTensor:
        """Args:
        img: ``[C, H, W, D]`` volume (MetaTensor, tensor or array).
        progress: optional callback given the number of slices done after each batch (e.g. ``tqdm.update``).
        """
        fitted = self.window.fit(img)
        keep = self.window.nonempty(img, fitted)
        h, w, depth = (int(s) for s in img.shape[1:])
        out = np.zeros((len(self.kinds), h, w, depth), dtype=np.float32)
        todo = np.flatnonzero(keep)
        if progress is not None and depth > len(todo):
            progress(depth - len(todo))  # empty slices are done at once
        for start in range(0, len(todo), self.slices_per_batch):
            chunk = todo[start : start + self.slices_per_batch]
            rgb = self.window.slices(img, fitted, chunk)
            for d, records in zip(chunk, self.generator.generate_batch(rgb)):
                for k, prior_map in enumerate(self._slice_maps(records, (h, w))):
                    out[k, :, :, d] = prior_map
            if progress is not None:
                progress(len(chunk))
        # the affine is passed on its own below; keeping meta["affine"] too makes MetaTensor warn on every volume
        meta = {k: v for k, v in img.meta.items() if k != "affine"} if isinstance(img, MetaTensor) else {}
        meta["channel_names"] = list(self.kinds)
        meta["sam_prior_slices"] = int(len(todo))
        affine = img.affine if isinstance(img, MetaTensor) else torch.eye(4, dtype=torch.float64)
        return MetaTensor(torch.from_numpy(out), affine=affine, meta=meta)


class SamPriord(MapTransform):
    """Dictionary wrapper of :class:`SamPrior`: writes ``{key}{output_postfix}`` (default ``image_prior``).

    Args:
        keys: keys of the volumes to compute priors for.
        output_postfix: the prior is stored under ``key + output_postfix``.
        allow_missing_keys: don't raise if a key is missing.
        kwargs: :class:`SamPrior` arguments (``generator``, ``window``, ``kinds`` ...).
    """

    backend = SamPrior.backend

    def __init__(self, keys: KeysCollection, output_postfix: str = "_prior", allow_missing_keys: bool = False,
                 **kwargs) -> None:
        super().__init__(keys, allow_missing_keys)
        self.prior = SamPrior(**kwargs)
        self.output_postfix = output_postfix

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}{self.output_postfix}"] = self.prior(d[key])
        return d
