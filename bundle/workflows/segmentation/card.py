"""The model card of a segmentation model (SAMAug, WeakMedSAM's segmentation stage) as ``configs/inference.json``
reads it: the model folder alone says how to preprocess, which network to build, which prior to compute and which
regions come out, so inference runs without the training config or the preset (model-zoo style).

A preset or an override merged after ``inference.json`` may restate a setting of the card (the same value is fine);
a different value is refused (:func:`check_inference_settings`): the network was trained with the card's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from monai.networks.nets import UNet

from bundle.errors import InputError
from bundle.workflows.common import model_card
from bundle.workflows.common.intensity_card import describe_intensity
from bundle.workflows.common.run_settings import first_difference
from bundle.workflows.segmentation.workflow import network_config

__all__ = ["CARD_SETTINGS", "check_inference_settings", "network_from_card", "read_card"]

#: the card's ``config`` ids that define what the network sees and returns: inference may not change them
CARD_SETTINGS = ("image_channel_names", "regions", "prior_mode", "spatial_dims", "pixdim", "prior_scale", "prior_key")


def read_card(model_dir) -> dict:
    """The segmentation model card of ``model_dir`` (checked against its schema and bound to the ``model.pt``).

    Raises:
        MissingInputError: no card (a model trained before cards existed, or the wrong folder).
        InputError: not a valid card, or the card of another kind of model; names the file.
    """
    card = model_card.read_card(model_dir, ("config", "network", "intensity", "prior"), "configs/train_samaug_seg.json")
    kind = model_card.card_kind(card, model_card.card_path(model_dir))
    if kind != "segmentation":
        raise InputError(model_card.card_path(model_dir), f"is the card of a {kind} model, not of a segmentation "
                                                          "network (configs/inference.json)")
    return card


def network_from_card(card: Mapping[str, Any]) -> UNet:
    """The card's MONAI ``UNet`` (random weights; load ``model.pt``); only the allow-listed UNet is ever built."""
    args = network_config(card["network"])
    args.pop("_target_")
    return UNet(**args)


def check_inference_settings(card: Mapping[str, Any], model_dir: str = "", intensity: Any = None, **config) -> bool:
    """True when the inference config's values are the card's; else refuse naming the first that differs.

    Args:
        card: the model card (:func:`read_card`).
        model_dir: the model folder, for the message.
        intensity: the config's intensity transform (compared as :func:`describe_intensity` records it).
        config: values of the ids of :data:`CARD_SETTINGS`.

    Raises:
        InputError: a value differs from the card's (a preset of another dataset merged, or an override).
        TypeError: the config passes other settings than :data:`CARD_SETTINGS` (the config and the list drifted).
    """
    if set(config) != set(CARD_SETTINGS):  # the config names every setting that defines the network's input/output
        raise TypeError(f"check_inference_settings needs exactly {list(CARD_SETTINGS)}, got {sorted(config)}")
    asked = dict(config)
    trained = {k: card["config"][k] for k in asked if k in card["config"]}
    if intensity is not None:
        asked["intensity"], trained["intensity"] = describe_intensity(intensity), card["intensity"]
    for key in asked:
        if key in trained and first_difference(trained[key], asked[key]) is not None:
            raise InputError(model_card.card_path(model_dir) if model_dir else model_card.CARD_NAME,
                             f"the model was trained with {key} {trained[key]!r}; this inference asks for "
                             f"{asked[key]!r} (a preset or override merged after configs/inference.json): the card "
                             f"holds the model's settings, drop the preset or the override")
    return True
