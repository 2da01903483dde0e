"""The card schema (bundle/workflows/common/card_schema.py): real cards of every kind pass; a value of the wrong type,
a name outside its allow-list, an unknown field, a config expression, reference or macro and a ``_target_`` at any
depth are refused naming the file and the field. The cards in ``cards/`` were written by the tiny trainings of the
tests (paths replaced)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bundle.errors import InputError
from bundle.workflows.common.card_schema import CARD_SCHEMAS, check_plain, validate_card
from bundle.workflows.segmentation.workflow import network_config

CARDS = Path(__file__).parent / "cards"
KINDS = ("segmentation", "classification", "sam_mix", "sam_mix_stored", "weak_classifier")


def _card(kind: str) -> dict:
    return json.loads((CARDS / f"{kind}.json").read_text())


def _set(card: dict, path: str, value) -> dict:
    card = copy.deepcopy(card)
    *parents, last = path.split(".")
    holder = card
    for part in parents:
        holder = holder[part]
    holder[last] = value
    return card


def _refused(card, kind: str, field: str) -> str:
    with pytest.raises(InputError) as refused:
        validate_card(card, kind, "models/model_card.json")
    message = str(refused.value)
    assert message.startswith("models/model_card.json: model card field ") and f"field {field}" in message, message
    return message


@pytest.mark.parametrize("kind", KINDS)
def test_real_cards_fit_their_schema(kind):
    assert set(CARD_SCHEMAS) == set(KINDS)
    assert validate_card(_card(kind), kind, "card.json") == _card(kind)


@pytest.mark.parametrize("kind, field, value, words", [
    ("segmentation", "config.prior_scale", "1.0", "not a number"),
    ("segmentation", "config.prior_mode", "sometimes", "not one of"),
    ("segmentation", "network.name", "os.system", "not one of ['UNet']"),
    ("segmentation", "network.dropout", 2.0, "outside"),
    ("segmentation", "intensity.name", "Lambdad", "not one of"),
    ("segmentation", "prior.sam_model_type", "vit_x", "not one of"),
    ("segmentation", "config.regions", {"liver": ["1"]}, "not an integer"),
    ("classification", "network.backbone", "evilnet", "not one of"),
    ("classification", "network.branches", "both", "not one of"),
    ("classification", "task", "lits_everything", "not one of"),
    ("classification", "fusion_weight", float("nan"), "not a finite number"),
    ("sam_mix", "sam.multimask", "many", "not one of"),
    ("sam_mix", "method", "magic", "not one of"),
    ("sam_mix_stored", "classifier.cam_threshold", True, "not a number"),
    ("weak_classifier", "network.num_subclasses", 0, "outside"),
    ("weak_classifier", "roi_size", [32, "32"], "not an integer"),
])
def test_values_of_the_wrong_type_or_outside_their_allow_list_are_refused(kind, field, value, words):
    assert words in _refused(_set(_card(kind), field, value), kind, field.split(".", 1)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_fields_and_config_syntax_are_refused_anywhere(kind):
    card = _card(kind)
    assert "is not a field" in _refused({**card, "trainer": 1}, kind, "trainer")
    nested = next(k for k, v in card.items() if isinstance(v, dict))
    assert "config directive" in _refused(_set(card, f"{nested}._target_", "UNet"), kind, f"{nested}._target_")
    for sigil in ("$", "@", "%"):
        assert "ConfigParser" in _refused(_set(card, "roi_size" if "roi_size" in card else "method",
                                                f"{sigil}x"), kind, "")
    with pytest.raises(InputError, match="field a.b._requires_"):
        check_plain({"a": {"b": {"_requires_": "x"}}}, "card.json")


def test_config_keys_cannot_override_other_config_ids():
    card = _card("segmentation")
    _refused(_set(card, "config.network_def#_target_", "os.system"), "segmentation", "config.network_def#_target_")
    _refused(_set(card, "config.trainer", {}), "segmentation", "config.trainer")


def test_network_config_builds_only_the_allow_listed_unet():
    assert network_config(_card("segmentation")["network"])["_target_"] == "monai.networks.nets.UNet"
    with pytest.raises(ValueError, match="UNet"):
        network_config({"name": "subprocess.call"})
