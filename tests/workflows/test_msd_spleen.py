"""The worked example of a new dataset (docs/design.md): MSD Task09 Spleen, added as one dataset module
(bundle/data/datasets/msd_spleen.py) and one preset (configs/presets/msd_spleen.json), through the commands a user
runs (their entry points, in this process): phantoms in the MSD layout, the datalist, SAMAug training, batch
inference."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from workflow_utils import REPO, TINY, config_files, run_workflow

from bundle.data.datalist_cli import main as prepare_datalist
from bundle.data.datasets import MODULES
from bundle.inference.cli import main as batch_inference
from bundle.testing.phantoms_cli import main as make_phantoms


def test_msd_spleen_from_phantoms_to_batch_inference(tmp_path):
    assert "msd_spleen" in MODULES and (REPO / "configs" / "presets" / "msd_spleen.json").is_file()
    data = tmp_path / "Task09_Spleen"
    assert make_phantoms(["--dataset", "msd_spleen", "--out", str(data), "--cases", "4", "--size", "32"]) == 0
    assert json.loads((data / "dataset.json").read_text())["labels"] == {"0": "background", "1": "spleen"}
    assert prepare_datalist(["--dataset", "msd_spleen", "--root", str(data), "--out", str(data / "datalist.json"),
                             "--no-progress", "--val-fraction", "0.25", "--test-fraction", "0.25"]) == 0
    datalist = json.loads((data / "datalist.json").read_text())
    assert datalist["dataset"] == "msd_spleen" and datalist["labels"] == {"0": "background", "1": "spleen"}
    assert datalist["regions"] == {"spleen": [1]} and len(datalist["training"]) == 2

    work = tmp_path / "work"
    run_workflow(config_files("msd_spleen"), "training", "train",
                 **{**TINY, "bundle_root": str(REPO), "dataset_dir": str(data), "datalist": str(data / "datalist.json"),
                    "prior_cache_dir": str(work / "priors"), "output_dir": str(work / "run"),
                    "ckpt_dir": str(work / "models")})
    card = json.loads((work / "models" / "model_card.json").read_text())
    assert card["config"]["image_channel_names"] == ["CT"] and card["config"]["regions"] == {"spleen": [1]}

    test_image = data / datalist["testing"][0]["image"]
    assert batch_inference(["--input", str(test_image), "--output", str(work / "pred"), "--model",
                            str(work / "models")]) == 0
    (output,) = (work / "pred").glob("*.nii.gz")
    written, source = nib.load(output), nib.load(test_image)
    assert written.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-5)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1}
