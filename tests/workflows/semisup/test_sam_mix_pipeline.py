"""SAM-Mix end to end on LiTS phantoms with the tiny SAM: train, resume, evaluate both ways, infer, baselines."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from semisup_utils import TINY_MIX, TRAIN_SAM_MIX, infer_mix, mix_files, mix_overrides, run_mix
from workflow_utils import CONFIGS, METADATA, checked_workflow, initialized_training, tensorboard_tags

from bundle.errors import InputError, RunSettingsError, exception_chain
from bundle.sam.adapter import read_adapter
from bundle.workflows.common.checkpoints import INFO_KEY
from bundle.workflows.semisup.data import draw_labelled_slices, labelled_count
from bundle.workflows.semisup.pipeline import run_name


@pytest.fixture(scope="module")
def lits(phantom_set):
    return phantom_set("lits")


@pytest.fixture(scope="module")
def trained(lits, tiny_sam_checkpoint, tmp_path_factory):
    work = tmp_path_factory.mktemp("sam_mix")
    run_mix(lits, work, tiny_sam_checkpoint, max_epochs=2)
    return work


def test_training_writes_model_adapter_card_and_tensorboard(trained, tiny_sam_checkpoint):
    stored = torch.load(trained / "models" / "model.pt", weights_only=True)
    card = stored["card"]
    assert card["method"] == "sam_mix" and card["organ"] == "liver" and card["organ_values"] == [1, 2]
    assert card["num_labelled"] == 2 and len(card["labelled_slices"]) == 2
    assert card["sam"]["model_type"] == "tiny" and card["sam"]["lora_rank"] == 4
    assert card["sam"]["guidance"] == "fixed" and torch.equal(stored["guidance_gain"], torch.ones(64))  # the paper's
    assert card["training"]["max_epochs"] == 2 and card["training"]["seg_weight"] == 0.5
    config = json.loads(Path(TRAIN_SAM_MIX).read_text())
    # the config's defaults, recorded so that evaluation and inference rebuild the same classifier
    assert card["training"]["train_prompts"] == config["train_prompts"] and "gt_boxes" not in card["training"]
    assert card["classifier"]["output_stride"] == config["output_stride"] == 8
    adapter = read_adapter(trained / "models" / "adapter.pt")
    assert adapter["base"]["checkpoint_sha256"] == card["sam"]["checkpoint_sha256"]
    assert any(".lora_" in k for k in adapter["state"])
    tags, _ = tensorboard_tags(trained / "run")
    assert {"train/loss", "train/cls_loss", "train/seg_loss"} <= set(tags["scalars"])
    assert any(tag.startswith("panels/") for tag in tags["images"])
    last = torch.load(trained / "run" / "sam_mix_last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 2 * last["trainer"]["epoch_length"] and last[INFO_KEY]["card"] == card


def test_labelled_slices_depend_on_the_seed_and_hold_the_organ(lits, trained, tiny_sam_checkpoint, tmp_path):
    card = torch.load(trained / "models" / "model.pt", weights_only=True)["card"]
    datalist = json.loads(lits.datalist.read_text())
    labels = {e["case_id"]: e["slice_labels"] for e in datalist["training"]}
    for drawn in card["labelled_slices"]:
        per_value = labels[drawn["case_id"]]  # {"1": [0/1 per slice], "2": [...]}
        assert per_value["1"][drawn["slice_index"]] or per_value["2"][drawn["slice_index"]]
    from bundle.data.slice_dataset import slice_items
    from bundle.workflows.semisup.data import draw_labelled_slices, organ_task

    items = slice_items(datalist["training"], organ_task("lits"))
    draws = {tuple((d["case_id"], d["slice_index"]) for d in draw_labelled_slices(items, 2, s)) for s in range(6)}
    assert len(draws) > 1
    assert draw_labelled_slices(items, 2, 0) == card["labelled_slices"]


def test_a_finished_model_is_reused(lits, trained, tiny_sam_checkpoint):
    model = trained / "models" / "model.pt"
    stamp = model.stat().st_mtime_ns
    run_mix(lits, trained, tiny_sam_checkpoint, max_epochs=2)
    assert model.stat().st_mtime_ns == stamp  # same card: nothing trained again


def test_other_settings_are_refused_not_reused(lits, trained, tiny_sam_checkpoint):
    model = trained / "models" / "model.pt"
    stamp = model.stat().st_mtime_ns
    with pytest.raises(RuntimeError) as refused:
        run_mix(lits, trained, tiny_sam_checkpoint, max_epochs=2, learning_rate=3e-4)
    (error,) = [e for e in exception_chain(refused.value) if isinstance(e, RunSettingsError)]
    assert error.path == str(model) and "training.learning_rate " in str(error) and "-> 0.0003" in str(error)
    assert "--resume false" in str(error)
    assert model.stat().st_mtime_ns == stamp


class _Killed(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_last_epoch(lits, tiny_sam_checkpoint, tmp_path):
    def train(callback, max_epochs=2):
        """The training run of train_sam_mix.json with ``callback`` after every epoch, as ``run training`` does."""
        wf = initialized_training(mix_files("lits"), METADATA,
                                  **mix_overrides(lits, tmp_path, tiny_sam_checkpoint, max_epochs=max_epochs))
        sam_mix = wf.parser.get_parsed_content("sam_mix")
        sam_mix._panel_callback = lambda: callback  # before train#trainer builds the training run
        return sam_mix.train(wf.parser.get_parsed_content("train#trainer"))

    def kill_after_epoch_1(engine):
        if engine.state.epoch == 1:
            raise _Killed

    with pytest.raises(_Killed):
        train(kill_after_epoch_1)
    assert not (tmp_path / "models" / "model.pt").exists()
    last = tmp_path / "run" / "sam_mix_last.pt"
    state = torch.load(last, weights_only=True)["trainer"]
    epoch_length = state["epoch_length"]
    assert state["iteration"] == epoch_length  # killed after epoch 1, its checkpoint written

    seen = []
    train(lambda engine: seen.append((engine.state.epoch, engine.state.iteration)))
    assert seen == [(2, 2 * epoch_length)]  # only epoch 2 ran, continuing the iteration count
    assert (tmp_path / "models" / "adapter.pt").is_file()

    seen.clear()  # a larger max_epochs trains on from the finished run
    train(lambda engine: seen.append((engine.state.epoch, engine.state.iteration)), max_epochs=3)
    assert seen == [(3, 3 * epoch_length)]
    assert torch.load(tmp_path / "models" / "model.pt", weights_only=True)["epochs"] == 3


def test_evaluation_reports_fair_and_anchor_separately(lits, trained, tiny_sam_checkpoint):
    run_mix(lits, trained, tiny_sam_checkpoint, run_id="evaluating", max_epochs=2)
    both = json.loads((trained / "run" / "eval" / "sam_mix_evaluation.json").read_text())
    assert set(both["protocols"]) == {"fair", "anchor"}
    assert "CAM box" in both["protocols"]["fair"]["description"]
    assert "tight box of that ground truth" in both["protocols"]["anchor"]["description"]
    fair = json.loads((trained / "run" / "eval" / "fair" / "metrics_summary.json").read_text())
    anchor = json.loads((trained / "run" / "eval" / "anchor" / "metrics_summary.json").read_text())
    assert fair["tags"]["protocol"] == "fair" and anchor["tags"]["protocol"] == "anchor"
    assert set(fair["metrics"]["liver"]) == {"dice", "hd95"}
    # the bundle's own anchor metrics, and next to them ADA-SAM's HD (1024 px, pooled over slices), labelled authors_
    assert set(anchor["metrics"]["liver"]) == {"slice_dice", "slice_hd95_px", "authors_hd_px1024", "authors_slices",
                                              "authors_empty_pred_slices"}
    assert anchor["metrics"]["liver"]["authors_hd_px1024"]["pooled_by"] == "authors_slices"
    assert "1024 x 1024" in anchor["metric_definitions"]["authors_hd_px1024"]
    assert fair["n_cases"] == len(lits.cases["testing"])
    assert 0.0 <= anchor["metrics"]["liver"]["slice_dice"]["mean"] <= 1.0


def test_inference_writes_masks_in_each_input_files_grid(lits, trained, tmp_path):
    source = lits.root / json.loads(lits.datalist.read_text())["testing"][0]["image"]
    img = nib.load(source)
    flipped = tmp_path / "flipped.nii.gz"  # an LPS-ordered copy: the output must follow the file, not RAS
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1, ::-1], img.affine @ np.diag([-1, -1, 1, 1]) @
                             np.array([[1, 0, 0, img.shape[0] - 1], [0, 1, 0, img.shape[1] - 1], [0, 0, 1, 0],
                                       [0, 0, 0, 1]])), flipped)
    out = tmp_path / "pred"
    infer_mix(trained / "models", out, input_files=[str(source), str(flipped)])
    summary = json.loads((out / "inference_summary.json").read_text())
    assert [r["status"] for r in summary] == ["written", "written"]
    masks = []
    for record, path in zip(summary, (source, flipped)):
        written, original = nib.load(record["output"]), nib.load(path)
        assert written.shape == original.shape
        np.testing.assert_allclose(written.affine, original.affine, atol=1e-5)
        assert set(np.unique(written.get_fdata())) <= {0.0, 1.0}
        masks.append(np.asarray(written.dataobj))
    np.testing.assert_array_equal(masks[0], masks[1][::-1, ::-1])  # the same anatomy, the same mask
    infer_mix(trained / "models", out, input_files=[str(source)])
    assert json.loads((out / "inference_summary.json").read_text())[0]["status"] == "exists"


def test_inference_keeps_only_outputs_of_this_model_and_input(lits, trained, tmp_path):
    """A rerun keeps an output only when this model.pt wrote it from this input; files it did not write stay as
    they are (a dataset's own label named like an output, an edited output)."""
    original = lits.root / json.loads(lits.datalist.read_text())["testing"][0]["image"]
    source = tmp_path / f"case{''.join(original.suffixes)}"
    shutil.copy(original, source)
    out = tmp_path / "pred"
    infer_mix(trained / "models", out, input_files=[str(source)])
    records_path = out / "inference_records.json"
    (output,) = json.loads(records_path.read_text())
    records = json.loads(records_path.read_text())
    records[output]["model_sha256"] = "0" * 64  # as if another model had written it
    records_path.write_text(json.dumps(records))
    infer_mix(trained / "models", out, input_files=[str(source)])
    assert json.loads((out / "inference_summary.json").read_text())[0]["status"] == "written"
    infer_mix(trained / "models", out, input_files=[str(source)])
    assert json.loads((out / "inference_summary.json").read_text())[0]["status"] == "exists"
    img = nib.load(source)  # the scan replaced under the same name
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine), source)
    infer_mix(trained / "models", out, input_files=[str(source)])
    assert json.loads((out / "inference_summary.json").read_text())[0]["status"] == "written"
    Path(output).write_bytes(b"a file the workflow did not write")
    with pytest.raises(Exception) as info:
        infer_mix(trained / "models", out, input_files=[str(source)])
    found = [e for e in exception_chain(info.value) if isinstance(e, InputError)]
    assert found and found[0].path == output and "never written over" in str(found[0])
    assert Path(output).read_bytes() == b"a file the workflow did not write"


@pytest.mark.parametrize("method", ["unet", "zero_shot"])
def test_baselines_train_and_evaluate(lits, tiny_sam_checkpoint, tmp_path, method):
    # the zero-shot baseline trains no segmentation: it needs no labelled slice
    num_labelled = 0 if method == "zero_shot" else 2
    run_mix(lits, tmp_path, tiny_sam_checkpoint, method=method, num_labelled=num_labelled)
    card = torch.load(tmp_path / "models" / "model.pt", weights_only=True)["card"]
    assert card["method"] == method and card["num_labelled"] == len(card["labelled_slices"]) == num_labelled
    assert not (tmp_path / "models" / "adapter.pt").exists()
    if method == "zero_shot":
        assert card["sam"]["lora_rank"] == 0 and not card["classifier"]["dense_guidance"]
    run_mix(lits, tmp_path, tiny_sam_checkpoint, run_id="evaluating", method=method)
    both = json.loads((tmp_path / "run" / "eval" / "sam_mix_evaluation.json").read_text())
    assert both["tags"]["method"] == method and set(both["protocols"]) == {"fair", "anchor"}


def test_too_few_positive_slices_fail_before_any_model_is_built(lits, tiny_sam_checkpoint, tmp_path):
    with pytest.raises(Exception) as info:
        run_mix(lits, tmp_path, tiny_sam_checkpoint, num_labelled=10_000)
    found = [e for e in exception_chain(info.value) if isinstance(e, InputError)]
    assert found and "10000 labelled slices" in str(found[0]) and str(lits.datalist) in str(found[0])
    assert not (tmp_path / "models" / "model.pt").exists()


def test_evaluating_another_organ_than_trained_is_refused(lits, trained, tiny_sam_checkpoint):
    with pytest.raises(Exception) as info:
        run_mix(lits, trained, tiny_sam_checkpoint, run_id="evaluating", max_epochs=2, organ="tumour",
                organ_values=[2])
    message = " ".join(str(e) for e in exception_chain(info.value) if isinstance(e, InputError))
    assert "model.pt" in message and "trained on liver" in message


@pytest.mark.parametrize("name", ["anatomical.nii", "reoriented_anat_moved.nii"])
def test_inference_on_nibabel_files_keeps_their_grid(trained, tmp_path, name):
    """Files nibabel's tests ship (big-endian int16 in LAS order; 4 mm float32 in RAS): masks land on their grid."""
    from nibabel.testing import data_path

    source = tmp_path / name
    source.write_bytes((Path(data_path) / name).read_bytes())
    infer_mix(trained / "models", tmp_path / "pred", input_files=[str(source)])
    record = json.loads((tmp_path / "pred" / "inference_summary.json").read_text())[0]
    written, original = nib.load(record["output"]), nib.load(source)
    assert record["status"] == "written" and written.shape == original.shape
    np.testing.assert_allclose(written.affine, original.affine, atol=1e-5)


@pytest.mark.parametrize(("value", "method", "fragment"), [
    (2.5, "sam_mix", "2.5 is not a whole number"), ("2.5", "sam_mix", "'2.5' is not a whole number"),
    (True, "sam_mix", "True is not a whole number"), (-1, "zero_shot", "-1 is negative"),
    (0, "sam_mix", "method 'sam_mix' trains its segmentation"), (0, "unet", "method 'unet' trains its segmentation"),
])
def test_num_labelled_must_be_a_whole_number_the_method_can_use(value, method, fragment):
    for check in (lambda: labelled_count(value, method), lambda: run_name(method, "liver", value, 0)):
        with pytest.raises(ValueError) as info:
            check()
        assert str(info.value).startswith("num_labelled: ") and fragment in str(info.value)
    assert labelled_count(0, "zero_shot") == 0 and labelled_count(np.int64(5)) == 5
    assert run_name("zero_shot", "liver", 0, 1) == "zero_shot_n0_liver_seed1"
    assert draw_labelled_slices([{"case_id": "a", "slice_index": 0, "class_label": 1}], 0, seed=0) == []


def test_a_fractional_num_labelled_is_refused_before_any_model_is_built(lits, tiny_sam_checkpoint, tmp_path):
    with pytest.raises(Exception) as info:
        run_mix(lits, tmp_path, tiny_sam_checkpoint, num_labelled=2.5)
    assert any(str(e).startswith("num_labelled: 2.5") for e in exception_chain(info.value))
    assert not list(tmp_path.rglob("model.pt"))


@pytest.mark.parametrize("option, value, message", [
    ("output_stride", 12, "output_stride: 12 is not one of [8, 16, 32]"),
    ("output_stride", 32, "output_stride: 32 is above the stride this ResNet has as built (16"),
    ("train_prompts", "ground_truth", "train_prompts: 'ground_truth' is not one of ['cam', 'gt']"),
])
def test_bad_classifier_and_prompt_options_are_refused_before_any_model_is_built(lits, tiny_sam_checkpoint, tmp_path,
                                                                                option, value, message):
    with pytest.raises(Exception) as info:
        run_mix(lits, tmp_path, tiny_sam_checkpoint, **{option: value})
    assert any(str(e).startswith(message) for e in exception_chain(info.value)), exception_chain(info.value)
    assert not list(tmp_path.rglob("model.pt")) and not list(tmp_path.rglob("*.pt"))


def test_an_edited_label_is_refused_before_any_model_is_built(lits, tiny_sam_checkpoint, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(lits.root, root)
    label = root / json.loads(lits.datalist.read_text())["training"][0]["label"]
    image = nib.load(str(label))
    volume = np.asarray(image.dataobj).copy()
    volume[..., volume.shape[-1] // 2] = 0  # the liver erased from a slice: its slice label in the datalist is stale
    nib.save(nib.Nifti1Image(volume, image.affine, image.header), str(label))
    copied = type(lits)(lits.preset, root, root / lits.datalist.name, lits.cases)
    with pytest.raises(Exception) as info:
        run_mix(copied, tmp_path / "work", tiny_sam_checkpoint)
    found = [e for e in exception_chain(info.value) if isinstance(e, InputError)]
    assert found and found[0].path == str(label) and "prepare_datalist" in str(found[0])
    assert not list(tmp_path.rglob("model.pt"))


def test_inference_config_runs_alone_and_passes_check_properties(lits, trained, tmp_path, caplog):
    """configs/inference_sam_mix.json alone with a model folder is a MONAI infer workflow (dataset, evaluator,
    network_def, inferer), and building it for the check predicts nothing."""
    from bundle.workflows.semisup.predictor import SamMixInferer

    out = tmp_path / "pred"
    workflow = checked_workflow(str(CONFIGS / "inference_sam_mix.json"), "infer", caplog, "inferring",
                                model_dir=str(trained / "models"), dataset_dir=str(lits.root),
                                datalist=str(lits.datalist), output_dir=str(out))
    assert isinstance(workflow.inferer, SamMixInferer) and workflow.evaluator.network is workflow.network_def
    assert len(workflow.dataset) == len(lits.cases["testing"]) and not list(out.glob("*.nii.gz"))
    workflow.run()
    assert len(list(out.glob("*_pred.nii.gz"))) == len(lits.cases["testing"])


def test_training_config_passes_check_properties_without_loading_volumes(lits, tiny_sam_checkpoint, tmp_path,
                                                                          caplog):
    """configs/train_sam_mix.json is a MONAI train workflow (train#trainer is a SupervisedTrainer, train#dataset,
    train#inferer, network_def); checking it loads no volume, and the training run trains with that trainer."""
    from monai.engines import SupervisedTrainer

    workflow = checked_workflow(mix_files("lits"), "train", caplog, "training",
                                **mix_overrides(lits, tmp_path, tiny_sam_checkpoint))
    assert isinstance(workflow.trainer, SupervisedTrainer) and workflow.trainer.network is workflow.network_def
    assert not workflow.train_dataset.volumes.filled and len(workflow.train_dataset) > 0
    workflow.run()
    assert workflow.train_dataset.volumes.filled and workflow.trainer.state.epoch == TINY_MIX["max_epochs"]
    assert (tmp_path / "models" / "model.pt").is_file()


def test_a_trainer_epochs_override_unlike_the_card_is_refused(lits, trained, tiny_sam_checkpoint, tmp_path):
    """Overriding the trainer's epochs alone would train (or, for a finished model, reuse) something the card does not
    say: refused, before training and before reusing."""
    for work in (tmp_path, trained):  # nothing trained yet; a finished model of max_epochs 2
        with pytest.raises(Exception) as info:
            run_mix(lits, work, tiny_sam_checkpoint, **{"max_epochs": 2, "train#trainer#max_epochs": 3})
        assert any("train#trainer#max_epochs 3 differs from max_epochs 2" in str(e)
                   for e in exception_chain(info.value))
    with pytest.raises(Exception) as info:
        run_mix(lits, tmp_path, tiny_sam_checkpoint, **{"train#inferer": {"_target_": "SlidingWindowInferer",
                                                                          "roi_size": [16, 16]}})
    assert any("train#inferer: SlidingWindowInferer would not be used" in str(e) for e in exception_chain(info.value))
    with pytest.raises(Exception) as info:  # another dataset object would not be read by the trainer's loader
        run_mix(lits, tmp_path, tiny_sam_checkpoint, **{"train#dataset": {"_target_": "Dataset", "data": []}})
    assert any("train#dataset: Dataset is not what the trainer reads" in str(e) for e in exception_chain(info.value))
    assert not (tmp_path / "models" / "model.pt").exists()
