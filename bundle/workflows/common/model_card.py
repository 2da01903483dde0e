"""The model card: ``model_card.json`` next to ``model.pt``, everything inference needs to rebuild a trained model.

Every training of the bundle writes one (SAMAug segmentation and WeakMedSAM's segmentation stage through
:class:`CardBestModelSaver`, SAMAug-C through its subclass, SAM-Mix when its model is final), so batch inference
(:mod:`bundle.inference`) needs only the model folder: which task (``kind``), channels, priors (the SAM configuration,
hence the prior-cache partition) and preprocessing the weights expect.

``kind`` is one of :data:`CARD_KINDS`; cards written before the field existed are SAMAug-C cards (:func:`card_kind`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from bundle.atomic import write_text_atomic
from bundle.distributed import is_main_process
from bundle.errors import InputError, MissingInputError
from bundle.workflows.common.best_model import BestModelSaver

__all__ = ["CARD_KINDS", "CARD_NAME", "CARD_VERSION", "CardBestModelSaver", "card_kind", "card_path", "read_card",
           "write_card"]

CARD_NAME = "model_card.json"
CARD_VERSION = 1
CARD_KINDS = ("segmentation", "classification", "sam_mix")
"""What a card describes: a SAMAug / WeakMedSAM segmentation network, a SAMAug-C classifier, a SAM-Mix model."""


def card_path(model_dir: str | os.PathLike) -> str:
    """The card file of ``model_dir`` (a model folder, or the card file itself)."""
    path = os.fspath(model_dir)
    return os.path.join(path, CARD_NAME) if os.path.isdir(path) or not path.endswith(".json") else path


def write_card(path: str | os.PathLike, card: Mapping[str, Any]) -> None:
    """Write ``card`` as JSON atomically (main process only), with the card version first."""
    if is_main_process():
        write_text_atomic(path, json.dumps({"card_version": CARD_VERSION, **card}, indent=2, default=str) + "\n")


def read_card(model_dir: str | os.PathLike, required: Sequence[str] = (), trained_by: str = "the bundle's training"
              ) -> dict:
    """The model card of ``model_dir`` (a folder holding ``model_card.json``, or the card file itself).

    Args:
        model_dir: model folder or card file.
        required: fields the caller needs; a card without one is refused.
        trained_by: what writes such a card, for the message when there is none.

    Raises:
        MissingInputError: no card (a model trained before cards existed, or the wrong folder).
        InputError: not a JSON object, or a required field missing; names the file.
    """
    path = card_path(model_dir)
    if not os.path.isfile(path):
        raise MissingInputError(path, f"no model card: train with {trained_by}, which writes it next to model.pt")
    try:
        with open(path) as f:
            card = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(path, f"model card is not readable JSON ({error})") from error
    if not isinstance(card, dict):
        raise InputError(path, f"model card is a JSON {type(card).__name__}, not an object")
    missing = [k for k in required if k not in card]
    if missing:
        raise InputError(path, f"model card lacks {missing}")
    return card


def card_kind(card: Mapping[str, Any], path: str | os.PathLike = CARD_NAME) -> str:
    """The ``kind`` of a card; cards without one were written by SAMAug-C before the field existed.

    Raises:
        InputError: an unknown kind (names ``path``).
    """
    kind = card.get("kind", "classification" if "cls_aug_mode" in card else None)
    if kind not in CARD_KINDS:
        raise InputError(path, f"model card of unknown kind {kind!r}; expected one of {list(CARD_KINDS)}")
    return kind


class CardBestModelSaver(BestModelSaver):
    """:class:`~bundle.workflows.common.best_model.BestModelSaver` that writes the model card whenever it saves a new
    best model, with the best metric and epoch.

    Args:
        save_dir: folder of ``model.pt`` and ``model_card.json``.
        save_dict: ``{"model": network}``.
        card: the card's fixed fields (JSON-serialisable).
        kwargs: :class:`BestModelSaver` arguments.
    """

    def __init__(self, save_dir: str, save_dict: dict, card: Mapping[str, Any], **kwargs) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)
        self.card = dict(card)
        self.key_name = kwargs.get("key_metric_name")
        json.dumps(self.card, default=str)  # fail at construction, not after the first epoch

    def card_fields(self, engine) -> dict:
        """Fields filled in at each save (subclasses add theirs)."""
        return {"best_metric": float(engine.state.metrics[self.key_name or engine.state.key_metric_name]),
                "best_epoch": int(engine.state.epoch)}

    def metrics_completed(self, engine) -> None:
        before = list(self._key_metric_checkpoint._saved)
        super().metrics_completed(engine)
        if list(self._key_metric_checkpoint._saved) != before:
            write_card(os.path.join(self.save_dir, CARD_NAME), {**self.card, **self.card_fields(engine)})
