"""The schema of every model card: plain values only, names from allow-lists, checked before any card value is used.

A model folder is what people share and what the MONAI Label app serves, and several card values reach MONAI's
``ConfigParser`` (batch inference rebuilds a segmentation model from ``configs/inference.json`` with the card's values
as overrides). ``ConfigParser`` evaluates strings that start with ``$``, resolves ``@`` references and ``%`` macros
(which read other files) and instantiates dictionaries holding ``_target_``. A card is data, never code, so every
reader validates it here first (:func:`validate_card`):

- everywhere: values are numbers, booleans, null, lists, objects and strings; no string starts with ``$``, ``@`` or
  ``%``; no object key looks like a config directive (``_target_``, ``_requires_``, ``_disabled_``, ...);
- per kind (:data:`CARD_SCHEMAS`): the fields the bundle writes, each with its type, its range or its allow-list (the
  MONAI ``UNet`` of the segmentation trainings, the classifier backbones, prior modes, SAM model types, the two
  intensity transforms, ...); a field the bundle does not write is refused too.

A card that does not fit raises :class:`~bundle.errors.InputError` naming the file and the field
(``models/model_card.json: field config.prior_scale: "$__imp..." is not a number``).

Kinds: ``segmentation`` (SAMAug, WeakMedSAM's segmentation stage), ``classification`` (SAMAug-C), ``sam_mix`` (the
``model_card.json`` of a SAM-Mix folder; ``sam_mix_stored`` is the card inside its ``model.pt``) and
``weak_classifier`` (the card inside WeakMedSAM's ``classifier.pt``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from bundle.data.modalities import MODALITIES
from bundle.errors import InputError

__all__ = ["CARD_SCHEMAS", "MODALITIES", "check_plain", "validate_card"]


#: config directives of MONAI's ConfigParser (``_target_``, ``_requires_``, ``_disabled_``, ``_desc_``, ``_mode_``)
_DIRECTIVE = re.compile(r"^_\w*_$")
#: characters that make ConfigParser treat a string as an expression, a reference or a macro
_CONFIG_SIGILS = ("$", "@", "%")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_ .+()/:,'-]{0,127}$")
_IDENT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class _Refused(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_plain(card: Any, path: str | os.PathLike) -> None:
    """Refuse anything but plain JSON values in a card: strings read as config expressions, references or macros,
    and config directive keys (``_target_`` ...), at any depth.

    Raises:
        InputError: names ``path`` and the field.
    """
    try:
        _plain(card, "")
    except _Refused as refused:
        raise InputError(path, f"model card field {refused.where or '<card>'}: {refused.problem}") from None


def _plain(value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, int, float)):
        return
    if isinstance(value, str):
        if value.startswith(_CONFIG_SIGILS):
            raise _Refused(where, f"{_show(value)} starts with {value[0]!r}, which MONAI's ConfigParser would "
                                  "evaluate; a model card holds plain values only")
        if "\x00" in value or "\n" in value or len(value) > 4096:
            raise _Refused(where, f"{_show(value)} is not a plain one-line value")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _plain(item, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            inner = f"{where}.{key}" if where else str(key)
            if not isinstance(key, str):
                raise _Refused(inner, "object keys must be strings")
            if _DIRECTIVE.match(key) or key.startswith(_CONFIG_SIGILS) or "#" in key:
                raise _Refused(inner, f"key {key!r} is a config directive or id; a model card names no code")
            _plain(item, inner)
        return
    raise _Refused(where, f"a {type(value).__name__} is not a plain JSON value")


# ---- validators: each is called with (value, where) and raises _Refused --------------------------------------------

Validator = Callable[[Any, str], None]


def number(low: float | None = None, high: float | None = None, finite: bool = True) -> Validator:
    def check(value, where):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Refused(where, f"{_show(value)} is not a number")
        if finite and not math.isfinite(value):
            raise _Refused(where, f"{value} is not a finite number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise _Refused(where, f"{value} is outside [{low}, {high}]")
    return check


def integer(low: int | None = None, high: int | None = None) -> Validator:
    def check(value, where):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Refused(where, f"{_show(value)} is not an integer")
        number(low, high)(value, where)
    return check


def boolean(value, where):
    if not isinstance(value, bool):
        raise _Refused(where, f"{_show(value)} is not true or false")


def one_of(*allowed) -> Validator:
    def check(value, where):
        if isinstance(value, bool) or value not in allowed:
            raise _Refused(where, f"{_show(value)} is not one of {list(allowed)}")
    return check


def text(pattern: re.Pattern = _NAME, what: str = "a name") -> Validator:
    def check(value, where):
        if not isinstance(value, str) or not pattern.match(value):
            raise _Refused(where, f"{_show(value)} is not {what} (pattern {pattern.pattern})")
    return check


def path_text(value, where):
    if not isinstance(value, str) or not value:
        raise _Refused(where, f"{_show(value)} is not a path")
    _plain(value, where)


def optional(inner: Validator) -> Validator:
    def check(value, where):
        if value is not None:
            inner(value, where)
    return check


def either(*options: Validator) -> Validator:
    def check(value, where):
        problems = []
        for option in options:
            try:
                option(value, where)
                return
            except _Refused as refused:
                problems.append(refused.problem)
        raise _Refused(where, " and ".join(dict.fromkeys(problems)))
    return check


def list_of(item: Validator, min_len: int = 0, max_len: int = 1024) -> Validator:
    def check(value, where):
        if not isinstance(value, list):
            raise _Refused(where, f"{_show(value)} is not a list")
        if not min_len <= len(value) <= max_len:
            raise _Refused(where, f"has {len(value)} items, expected {min_len} to {max_len}")
        for i, v in enumerate(value):
            item(v, f"{where}[{i}]")
    return check


def record(required: Mapping[str, Validator], optional_fields: Mapping[str, Validator] | None = None) -> Validator:
    """An object with exactly these fields (``required`` present, ``optional_fields`` may be)."""
    optional_fields = dict(optional_fields or {})

    def check(value, where):
        if not isinstance(value, Mapping):
            raise _Refused(where or "<card>", f"{_show(value)} is not an object")
        prefix = f"{where}." if where else ""
        for key in value:
            if key not in required and key not in optional_fields:
                known = sorted({*required, *optional_fields})
                raise _Refused(f"{prefix}{key}", f"is not a field of this card (fields: {', '.join(known)})")
        for key, inner in required.items():
            if key not in value:
                raise _Refused(f"{prefix}{key}", "is missing")
            inner(value[key], f"{prefix}{key}")
        for key, inner in optional_fields.items():
            if key in value:
                inner(value[key], f"{prefix}{key}")
    return check


def mapping(value_check: Validator, key: re.Pattern = _IDENT) -> Validator:
    """An object with free keys (matching ``key``) whose values all pass ``value_check``."""
    def check(value, where):
        if not isinstance(value, Mapping):
            raise _Refused(where, f"{_show(value)} is not an object")
        for k, v in value.items():
            if not isinstance(k, str) or not key.match(k):
                raise _Refused(f"{where}.{k}", f"key {k!r} is not a plain name")
            value_check(v, f"{where}.{k}")
    return check


def scalar(value, where):
    """A number, boolean, null or a plain name."""
    if value is None or isinstance(value, (bool, int, float)):
        return
    text(_NAME, "a plain name")(value, where)


def plain_any(value, where):
    """Any plain value (the plain-value rules of :func:`check_plain` are checked for every card anyway)."""
    _plain(value, where)


def plain_value(value, where):
    """Any plain value (nested lists / objects of scalars)."""
    if isinstance(value, list):
        list_of(plain_value)(value, where)
    elif isinstance(value, Mapping):
        mapping(plain_value)(value, where)
    else:
        scalar(value, where)


# ---- the card kinds -------------------------------------------------------------------------------------------------

_POSITIVE = integer(1)
_SIZE = list_of(_POSITIVE, 1, 3)
_NAMES = list_of(text(), 1, 64)
_HEX = text(_HEX64, "a sha256")


def _intensity(value, where):
    record({"name": one_of("NormalizeIntensityd", "ScaleIntensityRanged"), "keys": list_of(text(_IDENT), 1, 8),
            "args": mapping(either(boolean, number(), one_of(None)))})(value, where)
    args = {"NormalizeIntensityd": ("nonzero", "channel_wise"),
            "ScaleIntensityRanged": ("a_min", "a_max", "b_min", "b_max", "clip")}[value["name"]]
    unknown = sorted(set(value["args"]) - set(args))
    if unknown:
        raise _Refused(f"{where}.args.{unknown[0]}", f"is not an argument of {value['name']} ({', '.join(args)})")


def _prior(value, where):
    """A ``prior`` record: whether the model reads priors, its cache folder, and the fields of
    :class:`~bundle.priors.settings.PriorSettings` (which checks them: one home for the prior settings)."""
    from bundle.priors.settings import PriorSettings, PriorSettingsError

    if not isinstance(value, Mapping):
        raise _Refused(where, f"{_show(value)} is not an object")
    boolean(value.get("use_priors"), f"{where}.use_priors")
    optional(path_text)(value.get("prior_cache_dir"), f"{where}.prior_cache_dir")
    try:
        PriorSettings.from_card(value)
    except PriorSettingsError as error:
        raise _Refused(f"{where}.{error.field}", error.problem) from None


@lru_cache(maxsize=1)
def _schemas() -> dict[str, Validator]:
    # imported here: the allow-lists live with the code that uses them (one home for each fact), and some of those
    # modules import the model card module
    from bundle.data.labels import DATASETS, DATASET_NAMES
    from bundle.data.tasks import TASK_NAMES
    from bundle.networks.dilated_resnet import OUTPUT_STRIDES
    from bundle.networks.dual_branch import BACKBONES, BRANCH_MODES
    from bundle.priors.cls_augment import CLS_AUGMENT_MODES
    from bundle.sam.factory import FALLBACK
    from bundle.sam.loading import SAM_MODELS
    from bundle.sam.trainable import GUIDANCE_MODES, MULTIMASK_MODES
    from bundle.workflows.common.options import ENTROPY_MODES, INFER_MODES, PRIOR_MODES, SAM_MIX_METHODS, SPATIAL_DIMS

    sam_types = one_of(*SAM_MODELS, FALLBACK)
    backbone_kwargs = mapping(either(scalar, list_of(scalar, 0, 8)))
    layer = either(text(_IDENT, "a layer name"), list_of(either(text(_IDENT, "a layer name"), mapping(scalar)), 1, 2))
    unet = record({"name": one_of("UNet"), "spatial_dims": one_of(*SPATIAL_DIMS), "in_channels": _POSITIVE,
                   "out_channels": _POSITIVE, "channels": list_of(_POSITIVE, 2, 8),
                   "strides": list_of(either(_POSITIVE, _SIZE), 1, 7),
                   "kernel_size": either(_POSITIVE, _SIZE), "up_kernel_size": either(_POSITIVE, _SIZE),
                   "num_res_units": integer(0, 8), "act": layer, "norm": layer, "dropout": number(0, 1),
                   "bias": boolean, "adn_ordering": text(re.compile(r"^[NDA]{1,3}$"), "N, D, A in some order")})
    prior = _prior
    binding = {"card_version": one_of(CARD_SCHEMA_VERSION), "weights_sha256": _HEX, "card_sha256": _HEX,
               "modality": one_of(*MODALITIES)}
    dataset = one_of(*DATASETS, *DATASET_NAMES, None)
    best = {"best_metric": number(finite=False), "best_epoch": integer(0)}
    segmentation = record({
        **binding, **best, "kind": one_of("segmentation"), "method": text(), "dataset_name": dataset,
        "config": record({
            "image_channel_names": _NAMES, "regions": mapping(list_of(integer(0, 255), 1, 64), _NAME),
            "prior_mode": one_of(*PRIOR_MODES), "infer_mode": one_of(*INFER_MODES),
            "entropy": one_of(*ENTROPY_MODES), "prior_scale": number(), "spatial_dims": one_of(*SPATIAL_DIMS),
            "pixdim": list_of(number(0), 2, 3), "patch_size": _SIZE, "sw_batch_size": _POSITIVE,
            "sw_overlap": number(0, 0.99), "prior_key": text(_IDENT)}),
        "input_channel_names": _NAMES, "network": unet, "intensity": _intensity, "prior": prior})
    classifier_net = {"backbone": one_of(*BACKBONES), "spatial_dims": one_of(*SPATIAL_DIMS), "in_channels": _POSITIVE,
                      "backbone_kwargs": backbone_kwargs}
    classification = record({
        **binding, **best, "kind": one_of("classification"), "task": one_of(*TASK_NAMES),
        "network": record({**classifier_net, "num_classes": _POSITIVE, "shared_backbone": boolean,
                           "branches": one_of(*BRANCH_MODES)}),
        "roi_size": _SIZE, "cls_aug_mode": one_of(*CLS_AUGMENT_MODES), "alpha": number(0, 1),
        "fusion_weight": number(0, 1), "use_priors": boolean, "image_channel_names": _NAMES, "class_names": _NAMES,
        "intensity": _intensity, "prior_key": text(_IDENT), "prior": prior})
    settings = mapping(scalar)
    mix_fields = {
        "roi_size": _SIZE, "image_channel_names": _NAMES, "intensity": _intensity, "task": one_of(*TASK_NAMES),
        "dataset": dataset, "organ": text(), "organ_values": list_of(integer(0, 255), 1, 64),
        "num_labelled": integer(0), "central_fraction": number(0, 1), "method": one_of(*SAM_MIX_METHODS),
        "labelled_slices": list_of(record({"case_id": text(), "slice_index": integer(0)}), 0, 100000),
        "training": settings}
    mix_optional = {
        "sam": record({"model_type": sam_types, "checkpoint": optional(path_text), "checkpoint_sha256": optional(_HEX),
                       "lora_rank": integer(0), "lora_alpha": optional(number()),
                       "multimask": one_of(*MULTIMASK_MODES), "guidance": one_of(*GUIDANCE_MODES),
                       "guidance_weight": number()}),
        "classifier": record({"backbone": one_of(*BACKBONES), "backbone_kwargs": backbone_kwargs,
                              "cam_threshold": number(0, 1), "dense_guidance": boolean},
                             {"output_stride": one_of(*OUTPUT_STRIDES)}),  # missing: as MONAI builds the backbone
        "unet": record({"in_channels": _POSITIVE, "channels": list_of(_POSITIVE, 2, 8),
                        "strides": list_of(_POSITIVE, 1, 7), "num_res_units": integer(0, 8)}),
        "modality": one_of(*MODALITIES)}
    sam_mix_stored = record(mix_fields, mix_optional)
    sam_mix = record({**mix_fields, **binding, "kind": one_of("sam_mix")}, mix_optional)
    weak_classifier = record(
        {"roi_size": _SIZE, "image_channel_names": _NAMES, "intensity": _intensity, "task": one_of(*TASK_NAMES),
         "class_names": _NAMES, "network": either(
             record({**classifier_net, "num_classes": _POSITIVE, "num_subclasses": _POSITIVE},
                    {"kind": one_of("resnet")}),
             record({"kind": one_of("sam_frozen"), "embedding_channels": _POSITIVE, "block_channels": integer(0),
                     "num_classes": _POSITIVE, "num_subclasses": _POSITIVE}),
             record({"kind": one_of("sam_lora"), "sam_model_type": one_of(*SAM_MODELS), "lora_rank": _POSITIVE,
                     "block_channels": integer(0), "num_classes": _POSITIVE, "num_subclasses": _POSITIVE})),
         "training": settings},
        # what the features and subclasses were made from (the user's feature network and its weights file among
        # them): recorded for the resume comparison, never used to build anything, so any plain value
        {"seed": integer(), "feature_extractor": plain_any, "validation": mapping(scalar),
         "modality": one_of(*MODALITIES), "subclasses": plain_any})
    return {"segmentation": segmentation, "classification": classification, "sam_mix": sam_mix,
            "sam_mix_stored": sam_mix_stored, "weak_classifier": weak_classifier}


CARD_SCHEMA_VERSION = 2
"""The card version this schema reads: version 2 cards are bound to their weights (``weights_sha256``,
``card_sha256``) and record the modality."""


class _Schemas(Mapping):
    """:data:`CARD_SCHEMAS`, built on first use."""

    def __getitem__(self, kind):
        return _schemas()[kind]

    def __iter__(self):
        return iter(("segmentation", "classification", "sam_mix", "sam_mix_stored", "weak_classifier"))

    def __len__(self):
        return 5


CARD_SCHEMAS: Mapping[str, Validator] = _Schemas()
"""kind -> validator of a whole card of that kind."""


def validate_card(card: Any, kind: str, path: str | os.PathLike) -> dict:
    """Check ``card`` against the plain-value rules and the schema of ``kind``; returns it.

    Raises:
        InputError: names ``path`` and the first field that does not fit.
    """
    try:
        _plain(card, "")
        CARD_SCHEMAS[kind](card, "")
    except _Refused as refused:
        raise InputError(path, f"model card field {refused.where or '<card>'}: {refused.problem}") from None
    return dict(card)
