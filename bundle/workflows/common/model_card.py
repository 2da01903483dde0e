"""The model card: ``model_card.json`` next to ``model.pt``, everything inference needs to rebuild a trained model.

Every training of the bundle writes one (SAMAug segmentation and WeakMedSAM's segmentation stage through
:class:`CardBestModelSaver`, SAMAug-C through its subclass, SAM-Mix when its model is final), so batch inference
(:mod:`bundle.inference`) needs only the model folder: which task (``kind``), channels, priors (the SAM configuration,
hence the prior-cache partition) and preprocessing the weights expect.

``kind`` is one of :data:`CARD_KINDS`. A card is data, never code: every read checks it against its schema
(:mod:`bundle.workflows.common.card_schema`) before any value is used.

The card and the weights are one unit. :func:`write_card` records the sha256 of ``model.pt`` (``weights_sha256``)
and of the card itself (``card_sha256``, over every other field); :func:`read_card` refuses a card whose own digest
does not match (edited after training: ``branches`` changed to ``raw``, another ``task``) or whose weights digest is
not that of the ``model.pt`` beside it (a kill between the two writes, weights copied from another run), naming both
files. ``model.pt`` is written first (atomically), then the card (atomically), so a kill leaves either the old pair,
or new weights with the old card, which is refused. Cards written before the binding existed (``card_version`` 1) are
refused with the way to bind them: ``python -m bundle.workflows.common.model_card bind <model folder>`` after
checking that the card describes the weights, or training again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from bundle.atomic import write_text_atomic
from bundle.distributed import is_main_process
from bundle.errors import InputError, MissingInputError
from bundle.hashing import file_sha256
from bundle.workflows.common.best_model import BestModelSaver
from bundle.workflows.common.card_schema import CARD_SCHEMA_VERSION, check_plain, validate_card

__all__ = ["CARD_KINDS", "CARD_NAME", "CARD_VERSION", "WEIGHTS_NAME", "CardBestModelSaver", "bind_card", "bound_card",
           "card_digest", "card_kind", "card_modality", "card_path", "read_card", "verify_model_folder",
           "verify_weights", "write_card"]

CARD_NAME = "model_card.json"
WEIGHTS_NAME = "model.pt"
CARD_VERSION = CARD_SCHEMA_VERSION
#: the fields of the binding, filled in by :func:`bound_card`
_BINDING = ("card_version", "modality", "weights_sha256", "card_sha256")
CARD_KINDS = ("segmentation", "classification", "sam_mix")
"""What a card describes: a SAMAug / WeakMedSAM segmentation network, a SAMAug-C classifier, a SAM-Mix model."""


def card_path(model_dir: str | os.PathLike) -> str:
    """The card file of ``model_dir`` (a model folder, or the card file itself)."""
    path = os.fspath(model_dir)
    return os.path.join(path, CARD_NAME) if os.path.isdir(path) or not path.endswith(".json") else path


def card_digest(card: Mapping[str, Any]) -> str:
    """sha256 of a card's fields, ``card_sha256`` excluded (sorted keys; NaN allowed: a metric may be NaN)."""
    fields = {k: v for k, v in card.items() if k != "card_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def card_modality(card: Mapping[str, Any]) -> str:
    """The modality of the images a card's model was trained on (:func:`bundle.data.modalities.modality_of`)."""
    from bundle.data.modalities import modality_of

    dataset = card.get("dataset_name") or card.get("dataset")
    if not dataset and card.get("task"):
        from bundle.data.tasks import TASKS

        task = TASKS.get(card["task"])
        dataset = task.dataset if task is not None else None
    channels = card.get("image_channel_names") or (card.get("config") or {}).get("image_channel_names") or []
    return modality_of(dataset, channels)


def bound_card(card: Mapping[str, Any], weights: str | os.PathLike) -> dict:
    """``card`` as plain JSON values with the binding fields: card version, modality (unless given),
    ``weights_sha256`` of ``weights`` and ``card_sha256``."""
    plain = json.loads(json.dumps({k: v for k, v in card.items() if k not in _BINDING}, default=str))
    bound = {"card_version": CARD_VERSION, **plain, "modality": card.get("modality") or card_modality(plain),
             "weights_sha256": file_sha256(weights)}
    return {**bound, "card_sha256": card_digest(bound)}


def write_card(path: str | os.PathLike, card: Mapping[str, Any], weights: str | os.PathLike | None = None) -> None:
    """Write ``card``, bound to ``weights`` (default: ``model.pt`` beside it), as JSON atomically (main process only).

    The weights must be written (atomically) before: the card records their sha256.
    """
    if is_main_process():
        weights = weights or os.path.join(os.path.dirname(os.fspath(path)), WEIGHTS_NAME)
        write_text_atomic(path, json.dumps(bound_card(card, weights), indent=2) + "\n")


def read_card(model_dir: str | os.PathLike, required: Sequence[str] = (), trained_by: str = "the bundle's training",
              check_weights: bool = True) -> dict:
    """The model card of ``model_dir`` (a folder holding ``model_card.json``, or the card file itself), checked
    against its schema and bound to the ``model.pt`` beside it.

    Args:
        model_dir: model folder or card file.
        required: fields the caller needs; a card without one is refused.
        trained_by: what writes such a card, for the message when there is none.
        check_weights: compare ``weights_sha256`` with the ``model.pt`` beside the card (False: the card alone).

    Raises:
        MissingInputError: no card (a model trained before cards existed, or the wrong folder).
        InputError: not a JSON object, a required field missing, a field that does not fit the schema, a card
            without binding (version 1), edited after training, or not the card of the ``model.pt`` beside it;
            names the file (both files for a mismatch).
    """
    card = _read_json_card(model_dir, trained_by)
    path = card_path(model_dir)
    version = card.get("card_version")
    if version == 1 and not isinstance(version, bool):  # written before the binding (its network has a _target_)
        raise InputError(path, f"model card version 1 is not bound to its weights (version {CARD_VERSION} records "
                               "their sha256): check that it describes the model.pt beside it, then run "
                               f"`python -m bundle.workflows.common.model_card bind {os.path.dirname(path) or '.'}`, "
                               "or train again")
    check_plain(card, path)  # before any field is looked at: no expression, reference or _target_ anywhere
    missing = [k for k in required if k not in card]
    if missing:
        raise InputError(path, f"model card lacks {missing}")
    validate_card(card, card_kind(card, path), path)
    weights = os.path.join(os.path.dirname(path), WEIGHTS_NAME)
    if card_digest(card) != card["card_sha256"]:
        raise InputError(path, f"model card was edited after training (its card_sha256 does not match its fields), "
                               f"so it no longer describes {weights}: restore the card written with those weights, "
                               "or train again")
    if check_weights:
        verify_weights(card, path)
    return card


def verify_model_folder(model_dir: str | os.PathLike) -> None:
    """Raise the :func:`read_card` error of a model folder whose card and weights do not load as one model."""
    read_card(model_dir)


def verify_weights(card: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Check that the ``model.pt`` beside the card ``path`` is the one the card was written for.

    Raises:
        MissingInputError: no ``model.pt``.
        InputError: its sha256 is not the card's ``weights_sha256``; names both files.
    """
    path = os.fspath(path)
    weights = os.path.join(os.path.dirname(path), WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise MissingInputError(weights, f"no weights beside the model card {path}")
    if file_sha256(weights) != card["weights_sha256"]:
        raise InputError(weights, f"is not the model the card {path} was written for (weights sha256 differs "
                                  "from the card's weights_sha256: new weights with an old card after an "
                                  "interrupted training, or files from two runs): train again, or copy both "
                                  "files of one run")


def _read_json_card(model_dir: str | os.PathLike, trained_by: str) -> dict:
    """The parsed JSON object of a card file, unchecked."""
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
    return card


def bind_card(model_dir: str | os.PathLike) -> str:
    """Bind the card of a model folder written before cards were bound (``card_version`` 1) to the ``model.pt``
    beside it: the card is checked against its schema, then rewritten with the binding. Run it only on a folder
    whose card you know describes its weights.

    Returns:
        the card's path.

    Raises:
        InputError: a card that does not fit its schema, or no ``model.pt``.
    """
    card = _read_json_card(model_dir, "the bundle's training")
    path = card_path(model_dir)
    weights = os.path.join(os.path.dirname(path), WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise MissingInputError(weights, f"no weights beside the model card {path}")
    if card.get("kind") is None and "cls_aug_mode" in card:  # SAMAug-C cards written before kinds existed
        card = {"kind": "classification", **card}
    network = card.get("network")
    if isinstance(network, dict) and network.get("_target_") == "UNet":  # version 1 named the network class so
        card["network"] = {"name": "UNet", **{k: v for k, v in network.items() if k != "_target_"}}
    bound = bound_card(card, weights)
    validate_card(bound, card_kind(bound, path), path)
    write_text_atomic(path, json.dumps(bound, indent=2) + "\n")
    return path


def card_kind(card: Mapping[str, Any], path: str | os.PathLike = CARD_NAME) -> str:
    """The ``kind`` of a card; cards without one were written by SAMAug-C before the field existed.

    Raises:
        InputError: an unknown kind (names ``path``).
    """
    kind = card.get("kind", "classification" if "cls_aug_mode" in card else None)
    if kind not in CARD_KINDS:
        raise InputError(path, f"model card field kind: {str(kind)[:40]!r} is not one of {list(CARD_KINDS)}")
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
        if list(self._key_metric_checkpoint._saved) != before:  # model.pt was just replaced: bind the card to it
            write_card(os.path.join(self.save_dir, CARD_NAME), {**self.card, **self.card_fields(engine)},
                       os.path.join(self.save_dir, WEIGHTS_NAME))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bundle.workflows.common.model_card bind <model folder>``: see :func:`bind_card`."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "bind":
        print("usage: python -m bundle.workflows.common.model_card bind <model folder>", file=sys.stderr)
        return 2
    try:
        print(f"bound {bind_card(args[1])} to its model.pt")
    except InputError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
