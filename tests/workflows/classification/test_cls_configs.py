"""SAMAug-C configs: bundle properties, one prior-cache partition for precompute and training, network metadata,
and the branch variants (each builds and trains)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from cls_utils import INFER_CLS, META_CLS, TINY_CLS, TRAIN_CLS, cls_files, train_cls
from monai.bundle import ConfigParser, ConfigWorkflow, verify_net_in_out
from workflow_utils import PRECOMPUTE, PRESETS, SAM_PRIORS

from bundle.errors import InputError
from bundle.priors.cache import PriorCache
from bundle.workflows.classification.card import check_augmentation
from bundle.workflows.classification.transforms import ClassifierInputd
from bundle.workflows.classification.workflow import prior_kinds_for, uses_priors


def _parser(files, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(files)
    parser.update(overrides)
    return parser


def _digest(parser) -> str:
    cache = PriorCache(parser.get_parsed_content("prior_cache_dir"), parser.get_parsed_content("sam_prior").signature())
    return cache.digest


def test_train_and_inference_properties(phantom_set, tmp_path, caplog):
    data = phantom_set("brats")
    caplog.set_level(logging.WARNING)
    train = ConfigWorkflow(config_file=cls_files("brats"), workflow_type="train", meta_file=META_CLS,
                           logging_file=False, **{**TINY_CLS, **data.overrides(tmp_path)})
    train.initialize()
    assert train.check_properties() == []
    assert not list((tmp_path / "priors").rglob("entry.json"))  # the check computed no prior (DeferredCacheDataset)
    train_cls(data, tmp_path, max_epochs=1)
    assert list((tmp_path / "priors").rglob("entry.json"))
    infer = ConfigWorkflow(config_file=INFER_CLS, workflow_type="infer", meta_file=META_CLS, logging_file=False,
                           model_dir=str(tmp_path / "models"), dataset_dir=str(data.root), datalist=str(data.datalist))
    infer.initialize()
    assert infer.check_properties() == []
    assert not [r for r in caplog.records if "property" in r.getMessage().lower()]


@pytest.mark.parametrize("preset", ["brats", "lits"])
def test_precompute_and_training_share_the_partition(preset):
    """The lead's precompute command (``--priors#prior_kinds ['samaugc_prior']`` + box-grid overrides) and the default
    emphasis training with the same overrides compute the same signature; other modes follow ``cls_aug_mode``."""
    lead = {"priors#box_grid#box_stride": 1.0, "priors#box_grid#refine_rounds": 0}
    precompute = _parser([SAM_PRIORS, PRECOMPUTE, PRESETS[preset]], **{"priors#prior_kinds": ["samaugc_prior"]}, **lead)
    training = _parser(cls_files(preset), **lead)
    assert _digest(precompute) == _digest(training)
    assert not training.get_parsed_content("mask_generator").engine.loaded
    # a samaug-mode training differs, and the merged precompute config follows it
    samaug = _parser(cls_files(preset), cls_aug_mode="samaug", **lead)
    merged = _parser([SAM_PRIORS, PRECOMPUTE, TRAIN_CLS, PRESETS[preset]], cls_aug_mode="samaug", **lead)
    assert _digest(samaug) == _digest(merged) != _digest(training)


def test_prior_helpers():
    assert prior_kinds_for("emphasis") == prior_kinds_for("emphasis_min") == prior_kinds_for("add") == ["samaugc_prior"]
    assert prior_kinds_for("samaug") == ["sam_seg_prior", "sam_boundary_prior"]
    assert not uses_priors("raw") and uses_priors("raw", aug_as_samples=True) and uses_priors("dual")
    with pytest.raises(ValueError, match="augmented"):
        uses_priors("augmentd")


def test_verify_net_in_out():
    verify_net_in_out("network_def", meta_file=META_CLS, config_file=[SAM_PRIORS, TRAIN_CLS])


@pytest.mark.parametrize("overrides", [
    {"cls_branches": "raw"},
    {"cls_branches": "augmented", "cls_aug_mode": "samaug"},
    {"cls_branches": "raw", "aug_as_samples": True},
    {"cls_branches": "dual", "shared_backbone": False, "fusion_weight": 0.3, "class_balance": False},
])
def test_branch_variants_train(overrides, phantom_set, tmp_path):
    data = phantom_set("brats")
    workflow = train_cls(data, tmp_path, **overrides)
    net = workflow.parser.get_parsed_content("network")
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration >= 1
    raw_only = overrides["cls_branches"] == "raw" and not overrides.get("aug_as_samples")
    assert workflow.parser.get_parsed_content("use_priors") is not raw_only
    if raw_only:  # the raw baseline builds no generator and writes no prior
        assert workflow.parser.get_parsed_content("mask_generator") is None
        assert not (tmp_path / "priors").exists()
    if overrides.get("aug_as_samples"):
        items = workflow.parser.get_parsed_content("train#dataset").items
        assert {i["view"] for i in items} == {"raw", "augmented"}
    assert net.n_branches == (2 if overrides["cls_branches"] == "dual" else 1)
    assert len(net.backbones) == (2 if overrides.get("shared_backbone") is False else 1)
    if "fusion_weight" in overrides:
        import json
        assert json.loads((tmp_path / "models" / "model_card.json").read_text())["fusion_weight"] == 0.3


def test_evaluation_refuses_another_augmentation_than_the_cards():
    """A model trained with the old ``emphasis`` is not scored on ``emphasis_min`` images (or another alpha)."""
    card = {"cls_aug_mode": "emphasis", "alpha": 0.5, "fusion_weight": 0.4}
    assert check_augmentation(card, "emphasis", 0.5) == card
    with pytest.raises(InputError, match="with cls_aug_mode 'emphasis'.*--cls_aug_mode emphasis --cls_alpha 0.5"):
        check_augmentation(card, "emphasis_min", 0.5, "models/m")
    with pytest.raises(InputError, match="cls_alpha 0.5; this evaluation would build its images with 'emphasis', 0.3"):
        check_augmentation(card, "emphasis", 0.3)
    # alpha is read by the emphases only
    assert check_augmentation({**card, "cls_aug_mode": "add"}, "add", 0.3)["cls_aug_mode"] == "add"


@pytest.mark.parametrize("mode", ["emphasis", "emphasis_min"])
def test_inference_builds_the_cards_augmentation(mode):
    """A card written before ``emphasis_min`` existed (``emphasis``) is served with its own formula, not the new
    default; a new card with its own."""
    card = json.loads((Path(__file__).parents[1] / "common" / "cards" / "classification.json").read_text())
    card = {**card, "cls_aug_mode": mode, "network": {**card["network"], "branches": "dual"}}
    parser = _parser([INFER_CLS], card=card)
    (inputs,) = [t for t in parser.get_parsed_content("item_transforms").transforms if isinstance(t, ClassifierInputd)]
    assert inputs.augment.mode == mode and inputs.augment.alpha == card["alpha"]
