"""Helpers of the workflow smoke tests: tiny settings, phantom datasets with datalists, an in-process config runner.

Every run uses :data:`TINY` on top of the configs: 32 x 32 phantoms (4 cases: 2 training, 1 validation, 1 testing),
a two-level UNet, one epoch and four slices (or one crop) per volume, so a train + evaluate + infer cycle takes
seconds on two CPU cores.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bundle.data.datalist import build_datalist, write_datalist
from bundle.testing.phantom_writers import RECIPES, make_phantoms
from bundle.workflows.common.model_card import write_card

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
SAM_PRIORS = str(CONFIGS / "sam_priors.json")
TRAIN = str(CONFIGS / "train_samaug_seg.json")
PRECOMPUTE = str(CONFIGS / "precompute_priors.json")
EVALUATE = str(CONFIGS / "evaluate.json")
INFERENCE = str(CONFIGS / "inference.json")
METADATA = str(CONFIGS / "metadata.json")
#: the built-in datasets' presets, then every dataset module's with a phantom recipe (msd_spleen)
PRESET_NAMES = ("brats", "lits", "abdomenct1k", *RECIPES)
PRESETS = {name: str(CONFIGS / "presets" / f"{name}.json") for name in PRESET_NAMES}
#: preset -> (phantom layout written by make_phantoms, dataset name of build_datalist)
PHANTOM_LAYOUTS = {
    "brats": ("brats2021", "brats"),
    "lits": ("lits", "lits"),
    "abdomenct1k": ("abdomenct1k", "abdomenct1k"),
    **{name: (name, name) for name in RECIPES},
}

#: overrides shared by every workflow run of the tests (train, evaluate and inference must build the same network)
NETWORK = {"network_def#channels": [8, 16, 32], "network_def#strides": [2, 2], "patch_size": [32, 32, 16]}
TINY = {
    **NETWORK,
    "priors#sam_model_type": "fallback",
    "max_epochs": 1,
    "val_interval": 1,
    "slices_per_volume": 4,
    "crops_per_volume": 1,
    "sw_batch_size": 8,
}
#: SAM settings for the random-weight tiny SAM of tests/conftest.py: few prompts, thresholds at 0 so masks exist
TINY_SAM = {"priors#sam_model_type": "tiny",
            "priors#amg": {"points_per_side": 4, "points_per_batch": 16, "pred_iou_thresh": 0.0,
                           "stability_score_thresh": 0.0, "box_nms_thresh": 0.7}}


@dataclass(frozen=True)
class PhantomSet:
    """A phantom dataset on disk: its root, datalist and (fresh per test) prior cache."""

    preset: str
    root: Path
    datalist: Path
    cases: dict

    def overrides(self, work: Path) -> dict:
        """Config keys pointing a run at this dataset, with outputs, models and prior cache under ``work``."""
        return {
            "bundle_root": str(REPO),
            "dataset_dir": str(self.root),
            "datalist": str(self.datalist),
            "prior_cache_dir": str(work / "priors"),
            "output_dir": str(work / "run"),
            "ckpt_dir": str(work / "models"),
        }


def make_phantom_set(preset: str, root: Path, cases: int = 4, size: int = 32, seed: int = 0) -> PhantomSet:
    """Write ``cases`` phantoms of ``preset``'s dataset into ``root`` with a 2 / 1 / 1 (for 4 cases) datalist."""
    layout, dataset = PHANTOM_LAYOUTS[preset]
    make_phantoms(layout, root, cases=cases, size=size, seed=seed)
    datalist = build_datalist(dataset, root, val_fraction=0.25, test_fraction=0.25, seed=seed, progress=False)
    path = Path(write_datalist(datalist, root / "datalist.json"))
    cases = {s: [e["case_id"] for e in datalist[s]] for s in ("training", "validation", "testing")}
    return PhantomSet(preset, root, path, cases)


def config_files(preset: str | None, *extra: str, main: str = TRAIN) -> list[str]:
    """The shared SAM/prior settings, ``main`` (the training config), the preset (if any), then ``extra`` files, in
    merge order."""
    return [SAM_PRIORS, main] + ([PRESETS[preset]] if preset else []) + list(extra)


def checked_workflow(files, workflow_type: str, caplog, run_id: str = "run", **overrides) -> ConfigWorkflow:
    """``files`` as MONAI's ``ConfigWorkflow`` of ``workflow_type`` (``train`` / ``infer``), initialised, after asserting
    that it passes ``check_properties`` without a warning about a property (MONAI Label reads several of them)."""
    caplog.set_level(logging.WARNING)
    workflow = ConfigWorkflow(config_file=files, workflow_type=workflow_type, meta_file=METADATA, logging_file=False,
                              run_id=run_id, **overrides)
    workflow.initialize()
    assert workflow.check_properties() == []
    assert not [r for r in caplog.records if "property" in r.getMessage().lower()]
    return workflow


def initialized_training(files, meta_file: str, **overrides) -> ConfigWorkflow:
    """The ``training`` run of ``files`` with ``overrides``, initialised but not run (to attach handlers first)."""
    workflow = ConfigWorkflow(config_file=list(files), workflow_type="train", run_id="training", logging_file=False,
                              meta_file=meta_file, **overrides)
    workflow.initialize()
    return workflow


def run_workflow(files, run_id: str, workflow_type: str, **overrides) -> ConfigWorkflow:
    """Run a bundle config in-process like ``python -m monai.bundle run RUN_ID``; returns the finished workflow."""
    workflow = ConfigWorkflow(
        config_file=list(files), workflow_type=workflow_type, run_id=run_id, logging_file=False,
        meta_file=METADATA, **overrides,
    )
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    return workflow


def train(data: PhantomSet, work: Path, **overrides) -> ConfigWorkflow:
    """Tiny training run of ``data``'s preset, outputs under ``work``."""
    return run_workflow(config_files(data.preset), "training", "train", **{**TINY, **data.overrides(work), **overrides})


def evaluate(data: PhantomSet, work: Path, **overrides) -> dict:
    """Evaluate the model of ``work`` on the testing split; returns the metrics summary written."""
    workflow = run_workflow(
        config_files(data.preset, EVALUATE), "evaluating", "train", **{**TINY, **data.overrides(work), **overrides}
    )
    eval_dir = workflow.parser.get_parsed_content("eval_dir")
    with open(os.path.join(eval_dir, "metrics_summary.json")) as f:
        return json.load(f)


def infer(data: PhantomSet, work: Path, files=None, **overrides) -> ConfigWorkflow:
    """Run ``configs/inference.json`` alone (everything else comes from the model card) with the model folder of
    ``work``; predictions in ``work/predictions``. ``files``: other config files to merge (default none)."""
    base = data.overrides(work)
    keys = {"bundle_root": base["bundle_root"], "dataset_dir": base["dataset_dir"], "datalist": base["datalist"],
            "prior_cache_dir": base["prior_cache_dir"], "model_dir": overrides.pop("ckpt_dir", base["ckpt_dir"]),
            "output_dir": str(work / "predictions"), **overrides}
    return run_workflow(files or [INFERENCE], "inferring", "infer", **keys)


def untrained_model(work: Path, preset: str | None = "brats", **overrides) -> Path:
    """A model folder (``work/models``) of the training config's untrained network, with its card: what a training
    run with ``overrides`` would write, without training."""
    parser = ConfigParser()
    parser.read_config(config_files(preset))
    parser.read_meta(METADATA)
    parser.update({**TINY, "ckpt_dir": str(work / "models"), **overrides})
    folder = work / "models"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), folder / "model.pt")
    card = {**parser.get_parsed_content("model_card"), "best_metric": 0.0, "best_epoch": 0}
    write_card(folder / "model_card.json", card)
    return folder


METRICS = {"dice", "jaccard", "hd95", "slice_dice", "slice_jaccard", "slice_assd", "slice_hd95"}


def tensorboard_tags(log_dir: Path) -> tuple[dict, dict]:
    """``(tags by kind, {text tag: text})`` of the event files in ``log_dir``."""
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    texts = {t: events.Tensors(t)[-1].tensor_proto.string_val[0].decode() for t in tags["tensors"]}
    return tags, texts


def check_training_outputs(work: Path, class_names: list[str], channel_names: list[str]) -> str:
    """Best model, last checkpoint and TensorBoard logs of a finished 1-epoch run; returns the prior-generator text."""
    state = torch.load(work / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())  # a bare network state_dict
    last = torch.load(work / "run" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert set(last) == {"network", "optimizer", "lr_scheduler", "best_model", "trainer", "info"}
    assert last["trainer"]["iteration"] == last["trainer"]["epoch_length"] and last["best_model"]["_saved"]
    assert last["info"]["channel_names"] == channel_names
    tags, texts = tensorboard_tags(work / "run")
    expected = {"train_loss", "lr", "train_mean_dice", "val_mean_dice"} | {f"val_mean_dice_{c}" for c in class_names}
    assert expected <= set(tags["scalars"])
    images = set(tags["images"])
    assert {"val/case0/label0", "val/case0/pred0"} <= images
    for name in channel_names:
        if "+" not in name:  # "CT+sam_seg_prior" is computed in the network input, the logger shows the parts
            assert f"val/case0/{name}" in images
    (text,) = [v for k, v in texts.items() if k.startswith("prior_generator")]
    return text


def check_predictions(data: PhantomSet, work: Path, values: set[int]) -> None:
    """One label map per testing case, on the input's grid (shape and affine) with the dataset's label values."""
    outputs = sorted((work / "predictions").glob("*_pred.nii.gz"))
    assert len(outputs) == len(data.cases["testing"]) == 1
    with open(data.datalist) as f:
        (entry,) = json.load(f)["testing"]
    reference = nib.load(data.root / entry["label"])
    prediction = nib.load(outputs[0])
    assert prediction.shape == reference.shape
    np.testing.assert_allclose(prediction.affine, reference.affine, atol=1e-4)
    found = set(np.unique(np.asarray(prediction.dataobj)).astype(int).tolist())
    assert found <= values


def check_summary(summary: dict, class_names: list[str], prior_mode: str, generator: str | None) -> None:
    assert summary["n_cases"] == 1 and summary["class_names"] == class_names
    assert set(summary["metrics"][class_names[0]]) == METRICS
    assert summary["tags"]["prior_mode"] == prior_mode and summary["tags"]["prior_generator"] == generator


MULTI_GPU = str(CONFIGS / "multi_gpu_train.json")


def torchrun(files, run_id: str = "training", nproc: int = 2, timeout: int = 600, launcher_args=(), **overrides):
    """``torchrun --standalone --nproc_per_node NPROC [LAUNCHER_ARGS] -m monai.bundle run RUN_ID`` of ``files`` with
    ``overrides``, in a subprocess (one thread per process, gloo on the CPU); returns the finished ``CompletedProcess``.
    """
    args = []
    for key, value in overrides.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               *launcher_args, "-m", "monai.bundle", "run", run_id, "--config_file", repr([str(f) for f in files]),
               *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
