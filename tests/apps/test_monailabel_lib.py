"""The MONAI Label app's parts that need no MONAI Label: settings from ``--conf`` and the datastore's datalist."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bundle.data.datalist_io import load_checked_section
from bundle.folders import CONFIGS_DIR
from bundle.priors.settings import PriorSettings

LIB = Path(__file__).resolve().parents[2] / "apps" / "monailabel" / "lib"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"monailabel_app_{name}", LIB / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


settings = _module("settings")
datalist = _module("datalist")

REGIONS = {"liver": [1, 2], "tumour": [2]}


def test_settings_defaults_for_a_folder(tmp_path):
    s = settings.AppSettings.from_conf(str(tmp_path), {"zoo_source": "local", "sam2": "false"})
    assert s.seg_model == settings.REPO_ROOT / "models" and s.cls_model is None and s.preset is None
    assert s.work_dir == tmp_path.resolve() / ".sam_priors"
    assert s.prior_cache == s.work_dir / "cache" and s.train_dir == s.work_dir / "train"
    assert s.device is None and s.dcmqi_download is False


def test_settings_for_dicomweb_and_overrides(tmp_path):
    s = settings.AppSettings.from_conf("http://pacs:8042/dicom-web", {})
    assert s.work_dir == Path.home() / ".cache" / "monailabel" / "sam_priors"
    conf = {"seg_model": str(tmp_path / "m"), "cls_model": str(tmp_path / "c"), "prior_cache": str(tmp_path / "p"),
            "work_dir": str(tmp_path / "w"), "preset": "lits", "device": "cuda:1", "dcmqi_download": "yes"}
    s = settings.AppSettings.from_conf(str(tmp_path), conf)
    assert (s.seg_model, s.cls_model, s.prior_cache, s.work_dir) == tuple(tmp_path / k for k in "mcpw")
    assert (s.preset, s.device, s.dcmqi_download) == ("lits", "cuda:1", True)


@pytest.mark.parametrize("text, value", [("true", True), ("0", False), ("Off", False), (True, True)])
def test_truthy(text, value):
    assert settings.truthy(text) is value


def test_truthy_refuses_other_text():
    with pytest.raises(ValueError, match="dcmqi_download"):
        settings.truthy("maybe", "dcmqi_download")


@pytest.mark.parametrize("path, case_id", [("/s/volume-3.nii", "volume-3"), ("/s/ct 1.nii.gz", "ct_1"),
                                           ("/cache/1.2.840.99", "1.2.840.99")])
def test_case_id_for(path, case_id):
    assert datalist.case_id_for(path) == case_id


def _cases(tmp_path: Path, n: int) -> list[dict]:
    entries = []
    for i in range(n):
        image, label = tmp_path / f"img{i}.nii.gz", tmp_path / "labels" / f"img{i}.nii.gz"
        label.parent.mkdir(exist_ok=True)
        affine = np.diag([0.8, 0.8, 2.5, 1.0])
        nib.save(nib.Nifti1Image(np.random.default_rng(i).normal(size=(8, 8, 4)).astype(np.float32), affine), image)
        nib.save(nib.Nifti1Image(np.eye(8, dtype=np.uint8)[:, :, None].repeat(4, 2) * 2, affine), label)
        entries.append({"image": str(image), "label": str(label)})
    return entries


@pytest.mark.parametrize("n, val_split, n_train, n_val", [(1, 0.2, 1, 1), (2, 0.2, 1, 1), (10, 0.2, 8, 2),
                                                          (5, 0.0, 5, 5)])
def test_datastore_datalist_splits(tmp_path, n, val_split, n_train, n_val):
    made = datalist.datastore_datalist(_cases(tmp_path, n), REGIONS, ["CT"], "lits", val_split)
    assert (len(made["training"]), len(made["validation"])) == (n_train, n_val)
    if 1 < n and val_split:
        assert not {c["case_id"] for c in made["training"]} & {c["case_id"] for c in made["validation"]}
    assert made["labels"] == {"0": "background", "1": "liver", "2": "tumour"} and made["modalities"] == ["CT"]


def test_datastore_datalist_passes_the_bundle_checks(tmp_path):
    made = datalist.datastore_datalist(_cases(tmp_path, 3), REGIONS, ["CT"], "lits")
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(made))
    for section in ("training", "validation"):
        assert len(load_checked_section(path, section, tmp_path, label_key="label")) == len(made[section])


def test_datastore_datalist_refuses_no_labels():
    with pytest.raises(ValueError, match="no final label"):
        datalist.datastore_datalist([], REGIONS, ["CT"])


def test_preset_file(tmp_path):
    assert datalist.preset_file("lits", None) == str(CONFIGS_DIR / "presets" / "lits.json")
    assert datalist.preset_file(None, {"dataset_name": "brats"}) == str(CONFIGS_DIR / "presets" / "brats.json")
    assert datalist.preset_file(None, {"dataset_name": "mine"}) is None
    with pytest.raises(FileNotFoundError, match="presets"):
        datalist.preset_file("litz", None)


def test_training_overrides_rebuild_the_card():
    card = {"dataset_name": "lits", "config": {"image_channel_names": ["CT"], "regions": REGIONS, "prior_mode": "add",
                                               "spatial_dims": 2, "patch_size": [32, 32, 16]},
            "network": {"name": "UNet", "spatial_dims": 2, "in_channels": 3, "out_channels": 2,
                        "channels": [8, 16], "strides": [2], "norm": ["instance", {}]},
            "intensity": {"name": "ScaleIntensityRanged", "keys": ["image"], "args": {"a_min": -160.0}},
            "prior": PriorSettings(sam_model_type="fallback").to_card(True, "/elsewhere")}
    got = datalist.training_overrides(card, datalist="/w/d.json", model_dir="/m", run_dir="/w/r", prior_cache="/p",
                                      max_epochs=3, val_interval=1, device="cpu")
    assert got["ckpt_dir"] == "/m" and got["output_dir"] == "/w/r" and got["prior_cache_dir"] == "/p"
    assert got["datalist"] == "/w/d.json" and got["dataset_dir"] == "/w" and got["max_epochs"] == 3
    assert got["regions"] == REGIONS and got["prior_mode"] == "add" and got["priors"]["sam_model_type"] == "fallback"
    assert got["network_def"]["norm"] == ("instance", {}) and got["intensity"]["_target_"] == "ScaleIntensityRanged"
    assert got["amp"] is False and "prior_cache" not in got
    bare = datalist.training_overrides(None, datalist="/w/d.json", model_dir="/m", run_dir="/w/r", prior_cache="/p",
                                       max_epochs=1, val_interval=1, device="cpu")
    assert "regions" not in bare and "network_def" not in bare
