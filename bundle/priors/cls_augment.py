"""The augmented image of SAMAug-C (docs/methods.md §3), as a MONAI array transform and its dictionary wrapper.

With ``x`` the image and the SAM prior channels of the same volume (picked by name from ``meta["channel_names"]``,
as :class:`~bundle.priors.transforms.SamPrior` and the prior cache write them), ``mode`` chooses ``x_aug``:

- ``emphasis_min`` (default): ``x_aug = m + (x - m) * (alpha + (1 - alpha) * P)`` with ``P`` the SAMAug-C prior map in
  ``[0, 1]`` (``samaugc_prior``) and ``m`` the minimum of ``x`` over the image, per channel (a slice for a 2D
  task, a volume for a 3D one): pixels inside confident SAM masks keep their intensity, the background moves towards
  the image's darkest value, to ``alpha`` of its distance from it. This is the emphasis on the image min-max scaled
  to ``[0, 1]`` and mapped back (the maximum cancels), so it dims whatever the normalisation: it commutes with any
  intensity map ``a x + b`` with ``a > 0`` (z-scores, HU windows, the training's intensity shift and scale).
- ``emphasis``: ``x_aug = x * (alpha + (1 - alpha) * P)``, the same with ``m = 0``. It dims only an image whose
  minimum is 0 (e.g. a window scaled to ``[0, 1]``, where both emphases agree); on z-scored intensities it pulls
  the background towards 0, the tissue mean (``-1.5 -> -0.75`` with ``alpha = 0.5``), brightening dark tissue.
  Models trained before ``emphasis_min`` existed recorded ``emphasis`` and keep this formula.
- ``add``: ``x_aug = x + P``.
- ``samaug`` (ablation: the segmentation recipe, reported to hurt classification): ``x_aug = x + S + B`` with
  ``S`` / ``B`` the SAMAug segmentation and boundary priors (``sam_seg_prior`` / ``sam_boundary_prior``).
  SAMAug's own ``add`` turns a grey image into the three channels ``[x, x + S, x + B]``; here every image channel
  gets the same ``S + B`` instead, so ``x_aug`` has the raw image's channels and one (shared) backbone can take
  both ``x`` and ``x_aug``, whatever the number of image channels (e.g. four MRI modalities).

In every mode the prior is broadcast over the image channels, and ``x_aug`` has the raw image's shape. With
``concat=True`` the output is the dual-branch network input ``[x, x_aug]`` stacked along channels
(:class:`bundle.networks.DualBranchClassifier` splits it back).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, look_up_option

__all__ = [
    "CLS_AUGMENT_MODES",
    "EMPHASIS_MODES",
    "SAMAUGC_PRIOR",
    "SAMAUG_PRIORS",
    "SamAugCImage",
    "SamAugCImaged",
    "required_priors",
]

CLS_AUGMENT_MODES = ("emphasis_min", "emphasis", "add", "samaug")
"""The first one is the default (docs/classification.md; chosen on the phantoms, docs/comparison_cls.md)."""
EMPHASIS_MODES = ("emphasis", "emphasis_min")
SAMAUGC_PRIOR = "samaugc_prior"
SAMAUG_PRIORS = ("sam_seg_prior", "sam_boundary_prior")


def required_priors(mode: str) -> tuple[str, ...]:
    """Names of the prior channels a ``mode`` reads.

    Args:
        mode: one of :data:`CLS_AUGMENT_MODES`.

    Returns:
        ``("samaugc_prior",)`` for ``emphasis`` / ``emphasis_min`` / ``add``, ``("sam_seg_prior",
        "sam_boundary_prior")`` for ``samaug``.
    """
    mode = look_up_option(mode, CLS_AUGMENT_MODES)
    return SAMAUG_PRIORS if mode == "samaug" else (SAMAUGC_PRIOR,)


def _channel_names(prior: NdarrayOrTensor, names: Sequence[str] | None) -> list[str]:
    if names is None and isinstance(prior, MetaTensor):
        names = prior.meta.get("channel_names")
    if names is None:
        raise ValueError(
            "the prior channels have no names: pass a MetaTensor with meta['channel_names'] (as SamPrior and the "
            "prior cache write it) or give prior_names."
        )
    names = [names] if isinstance(names, str) else [str(n) for n in names]
    if len(names) != prior.shape[0]:
        raise ValueError(f"the prior has {prior.shape[0]} channels but {len(names)} channel names: {names}.")
    return names


class SamAugCImage(Transform):
    """Build the SAMAug-C augmented image ``x_aug`` (or the dual input ``[x, x_aug]``) from an image and its priors.

    Args:
        mode: one of :data:`CLS_AUGMENT_MODES` (see the module docstring for the formulas).
        alpha: ``emphasis`` / ``emphasis_min`` only: the factor the background's (``P = 0``) distance from the
            anchor (0, or the image minimum) is scaled by, in ``[0, 1]``; ``1`` leaves the image unchanged, ``0``
            keeps only the pixels SAM found salient.
        prior_names: names of the prior channels, used when the prior carries no ``meta["channel_names"]``
            (a plain tensor or array); names in the prior's meta take precedence.
        concat: return ``[x, x_aug]`` stacked along channels (``[2C, *spatial]``) instead of ``x_aug``.

    Raises:
        ValueError: unknown ``mode`` (naming the closest valid one) or ``alpha`` outside ``[0, 1]``.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self,
        mode: str = "emphasis_min",
        alpha: float = 0.5,
        prior_names: Sequence[str] | None = None,
        concat: bool = False,
    ) -> None:
        self.mode = look_up_option(mode, CLS_AUGMENT_MODES)
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
        self.alpha = float(alpha)
        self.prior_names = None if prior_names is None else list(prior_names)
        self.concat = bool(concat)

    def _select(self, prior: NdarrayOrTensor, names: list[str], wanted: Sequence[str]) -> list[int]:
        missing = [n for n in wanted if n not in names]
        if missing:
            raise ValueError(
                f"mode={self.mode!r} needs the prior channel(s) {missing}, but the prior holds {names}. Compute them "
                f"with SamPrior(kinds=[..., {', '.join(repr(m) for m in missing)}]) or choose another mode."
            )
        return [names.index(n) for n in wanted]

    def __call__(
        self, img: NdarrayOrTensor, prior: NdarrayOrTensor, prior_names: Sequence[str] | None = None
    ) -> NdarrayOrTensor:
        """Args:
            img: image ``[C, *spatial]`` (2 or 3 spatial dimensions), MetaTensor, tensor or array.
            prior: prior channels ``[K, *spatial]`` of the same volume; for the emphases the SAMAug-C map is
                expected in ``[0, 1]`` (it is used as it is, not clipped).
            prior_names: names of the ``K`` prior channels for this call; default: the prior's
                ``meta["channel_names"]``, else the constructor's ``prior_names``.

        Returns:
            ``x_aug`` ``[C, *spatial]``, or ``[2C, *spatial]`` = ``[x, x_aug]`` with ``concat``; the type, device,
            metadata and affine of ``img``, float (float32 for an integer image).

        Raises:
            ValueError: a prior without channel names, a channel count that differs from the names, a missing prior
                channel (naming it), or spatial shapes that differ.
        """
        if prior_names is None and not (isinstance(prior, MetaTensor) and "channel_names" in prior.meta):
            prior_names = self.prior_names
        names = _channel_names(prior, prior_names)
        index = self._select(prior, names, required_priors(self.mode))
        if tuple(img.shape[1:]) != tuple(prior.shape[1:]):
            raise ValueError(
                f"image {tuple(img.shape)} and prior {tuple(prior.shape)} differ in their spatial shape; both must "
                "be [C, *spatial] / [K, *spatial] of the same volume."
            )
        x = convert_to_tensor(img, track_meta=False)
        if not x.is_floating_point():
            x = x.float()
        p = convert_to_tensor(prior, track_meta=False).to(device=x.device, dtype=x.dtype)
        chosen = p[index]  # [n_required, *spatial]
        if self.mode in EMPHASIS_MODES:
            factor = self.alpha + (1.0 - self.alpha) * chosen
            if self.mode == "emphasis":
                x_aug = x * factor
            else:
                low = x.flatten(1).amin(dim=1).reshape(-1, *([1] * (x.ndim - 1)))  # per channel, over the image
                x_aug = low + (x - low) * factor
        elif self.mode == "add":
            x_aug = x + chosen
        else:
            x_aug = x + chosen.sum(dim=0, keepdim=True)  # S + B, the same for every image channel
        out = torch.cat([x, x_aug], dim=0) if self.concat else x_aug
        out, *_ = convert_to_dst_type(out, img, dtype=out.dtype)
        return out


class SamAugCImaged(MapTransform):
    """Dictionary wrapper of :class:`SamAugCImage`: reads ``{key}`` and ``{key}{prior_postfix}`` (default
    ``image`` and ``image_prior``, what :class:`~bundle.priors.transforms.SamPriord` writes) and writes
    ``{key}{output_postfix}`` (default ``image_aug``).

    The dual-branch input can be made here with ``concat=True`` (then e.g. ``output_postfix="_dual"``), or kept as
    two keys and joined by MONAI's ``ConcatItemsd(keys=["image", "image_aug"], name=..., dim=0)``.

    Args:
        keys: keys of the images.
        prior_postfix: the prior of ``key`` is read from ``key + prior_postfix``.
        output_postfix: the result is written to ``key + output_postfix``.
        mode: see :class:`SamAugCImage`.
        alpha: see :class:`SamAugCImage`.
        prior_names: see :class:`SamAugCImage`.
        concat: see :class:`SamAugCImage`.
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        KeyError: when the prior key of an image key is missing.
    """

    backend = SamAugCImage.backend

    def __init__(
        self,
        keys: KeysCollection,
        prior_postfix: str = "_prior",
        output_postfix: str = "_aug",
        mode: str = "emphasis_min",
        alpha: float = 0.5,
        prior_names: Sequence[str] | None = None,
        concat: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if not output_postfix:
            raise ValueError("output_postfix must be non-empty: the raw image is kept under its own key.")
        self.augment = SamAugCImage(mode=mode, alpha=alpha, prior_names=prior_names, concat=concat)
        self.prior_postfix = prior_postfix
        self.output_postfix = output_postfix

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            prior_key = f"{key}{self.prior_postfix}"
            if prior_key not in d:
                raise KeyError(f"{prior_key!r} not found: SamAugCImaged needs the priors of {key!r} under it.")
            d[f"{key}{self.output_postfix}"] = self.augment(d[key], d[prior_key])
        return d
