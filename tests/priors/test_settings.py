"""Tests of bundle.priors.settings: one class for every setting that changes a SAM prior."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundle.priors.settings import PriorSettings, PriorSettingsError
from bundle.priors.transforms import SamPrior
from bundle.workflows.common.card_schema import validate_card

TESTS = Path(__file__).resolve().parents[1]
SAM_PRIORS = TESTS.parent / "configs" / "sam_priors.json"


def test_card_round_trip_keeps_the_cache_key():
    settings = PriorSettings(prior_kinds=["samaugc_prior"], sam_model_type="fallback", samaugc_combine="max",
                             sam_window={"preset": "ct_liver", "channels": 0})
    card = json.loads(json.dumps(settings.to_card(True, "/cache")))
    assert card["use_priors"] is True and card["prior_cache_dir"] == "/cache"
    again = PriorSettings.from_card(card)
    assert again == settings and again.signature("cpu") == settings.signature("cpu")
    assert again.signature("cpu")["samaugc"] == {"score": "stability_score", "combine": "max"}
    prior = again.build("cpu")
    assert isinstance(prior, SamPrior) and prior.kinds == ("samaugc_prior",)
    assert type(again.mask_generator("cpu")).__name__ == "RegionProposalMasks"


def test_settings_change_the_signature():
    base = PriorSettings(sam_model_type="fallback")
    seg_only = PriorSettings(sam_model_type="fallback", prior_kinds=["sam_seg_prior"])
    ct = PriorSettings(sam_model_type="fallback", sam_window={"preset": "ct_liver", "channels": 0})
    assert len({str(s.signature("cpu")) for s in (base, seg_only, ct)}) == 3


def test_prompt_mode_picks_the_generator(shapes_sam_checkpoint):
    lite = PriorSettings().mask_generator("cpu")
    tiny = PriorSettings(sam_model_type="tiny", sam_checkpoint=str(shapes_sam_checkpoint)).mask_generator("cpu")
    boxes = PriorSettings(sam_model_type="tiny", sam_checkpoint=str(shapes_sam_checkpoint),
                          sam_prompt_mode="boxes").mask_generator("cpu")
    assert [type(g).__name__ for g in (lite, tiny, boxes)] == ["SamBoxGridMasks", "SamAutomaticMasks",
                                                               "SamBoxGridMasks"]
    with pytest.raises(FileNotFoundError, match="priors#sam_checkpoint"):
        PriorSettings(sam_model_type="vit_b").mask_generator("cpu")


@pytest.mark.parametrize(
    "bad, field",
    [({"sam_model_type": "vit_c"}, "sam_model_type"), ({"prior_kinds": "sam_seg_prior"}, "prior_kinds"),
     ({"prior_kinds": ["seg"]}, "prior_kinds"), ({"sam_prompt_mode": "box"}, "sam_prompt_mode"),
     ({"sam_batch_size": 0}, "sam_batch_size"), ({"slices_per_batch": 2.5}, "slices_per_batch"),
     ({"sam_autocast": "fp8"}, "sam_autocast"), ({"amg": [32]}, "amg"),
     ({"sam_window": {"preset": "ct"}}, "sam_window"),
     ({"sam_window": {"preset": "minmax", "chanels": 0}}, "sam_window"),
     ({"samaugc_score": "iou"}, "samaugc_score"), ({"samaugc_combine": "mean"}, "samaugc_combine"),
     ({"sam_checkpoint": 3}, "sam_checkpoint"), ({"sam_model_type": "fallback", "sam_adapter": "a.pt"}, "sam_adapter")])
def test_bad_settings_are_refused_by_name(bad, field):
    with pytest.raises(PriorSettingsError, match=f"^priors#{field}: ") as refused:
        PriorSettings(**bad)
    assert refused.value.field == field


def test_card_records_are_read_strictly(tmp_path):
    card = PriorSettings().to_card(True, None)
    del card["sam_adapter"]  # cards written before adapters existed
    assert PriorSettings.from_card(card).sam_adapter is None
    with pytest.raises(PriorSettingsError, match="priors#sam_window: is missing"):
        PriorSettings.from_card({k: v for k, v in card.items() if k != "sam_window"})
    with pytest.raises(PriorSettingsError, match="priors#points_per_side: is not a prior setting"):
        PriorSettings.from_card({**card, "points_per_side": 4})


def test_card_schema_checks_the_prior_through_the_settings(tmp_path):
    seg = json.load(open(TESTS / "workflows" / "common" / "cards" / "segmentation.json"))
    validate_card(seg, "segmentation", tmp_path / "card.json")
    seg["prior"]["sam_prompt_mode"] = "box"
    with pytest.raises(Exception, match="model card field prior.sam_prompt_mode: 'box' is not one of"):
        validate_card(seg, "segmentation", tmp_path / "card.json")
    seg["prior"]["sam_prompt_mode"], seg["prior"]["use_priors"] = "auto", "yes"
    with pytest.raises(Exception, match="prior.use_priors"):
        validate_card(seg, "segmentation", tmp_path / "card.json")


def test_config_block_builds_the_default_settings():
    block = json.load(open(SAM_PRIORS))["priors"]
    assert PriorSettings(**{k: v for k, v in block.items() if k != "_target_"}) == PriorSettings()
