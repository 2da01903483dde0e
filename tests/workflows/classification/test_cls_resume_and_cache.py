"""SAMAug-C: an interrupted training continues where it stopped; a fully cached run never builds SAM."""

from __future__ import annotations

import pytest
import torch
from cls_utils import META_CLS, TINY_CLS, cls_files, train_cls
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from workflow_utils import PRECOMPUTE, PRESETS, SAM_PRIORS, TINY_SAM, initialized_training, run_workflow

import bundle.sam.loading as loading


def _workflow(data, work, **overrides) -> ConfigWorkflow:
    return initialized_training(cls_files(data.preset), META_CLS, **{**TINY_CLS, **data.overrides(work), **overrides})


def test_interrupted_training_resumes(phantom_set, tmp_path):
    data = phantom_set("brats")
    first = _workflow(data, tmp_path, max_epochs=3)
    trainer = first.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda engine: engine.terminate())
    first.run()
    first.finalize()
    per_epoch = trainer.state.epoch_length
    checkpoint = torch.load(tmp_path / "run" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert trainer.state.epoch == 1 and checkpoint["trainer"]["iteration"] == per_epoch

    second = _workflow(data, tmp_path, max_epochs=3)
    trainer = second.parser.get_parsed_content("train#trainer")
    network = second.parser.get_parsed_content("network")
    seen = {}
    trainer.add_event_handler(Events.STARTED, lambda e: seen.update(
        epoch=e.state.epoch, weights={k: v.clone() for k, v in network.state_dict().items()}))
    iterations = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: iterations.append(e.state.iteration))
    second.run()
    second.finalize()
    assert seen["epoch"] == 1
    for key, value in checkpoint["network"].items():
        torch.testing.assert_close(seen["weights"][key], value)
    assert iterations == list(range(per_epoch + 1, 3 * per_epoch + 1))


def test_fully_cached_training_builds_no_sam(phantom_set, tmp_path, monkeypatch, shapes_sam_checkpoint):
    data = phantom_set("lits")
    sam = {**TINY_SAM, "priors#sam_checkpoint": str(shapes_sam_checkpoint)}
    where = {k: v for k, v in data.overrides(tmp_path).items() if k in ("dataset_dir", "datalist", "prior_cache_dir")}
    run_workflow([SAM_PRIORS, PRECOMPUTE, PRESETS["lits"]], "precompute", "train",
                 **{"priors#prior_kinds": ["samaugc_prior"]},
                 **where, **sam)
    built = []

    def no_sam(*args, **kwargs):
        built.append(args)
        raise RuntimeError("SAM was built")

    monkeypatch.setattr(loading, "build_sam", no_sam)
    workflow = train_cls(data, tmp_path, task="lits_tumour", **sam)
    assert not built and not workflow.parser.get_parsed_content("mask_generator").engine.loaded
    with pytest.raises(RuntimeError):  # with an empty cache the same run needs SAM
        train_cls(data, tmp_path / "cold", task="lits_tumour", cache_rate=0.0,
                  **{**sam, "prior_cache_dir": str(tmp_path / "cold_priors")})
    assert built
