"""Priors are computed once (never per epoch or per run); an interrupted training continues where it stopped."""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

import bundle.sam.loading as loading
from bundle.sam.fallback import RegionProposalMasks
from workflow_utils import (
    METADATA,
    PRECOMPUTE,
    TINY,
    TINY_SAM,
    config_files,
    initialized_training,
    run_workflow,
    train,
)


def test_priors_computed_once(phantom_set, tmp_path, monkeypatch):
    data = phantom_set("lits")
    slices = []
    generate = RegionProposalMasks.generate_batch

    def spy(self, images):
        slices.append(len(images))
        return generate(self, images)

    monkeypatch.setattr(RegionProposalMasks, "generate_batch", spy)
    shared = {"prior_cache_dir": str(tmp_path / "priors")}
    # cache_rate 0: the dataset re-runs its transforms every epoch, so only the disk cache can prevent recomputation
    train(data, tmp_path / "first", max_epochs=2, cache_rate=0.0, **shared)
    entries = [json.loads(p.read_text()) for p in (tmp_path / "priors").glob("*/*/entry.json")]
    assert sorted(e["case_id"] for e in entries) == sorted(data.cases["training"] + data.cases["validation"])
    assert sum(slices) == sum(e["slices_sent_to_generator"] for e in entries) > 0  # each slice once in 2 epochs
    slices.clear()
    train(data, tmp_path / "second", **shared)
    assert slices == []
    # the raw baseline never builds a generator nor touches a prior cache
    train(data, tmp_path / "raw", prior_mode="none")
    assert slices == [] and not (tmp_path / "raw" / "priors").exists()


def test_fully_cached_training_builds_no_sam(phantom_set, tmp_path, monkeypatch, shapes_sam_checkpoint):
    """Once precompute has filled the cache, training (and its validation) never builds SAM."""
    data = phantom_set("lits")
    sam = {**TINY_SAM, "priors#sam_checkpoint": str(shapes_sam_checkpoint)}
    where = {k: v for k, v in data.overrides(tmp_path).items() if k in ("dataset_dir", "datalist", "prior_cache_dir")}
    run_workflow(config_files(data.preset, main=PRECOMPUTE), "precompute", "train", **where, **sam)
    built = []

    def no_sam(*args, **kwargs):
        built.append(args)
        # an Exception, not pytest.fail: CacheDataset fills its cache in a thread pool, where a BaseException would
        # kill the worker thread and hang the pool
        raise RuntimeError("SAM was built")

    monkeypatch.setattr(loading, "build_sam", no_sam)
    workflow = train(data, tmp_path, **sam)
    assert not built
    assert not workflow.parser.get_parsed_content("mask_generator").engine.loaded
    # and the check has teeth: with an empty cache the same run builds SAM (cache_rate 0: the priors are computed in
    # this thread, so no thread-pool worker is left computing after the failure and the monkeypatch)
    with pytest.raises(RuntimeError):
        train(data, tmp_path / "cold", cache_rate=0.0, **{**sam, "prior_cache_dir": str(tmp_path / "cold_priors")})
    assert built


def _workflow(data, work, **overrides) -> ConfigWorkflow:
    return initialized_training(config_files(data.preset), METADATA, **{**TINY, **data.overrides(work), **overrides})


def test_interrupted_training_resumes(phantom_set, tmp_path):
    data = phantom_set("brats")
    first = _workflow(data, tmp_path, max_epochs=3)
    trainer = first.parser.get_parsed_content("train#trainer")
    # stop after epoch 1, as a killed job would (the last-epoch checkpoint is written at the end of each epoch)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda engine: engine.terminate())
    first.run()
    first.finalize()
    per_epoch = trainer.state.epoch_length
    assert trainer.state.epoch == 1
    checkpoint = torch.load(tmp_path / "run" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    network_after_first = checkpoint["network"]

    second = _workflow(data, tmp_path, max_epochs=3)
    trainer = second.parser.get_parsed_content("train#trainer")
    saver = second.parser.get_parsed_content("validate#best_model_saver")
    network = second.parser.get_parsed_content("network")
    seen = {}

    def on_start(engine):  # runs after ResumeFromCheckpoint, the first handler of the list
        seen["epoch"] = engine.state.epoch
        seen["best"] = saver.state_dict()["_saved"]
        seen["weights"] = {k: v.clone() for k, v in network.state_dict().items()}

    trainer.add_event_handler(Events.STARTED, on_start)
    iterations = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: iterations.append(engine.state.iteration))
    second.run()
    second.finalize()
    assert seen["epoch"] == 1 and seen["best"] == checkpoint["best_model"]["_saved"]
    for key, value in network_after_first.items():
        torch.testing.assert_close(seen["weights"][key], value)
    assert iterations == list(range(per_epoch + 1, 3 * per_epoch + 1))  # epochs 2 and 3 only
    optimizer = second.parser.get_parsed_content("optimizer")
    steps = {int(s["step"]) for s in optimizer.state.values()}
    assert steps == {3 * per_epoch}  # Adam's state continued from the checkpoint
    last = torch.load(tmp_path / "run" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["iteration"] == 3 * per_epoch

    # the same command once more: the run is complete, nothing is trained
    third = _workflow(data, tmp_path, max_epochs=3)
    trainer = third.parser.get_parsed_content("train#trainer")
    count = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: count.append(1))
    third.run()
    third.finalize()
    assert count == []
