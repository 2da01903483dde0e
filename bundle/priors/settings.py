"""Every setting that changes a SAM prior, in one place: :class:`PriorSettings`.

``configs/sam_priors.json`` holds one block of these (``priors``, a ``_target_`` of this class); the model cards
record them (:meth:`PriorSettings.to_card`) and inference rebuilds the same prior from a card
(:meth:`PriorSettings.from_card`), so it reads the same prior-cache partition (:meth:`PriorSettings.signature`).
Overrides address one field, e.g. ``--priors#sam_model_type fallback`` or ``--priors#prior_kinds "['samaugc_prior']"``.

The field names are the model cards' names since cards existed, so every card written before this class still reads.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bundle.priors.maps import COMBINE_MODES, SCORE_KEYS
from bundle.priors.transforms import PRIOR_KINDS, SAMAUG_KINDS, SamPrior
from bundle.sam.engine import AUTOCAST_DTYPES
from bundle.sam.factory import FALLBACK, PROMPT_MODES, make_engine, resolve_prompt_mode
from bundle.sam.loading import SAM_MODELS
from bundle.sam.slices import WINDOW_PRESETS, SliceWindow

__all__ = ["PriorSettings", "PriorSettingsError"]

#: fields a card's ``prior`` record holds beside the settings: whether the model reads priors, and where it cached them
_CARD_EXTRAS = ("use_priors", "prior_cache_dir")
#: fields a card may lack: cards written before SAM adapters existed have no ``sam_adapter``
_CARD_OPTIONAL = ("sam_adapter",)
#: the arguments a ``sam_window`` may hold: those of SliceWindow
_WINDOW_ARGS = tuple(inspect.signature(SliceWindow).parameters)
_WINDOW_DEFAULT_PRESET = inspect.signature(SliceWindow).parameters["preset"].default


class PriorSettingsError(ValueError):
    """A prior setting with a value the bundle cannot use; ``field`` names it."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"priors#{field_name}: {problem}")
        self.field, self.problem = field_name, problem


def _one_of(name: str, value: Any, allowed: Sequence[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise PriorSettingsError(name, f"{value!r} is not one of {', '.join(map(str, allowed))}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PriorSettingsError(name, f"{value!r} is not a positive integer")


def _optional_path(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise PriorSettingsError(name, f"{value!r} is not a file path or null")


def _mapping(name: str, value: Any) -> None:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise PriorSettingsError(name, f"{value!r} is not an object of named arguments")


@dataclass(frozen=True)
class PriorSettings:
    """The SAM settings of a prior: which model, which prompts, how slices become SAM input, which maps come out.

    Args:
        prior_kinds: prior channels, in order (:data:`~bundle.priors.transforms.PRIOR_KINDS`): ``sam_seg_prior``
            and ``sam_boundary_prior`` (SAMAug), ``samaugc_prior`` (SAMAug-C). The training configs set them from
            their method options (``prior_mode``, ``cls_aug_mode``).
        sam_model_type: a SAM type of :data:`bundle.sam.loading.SAM_MODELS` (``lite_medsam``, ``vit_b``, ...) or
            ``fallback`` for the weight-free region-proposal generator (its priors are not SAM priors, and it says so).
        sam_checkpoint: SAM weights; ``None`` or ``""``: the weights an installed package ships (LiteMedSAM). The
            other types need a checkpoint (``large_files.yml``).
        sam_adapter: a SAM adapter trained on the checkpoint (:mod:`bundle.sam.adapter`), applied when the model
            loads; its sha256 joins the cache key.
        sam_prompt_mode: ``points`` (Meta's point grid, :class:`bundle.sam.automatic.SamAutomaticMasks`), ``boxes``
            (:class:`bundle.sam.box_grid.SamBoxGridMasks`) or ``auto`` (what the model was trained on: boxes for
            LiteMedSAM and MedSAM, points for SAM ViT-B/L/H).
        sam_batch_size: slices per image-encoder batch.
        sam_autocast: ``none`` / ``bf16`` / ``fp16`` / ``auto`` (:func:`bundle.sam.engine.resolve_autocast`).
        amg: arguments of :class:`~bundle.sam.automatic.SamAutomaticMasks` (points_per_side, thresholds ...).
        box_grid: arguments of :class:`~bundle.sam.box_grid.SamBoxGridMasks` (box_sizes, box_stride ...).
        fallback: arguments of :class:`~bundle.sam.fallback.RegionProposalMasks`.
        sam_window: how a slice becomes SAM's uint8 RGB input: arguments of :class:`~bundle.sam.slices.SliceWindow`
            (``preset``, ``channels``, ``low``, ``high``, ``foreground_level``); the dataset presets set it.
        slices_per_batch: slices handed to the generator at once (memory vs. batching).
        samaugc_score: the mask score ``samaugc_prior`` sums (``stability_score`` or ``predicted_iou``).
        samaugc_combine: ``sum`` or ``max`` over overlapping masks for ``samaugc_prior``.

    The defaults are the bundle's (the ``priors`` block of ``configs/sam_priors.json`` shows them, and a test keeps
    the two equal).

    Raises:
        PriorSettingsError: a value the bundle cannot use; names the field (checked when the settings are built,
            before any SAM work).
    """

    prior_kinds: Sequence[str] = SAMAUG_KINDS
    sam_model_type: str = "lite_medsam"
    sam_checkpoint: str | None = None
    sam_adapter: str | None = None
    sam_prompt_mode: str = "auto"
    sam_batch_size: int = 4
    sam_autocast: str = "auto"
    amg: Mapping[str, Any] = field(default_factory=lambda: {
        "points_per_side": 32, "points_per_batch": 64, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.95,
        "box_nms_thresh": 0.5})
    box_grid: Mapping[str, Any] = field(default_factory=lambda: {
        "box_sizes": [0.5, 0.25], "box_stride": 0.5, "min_box_foreground": 0.5, "refine_rounds": 1,
        "stability_score_thresh": 0.7, "box_nms_thresh": 0.5, "points_per_batch": 64})
    fallback: Mapping[str, Any] = field(default_factory=dict)
    sam_window: Mapping[str, Any] = field(default_factory=lambda: {"preset": "mr_percentile", "channels": 0})
    slices_per_batch: int = 8
    samaugc_score: str = "stability_score"
    samaugc_combine: str = "sum"

    def __post_init__(self) -> None:
        kinds = self.prior_kinds
        if isinstance(kinds, str) or not isinstance(kinds, Sequence) or len(kinds) > len(PRIOR_KINDS):
            raise PriorSettingsError("prior_kinds", f"{kinds!r} is not a list of prior kinds")
        for kind in kinds:
            _one_of("prior_kinds", kind, PRIOR_KINDS)
        _one_of("sam_model_type", self.sam_model_type, (*SAM_MODELS, FALLBACK))
        _optional_path("sam_checkpoint", self.sam_checkpoint)
        _optional_path("sam_adapter", self.sam_adapter)
        _one_of("sam_prompt_mode", self.sam_prompt_mode, PROMPT_MODES)
        _positive_int("sam_batch_size", self.sam_batch_size)
        _one_of("sam_autocast", self.sam_autocast, AUTOCAST_DTYPES)
        for name in ("amg", "box_grid", "fallback", "sam_window"):
            _mapping(name, getattr(self, name))
        _one_of("sam_window", self.sam_window.get("preset", _WINDOW_DEFAULT_PRESET), tuple(WINDOW_PRESETS))
        unknown = sorted(set(self.sam_window) - set(_WINDOW_ARGS))
        if unknown:
            raise PriorSettingsError("sam_window", f"{unknown[0]!r} is not an argument of SliceWindow "
                                                   f"({', '.join(_WINDOW_ARGS)})")
        _positive_int("slices_per_batch", self.slices_per_batch)
        _one_of("samaugc_score", self.samaugc_score, SCORE_KEYS)
        _one_of("samaugc_combine", self.samaugc_combine, COMBINE_MODES)
        if self.sam_model_type == FALLBACK and self.sam_adapter:
            raise PriorSettingsError("sam_adapter", f"sam_model_type 'fallback' is not a SAM: it cannot use the SAM "
                                                    f"adapter {self.sam_adapter} (set it to null, or a SAM type)")
        # plain, immutable-by-convention copies: a config's or a card's dicts are never shared with the caller
        object.__setattr__(self, "prior_kinds", tuple(kinds))
        for name in ("amg", "box_grid", "fallback", "sam_window"):
            object.__setattr__(self, name, dict(getattr(self, name)))

    # ---- building ----------------------------------------------------------------------------------------------
    def engine(self, device: str | torch.device | None = None):
        """The :class:`~bundle.sam.engine.SamEngine` of these settings (model loaded on first use); WeakMedSAM's
        prompt affinity and features use it directly."""
        return make_engine(self.sam_model_type, self.sam_checkpoint, device, self.sam_batch_size, self.sam_autocast,
                           self.sam_adapter)

    def mask_generator(self, device: str | torch.device | None = None):
        """The mask generator that feeds every prior: the box or point grid over SAM, or the weight-free fallback.

        SAM is not built here: the engine holds the model's :class:`~bundle.sam.loading.SamInfo` and loads it on
        first use, so a run whose priors are all cached never pays for SAM.

        Raises:
            FileNotFoundError: the model type needs a checkpoint and none exists where it was given, or the adapter
                does not exist.
            ValueError: the adapter does not fit the model.
        """
        if self.sam_model_type == FALLBACK:
            from bundle.sam.fallback import RegionProposalMasks

            return RegionProposalMasks(**self.fallback)
        engine = self.engine(device)
        if resolve_prompt_mode(self.sam_prompt_mode, engine.info.prompts) == "boxes":
            from bundle.sam.box_grid import SamBoxGridMasks

            return SamBoxGridMasks(engine, **self.box_grid)
        from bundle.sam.automatic import SamAutomaticMasks

        return SamAutomaticMasks(engine, **self.amg)

    def build(self, device: str | torch.device | None = None, generator: Any = None) -> SamPrior:
        """The :class:`~bundle.priors.transforms.SamPrior` transform (``generator``: one already built from these
        settings, shared with a description of the run)."""
        return SamPrior(generator=generator if generator is not None else self.mask_generator(device),
                        window=self.sam_window, kinds=self.prior_kinds, slices_per_batch=self.slices_per_batch,
                        samaugc_score=self.samaugc_score, samaugc_combine=self.samaugc_combine)

    def signature(self, device: str | torch.device | None = None) -> dict:
        """The prior cache key of these settings on ``device`` (``auto`` autocast depends on it): the
        :meth:`SamPrior.signature` of :meth:`build`, which builds the generator, not SAM."""
        return self.build(device).signature()

    # ---- model cards and configs -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The settings as plain JSON values, field by field."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_card(self, use_priors: bool = True, prior_cache_dir: str | None = None) -> dict:
        """A model card's ``prior`` record: the settings, whether the model reads priors, and its cache folder."""
        return {"use_priors": bool(use_priors), **self.to_dict(), "prior_cache_dir": prior_cache_dir}

    def to_config(self) -> dict:
        """The ``priors`` block of ``configs/sam_priors.json`` that rebuilds these settings (a config override)."""
        return {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", **self.to_dict()}

    @classmethod
    def from_card(cls, record: Mapping[str, Any], **asked: Any) -> PriorSettings:
        """The settings of a model card's ``prior`` record (read as plain values; nothing is evaluated).

        ``asked``: settings a config restates (a preset's ``priors#sam_window`` merged after an inference config);
        each must be the card's, since the model was trained on priors made with the card's settings.

        Raises:
            PriorSettingsError: a field missing, unknown, with a value the bundle cannot use, or asked otherwise
                than the card records.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        for key in record:
            if key not in names and key not in _CARD_EXTRAS:
                raise PriorSettingsError(str(key), "is not a prior setting")
        missing = [n for n in names if n not in record and n not in _CARD_OPTIONAL]
        if missing:
            raise PriorSettingsError(missing[0], "is missing")
        settings = cls(**{n: record[n] for n in names if n in record})
        for name, value in asked.items():
            if name not in names:
                raise PriorSettingsError(name, "is not a prior setting")
            trained = getattr(settings, name)
            if _plain(value) != _plain(trained):
                raise PriorSettingsError(name, f"the model was trained with {_plain(trained)!r}; this run asks for "
                                               f"{_plain(value)!r} (a preset or an override): a model runs with the "
                                               "prior settings of its training, drop the preset or the override")
        return settings


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
