"""WeakMedSAM end to end on phantoms with a small real SAM: every stage, resume, label-free early stages."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from weak_utils import run_weak
from workflow_utils import CONFIGS, PRESETS, SAM_PRIORS, TRAIN, tensorboard_tags

from bundle.data.summaries import summary_record
from bundle.errors import InputError, RunSettingsError, exception_chain
from bundle.hashing import path_sha256
from bundle.workflows.common.checkpoints import EpochCheckpointSaver
from bundle.workflows.weak.panels import PANELS
from bundle.workflows.weak.pipeline import STAGES


class _Killed(Exception):
    pass


def _summary(work) -> dict:
    return json.loads((work / "run" / "weak_summary.json").read_text())


def test_brats_pipeline_end_to_end_and_resume(phantom_set, tmp_path, shapes_sam_checkpoint, monkeypatch):
    data = phantom_set("brats")
    # output folders relative to the working directory, as a user's command line gives them
    monkeypatch.chdir(tmp_path)
    sam = {"priors#sam_checkpoint": str(shapes_sam_checkpoint), "output_dir": "run", "model_dir": "models",
           "prior_cache_dir": "priors"}
    run_weak(data, tmp_path, **sam)
    summary = _summary(tmp_path)
    assert list(summary) == list(STAGES)
    assert summary["sam_features"]["computed"] == summary["sam_features"]["cases"] == 3  # training + validation

    # pseudo labels: one NIfTI per training / validation case, in the image file's grid, values of the WT group
    pseudo = json.loads((tmp_path / "run" / "pseudo_datalist.json").read_text())
    original = json.loads(data.datalist.read_text())
    for section in ("training", "validation"):
        for entry, source in zip(pseudo[section], original[section]):
            label = nib.load(entry["label"])
            image_file = entry["image"][0] if isinstance(entry["image"], list) else entry["image"]
            image = nib.load(image_file)
            assert label.shape == image.shape[:3]
            np.testing.assert_allclose(label.affine, image.affine, atol=1e-5)
            assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1}
            assert "slice_labels" not in entry and entry["label"] != source["label"]
    assert [e["label"] for e in pseudo["testing"]] == [str(data.root / e["label"]) for e in original["testing"]]

    quality = json.loads((tmp_path / "run" / "pseudo_label_quality.json").read_text())
    assert set(quality["mean"]) == {"pseudo_label", "cam_label"}
    # the same report is kept with the labels of its configuration
    kept = Path(quality["pseudo_labels"]["partition"]) / "quality.json"
    assert json.loads(kept.read_text()) == quality and quality["pseudo_labels"]["settings"]["logit_scale"] == 1.0
    assert set(quality["mean"]["pseudo_label"]) == {"tumour"}
    assert len(quality["cases"]) == 3

    # the final network was trained on the pseudo labels and evaluated on the real test labels, both metric families
    seg_run = tmp_path / "run" / "segmentation"
    assert (tmp_path / "models" / "segmentation" / "model.pt").is_file()
    reports = list(seg_run.glob("eval_testing_*/metrics_summary.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert {"dice", "hd95", "slice_dice"} <= set(json.dumps(report).replace('"', " ").split())
    # and the authors' slice distances next to them (256 trimmed frame, region-based, pooled over slices)
    tumour = report["metrics"]["tumour"]
    assert {"slice_hd95", "slice_assd", "authors_hd95", "authors_assd", "authors_slices"} <= set(tumour)
    assert tumour["authors_hd95"]["pooled_by"] == "authors_slices"

    tags, _ = tensorboard_tags(tmp_path / "run")
    panels = {t.rsplit("/", 1)[-1] for t in tags["images"] if t.startswith("weak/")}
    assert panels == set(PANELS)
    assert "classifier/train_loss" in tags["scalars"]

    # a second run finds every stage's work: nothing is computed again, the classifier is reused
    stamp = (tmp_path / "models" / "classifier.pt").stat().st_mtime_ns
    run_weak(data, tmp_path, **sam)
    again = _summary(tmp_path)
    assert again["sam_features"]["computed"] == 0 and again["pseudo_labels"]["computed"] == 0
    assert (tmp_path / "models" / "classifier.pt").stat().st_mtime_ns == stamp


def test_pseudo_labels_resume_case_by_case(phantom_set, tmp_path, shapes_sam_checkpoint):
    data = phantom_set("lits")
    sam = {"priors#sam_checkpoint": str(shapes_sam_checkpoint)}
    for stage in ("sam_features", "subclasses", "classifier", "pseudo_labels"):
        run_weak(data, tmp_path, stage, **sam)
    cache = _summary(tmp_path)["pseudo_labels"]["cache"]
    first = sorted(p for p in (tmp_path / "priors").rglob("entry.json") if str(p).startswith(cache))
    assert len(first) == 3
    shutil.rmtree(first[0].parent)  # as if the run had been killed while writing this case
    run_weak(data, tmp_path, "pseudo_labels", **sam)
    assert _summary(tmp_path)["pseudo_labels"]["computed"] == 1


def test_label_free_stages_never_read_label_voxels(phantom_set, tmp_path, shapes_sam_checkpoint):
    """Label files replaced by garbage: the first four stages still run; the quality report fails naming the file.

    The datalist's records of the label files (:mod:`bundle.data.summaries`) are made to vouch for the garbage:
    otherwise the stages refuse the changed files before any work, without reading their voxels either."""
    data = phantom_set("abdomenct1k")
    root = tmp_path / "data"
    shutil.copytree(data.root, root)
    datalist = json.loads((root / "datalist.json").read_text())
    labels = {root / e["label"] for section in ("training", "validation", "testing") for e in datalist[section]}
    assert len(labels) == 4
    for path in labels:
        path.write_bytes(b"not a NIfTI file")
    for section in ("training", "validation", "testing"):  # records vouching for the garbage: only voxels would tell
        for entry in datalist[section]:
            entry["summarised"] = summary_record(root / entry["label"])
    (root / "datalist.json").write_text(json.dumps(datalist))
    copy = type(data)(data.preset, root, root / "datalist.json", data.cases)
    sam = {"priors#sam_checkpoint": str(shapes_sam_checkpoint)}
    for stage in ("sam_features", "subclasses", "classifier", "pseudo_labels"):
        run_weak(copy, tmp_path, stage, **sam)
    pseudo = json.loads((tmp_path / "run" / "pseudo_datalist.json").read_text())
    values = set()
    for entry in pseudo["training"] + pseudo["validation"]:
        values |= set(np.unique(np.asarray(nib.load(entry["label"]).dataobj)).tolist())
    assert values <= {0, 1, 2, 3, 4}
    with pytest.raises(RuntimeError) as failed:  # the bundle parser wraps the stage's error
        run_weak(copy, tmp_path, "pseudo_quality", **sam)
    cause = failed.value.__cause__
    assert isinstance(cause, InputError) and cause.path in {str(p) for p in labels}


def test_user_network_features_cam_peaks_cam_labels_and_authors_loss(phantom_set, tmp_path, shapes_sam_checkpoint):
    """Options: sub-classes from a user's network and weights, prompts at the CAM peaks, the segmentation on CAM-alone
    labels with the authors' loss preset."""
    from monai.networks.nets import resnet10

    data = phantom_set("brats")
    weights = tmp_path / "resnet10.pt"
    torch.manual_seed(0)
    torch.save(resnet10(spatial_dims=2, n_input_channels=4, feed_forward=False).state_dict(), weights)
    extractor = {"_target_": "bundle.workflows.weak.extractors.NetworkFeatures",
                 "network": {"_target_": "monai.networks.nets.resnet10", "spatial_dims": 2, "n_input_channels": 4,
                             "feed_forward": False},
                 "weights": str(weights), "loader": "@volume_transform", "roi_size": "@roi_size"}
    authors = str(CONFIGS / "presets" / "weak_seg_authors.json")
    run_weak(data, tmp_path, **{"priors#sam_checkpoint": str(shapes_sam_checkpoint)}, feature_extractor=extractor,
             pam_placement="cam_peaks", seg_labels="cam_label", seg_extra_configs=[authors])

    record = json.loads((tmp_path / "run" / "subclasses.json").read_text())
    assert record["signature"]["features"]["weights_sha256"] == path_sha256(weights)
    # with cam_peaks the feature cache holds embeddings only: M comes from prompts placed on each slice's CAM
    partitions = [json.loads(p.read_text())["signature"]["prior"]
                  for p in (tmp_path / "priors" / "weak").glob("*/partition.json")]
    features = [p for p in partitions if "weak_features" in p]
    assert len(features) == 1 and features[0]["kinds"] == [] and "miner" not in features[0]
    pseudo = json.loads((tmp_path / "run" / "pseudo_datalist_cam_label.json").read_text())
    assert all(Path(e["label"]).name.startswith("cam_label.") for e in pseudo["training"])
    assert (tmp_path / "models" / "segmentation_cam_label" / "model.pt").is_file()
    assert list((tmp_path / "run" / "segmentation_cam_label").glob("eval_testing_*/metrics_summary.json"))


def test_authors_loss_preset_builds_a_background_weighted_bce(phantom_set, tmp_path):
    data = phantom_set("abdomenct1k")
    files = [SAM_PRIORS, TRAIN, PRESETS["abdomenct1k"], str(CONFIGS / "presets" / "weak_seg_authors.json")]
    parser = ConfigParser()
    parser.read_config(files)
    parser.update({**data.overrides(tmp_path), "device": "cpu"})
    loss = parser.get_parsed_content("loss")
    assert isinstance(loss, torch.nn.BCEWithLogitsLoss)
    assert loss.pos_weight.shape == (4, 1, 1) and float(loss.pos_weight.max()) == pytest.approx(0.1)
    assert parser.get_parsed_content("optimizer").defaults["weight_decay"] == pytest.approx(0.1)


def test_interrupted_classifier_resumes_at_its_last_epoch(phantom_set, tmp_path, shapes_sam_checkpoint, monkeypatch,
                                                          caplog):
    data = phantom_set("lits")
    sam = {"priors#sam_checkpoint": str(shapes_sam_checkpoint), "max_epochs": 2}
    run_weak(data, tmp_path, "sam_features", **sam)
    saver = EpochCheckpointSaver.__call__

    def save_then_die(self, engine=None):
        saver(self, engine)
        raise _Killed  # the process dies right after the first epoch's checkpoint

    monkeypatch.setattr(EpochCheckpointSaver, "__call__", save_then_die)
    with pytest.raises(RuntimeError) as stopped:
        run_weak(data, tmp_path, "classifier", **sam)
    assert isinstance(stopped.value.__cause__, _Killed)
    assert not (tmp_path / "models" / "classifier.pt").exists()
    monkeypatch.undo()

    with caplog.at_level(logging.INFO):
        run_weak(data, tmp_path, "classifier", **sam)
    assert "at epoch 1" in caplog.text  # ResumeFromCheckpoint: "resuming from ... at epoch 1"
    last = torch.load(tmp_path / "run" / "classifier_last.pt", map_location="cpu", weights_only=True)
    trainer = last["trainer"]
    assert trainer["iteration"] == 2 * trainer["epoch_length"]
    assert (tmp_path / "models" / "classifier.pt").is_file()

    # a larger max_epochs trains on from the finished run, its OneCycle schedule stretched
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_weak(data, tmp_path, "classifier", **{**sam, "max_epochs": 3})
    assert "at epoch 2" in caplog.text and "OneCycle schedule goes on over" in caplog.text
    assert torch.load(tmp_path / "models" / "classifier.pt", weights_only=True)["epochs"] == 3

    # other settings never continue, keep or silently replace that run: refused before any stage, naming the
    # setting; --resume false trains afresh
    with pytest.raises(RuntimeError) as refused:
        run_weak(data, tmp_path, "classifier", **{**sam, "learning_rate": 3e-4})
    (error,) = [e for e in exception_chain(refused.value) if isinstance(e, RunSettingsError)]
    assert error.path == str(tmp_path / "models" / "classifier.pt")
    assert "training.learning_rate 0.0001 -> 0.0003" in str(error) and "--resume false" in str(error)
    with pytest.raises(RuntimeError) as refused:  # nor are pseudo labels made with it as if it were this run's
        run_weak(data, tmp_path, "pseudo_labels", **{**sam, "learning_rate": 3e-4})
    assert any(isinstance(e, RunSettingsError) for e in exception_chain(refused.value))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_weak(data, tmp_path, "classifier", **{**sam, "learning_rate": 3e-4, "resume": False})
    assert "resume=false" in caplog.text and "at epoch" not in caplog.text
    stored = torch.load(tmp_path / "models" / "classifier.pt", weights_only=True)
    assert stored["card"]["training"]["learning_rate"] == 3e-4 and stored["epochs"] == 2


def test_wrong_datalist_fails_before_any_sam_work(phantom_set, tmp_path, shapes_sam_checkpoint):
    data = phantom_set("lits")
    with pytest.raises(RuntimeError) as failed:
        run_weak(data, tmp_path, **{"priors#sam_checkpoint": str(shapes_sam_checkpoint)}, task="brats_wt")
    cause = failed.value.__cause__
    assert isinstance(cause, InputError) and cause.path == str(data.datalist)
    assert "brats_wt" in str(cause) and "'lits'" in str(cause)
    assert not list(tmp_path.rglob("partition.json"))  # no feature was computed


@pytest.mark.parametrize(("section", "run_id", "stage"), [("testing", "training", "evaluation"),
                                                          ("testing", "evaluating", "evaluation"),
                                                          ("validation", "segmentation", "segmentation")])
def test_an_empty_split_a_stage_needs_is_refused_before_the_first_stage(phantom_set, tmp_path, tiny_sam_checkpoint,
                                                                       section, run_id, stage):
    data = phantom_set("brats")
    datalist = json.loads(data.datalist.read_text())
    datalist[section] = []
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(datalist))
    with pytest.raises(RuntimeError) as failed:
        run_weak(type(data)(data.preset, data.root, path, data.cases), tmp_path, run_id,
                 **{"priors#sam_checkpoint": str(tiny_sam_checkpoint)})
    cause = failed.value.__cause__
    assert isinstance(cause, InputError) and cause.path == str(path)
    assert f"the {section} section is empty" in str(cause) and repr(stage) in str(cause)
    assert not list(tmp_path.rglob("partition.json")) and not (tmp_path / "models").exists()


def test_an_edited_label_is_refused_before_any_sam_work(phantom_set, tmp_path, tiny_sam_checkpoint):
    data = phantom_set("brats")
    root = tmp_path / "data"
    shutil.copytree(data.root, root)
    label = root / json.loads(data.datalist.read_text())["validation"][0]["label"]
    image = nib.load(str(label))
    volume = np.asarray(image.dataobj).copy()
    volume[volume == 4] = 1  # enhancing tumour relabelled as necrosis: the slice rows of 4 are stale
    nib.save(nib.Nifti1Image(volume, image.affine, image.header), str(label))
    copied = type(data)(data.preset, root, root / data.datalist.name, data.cases)
    with pytest.raises(RuntimeError) as failed:
        run_weak(copied, tmp_path / "work", "sam_features", **{"priors#sam_checkpoint": str(tiny_sam_checkpoint)})
    cause = failed.value.__cause__
    assert isinstance(cause, InputError) and cause.path == str(label) and "prepare_datalist" in str(cause)
    assert not list(tmp_path.rglob("partition.json"))


def test_training_config_passes_check_properties_without_sam_work(phantom_set, tmp_path, tiny_sam_checkpoint, caplog):
    """configs/train_weak.json is a MONAI train workflow: train#trainer is the classifier's SupervisedTrainer,
    train#dataset its slices, network_def the classifier. Checking it computes no SAM feature and loads no volume; the
    training run then trains the classifier with that trainer."""
    from monai.engines import SupervisedTrainer
    from weak_utils import weak_files, weak_overrides
    from workflow_utils import checked_workflow

    data = phantom_set("brats")
    workflow = checked_workflow(weak_files("brats"), "train", caplog, "training",
                                **weak_overrides(data, tmp_path, **{"priors#sam_checkpoint": str(tiny_sam_checkpoint)}))
    assert isinstance(workflow.trainer, SupervisedTrainer) and workflow.trainer.network is workflow.network_def
    assert not workflow.train_dataset.volumes.filled and len(workflow.train_dataset) > 0
    weak_cache = Path(workflow.parser.get_parsed_content("weak_cache_dir"))
    assert not [f for f in weak_cache.rglob("*") if f.is_file()] and not (tmp_path / "run" / "subclasses.json").exists()
    workflow.run()
    assert workflow.trainer.state.epoch == 1 and (tmp_path / "models" / "classifier.pt").is_file()
    assert "subclasses" in torch.load(tmp_path / "models" / "classifier.pt", weights_only=True)["card"]


def test_the_classifier_stage_needs_the_configs_trainer(phantom_set, tmp_path):
    from bundle.workflows.weak.pipeline import WeakPipeline

    with pytest.raises(ValueError, match="the classifier stage trains with train#trainer"):
        WeakPipeline.run(object(), "classifier")


def test_a_trainer_epochs_override_unlike_the_card_is_refused_before_the_first_stage(phantom_set, tmp_path,
                                                                                     tiny_sam_checkpoint):
    data = phantom_set("brats")
    with pytest.raises(Exception) as info:
        run_weak(data, tmp_path, **{"priors#sam_checkpoint": str(tiny_sam_checkpoint), "train#trainer#max_epochs": 3})
    assert any("train#trainer#max_epochs 3 differs from max_epochs 1" in str(e) for e in exception_chain(info.value))
    with pytest.raises(Exception) as info:  # another dataset object would not be read by the trainer's loader
        run_weak(data, tmp_path, **{"priors#sam_checkpoint": str(tiny_sam_checkpoint),
                                    "train#dataset": {"_target_": "Dataset", "data": []}})
    assert any("train#dataset: Dataset is not what the trainer reads" in str(e) for e in exception_chain(info.value))
    assert not (tmp_path / "run" / "weak_summary.json").exists() and not (tmp_path / "run" / "subclasses.json").exists()
