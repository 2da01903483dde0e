"""The model card of a SAMAug-C model: everything evaluation and inference need, next to the best weights.

Training writes ``model_card.json`` beside ``model.pt`` each time a new best model is saved (:class:`CardBestModelSaver`),
atomically, with the fusion weight chosen at that validation. :func:`network_from_card` rebuilds the
classifier and :meth:`bundle.priors.settings.PriorSettings.from_card` the SAM prior settings, so
``configs/inference_cls.json`` needs only the model folder and the inputs; the prior transform is built with the same
settings as in training, so it reads the same prior-cache partition (the signature is the same).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bundle.errors import InputError
from bundle.networks.dual_branch import DualBranchClassifier
from bundle.priors.cls_augment import EMPHASIS_MODES
from bundle.workflows.common import model_card
from bundle.workflows.common.intensity_card import describe_intensity, intensity_from_card
from bundle.workflows.common.model_card import CARD_NAME, CARD_VERSION, write_card

__all__ = [
    "CARD_NAME",
    "CARD_VERSION",
    "CardBestModelSaver",
    "card_volume_keys",
    "check_augmentation",
    "describe_intensity",
    "intensity_from_card",
    "network_from_card",
    "read_card",
    "write_card",
]

_REQUIRED = ("task", "network", "roi_size", "cls_aug_mode", "alpha", "fusion_weight", "use_priors",
             "image_channel_names", "intensity", "prior")


def read_card(model_dir) -> dict:
    """The SAMAug-C model card of ``model_dir`` (a folder holding ``model_card.json``, or the card file itself).

    Raises:
        MissingInputError: no card (a model trained before cards existed, or the wrong folder).
        InputError: not JSON, a field missing, or the card of another kind of model; names the file.
    """
    card = model_card.read_card(model_dir, _REQUIRED, "configs/train_samaug_cls.json")
    kind = model_card.card_kind(card, model_card.card_path(model_dir))
    if kind != "classification":
        raise InputError(model_card.card_path(model_dir), f"is the card of a {kind} model, not of a SAMAug-C classifier")
    return card


def check_augmentation(card: Mapping[str, Any], cls_aug_mode: str, cls_alpha: float, model_dir: str = "") -> dict:
    """The card, once its augmentation is the one the evaluation config would build.

    ``configs/evaluate_cls.json`` builds ``x_aug`` from the training config's ``cls_aug_mode`` / ``cls_alpha``, not
    from the card, so a model trained with another formula (e.g. ``emphasis``, before ``emphasis_min`` became the
    default) would be scored on images it never saw. Inference (``configs/inference_cls.json``) reads both from the
    card and needs no check.

    Raises:
        InputError: the mode or alpha differ; names the card and the overrides that evaluate the model as trained.
    """
    trained, alpha = card["cls_aug_mode"], float(card["alpha"])
    alpha_differs = trained in EMPHASIS_MODES and abs(alpha - float(cls_alpha)) > 1e-12  # only the emphases read it
    if trained != cls_aug_mode or alpha_differs:
        raise InputError(model_card.card_path(model_dir) if model_dir else CARD_NAME,
                         f"the model was trained with cls_aug_mode {trained!r}, cls_alpha {alpha:g}; this evaluation "
                         f"would build its images with {cls_aug_mode!r}, {float(cls_alpha):g}: add --cls_aug_mode "
                         f"{trained} --cls_alpha {alpha:g}")
    return dict(card)


def card_volume_keys(card: Mapping[str, Any]) -> list[str]:
    """Keys of the loaded volumes: the image, and its prior when the model uses priors."""
    return ["image", card.get("prior_key", "prior")] if card["use_priors"] else ["image"]


def network_from_card(card: Mapping[str, Any]):
    """The :class:`~bundle.networks.DualBranchClassifier` the card describes (random weights; load ``model.pt``)."""
    return DualBranchClassifier(**card["network"])


class CardBestModelSaver(model_card.CardBestModelSaver):
    """:class:`~bundle.workflows.common.model_card.CardBestModelSaver` that also records the fusion weight the key
    metric chose in the validation that saved the model.

    Args:
        save_dir: folder of ``model.pt`` and ``model_card.json``.
        save_dict: ``{"model": network}``.
        card: the card's fixed fields (JSON-serialisable; ``fusion_weight`` is filled in at each save).
        metric: the :class:`~bundle.workflows.classification.metrics.FusedClassificationMetric` of the evaluator.
        kwargs: :class:`BestModelSaver` arguments.
    """

    def __init__(self, save_dir: str, save_dict: dict, card: Mapping[str, Any], metric: Any, **kwargs) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, card={"kind": "classification", **card}, **kwargs)
        self.metric = metric

    def card_fields(self, engine) -> dict:
        return {**super().card_fields(engine), "fusion_weight": float(self.metric.fusion_weight)}
