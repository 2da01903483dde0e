"""SAMAug-C train -> evaluate -> infer with real LiteMedSAM priors (packaged weights), on the smallest LiTS phantom.

LiteMedSAM's encoder takes about a second per slice on two CPU cores: 3 cases of 16 x 16 x 8 (24 slices), priors
computed once by the training run and read from the cache by evaluation and inference.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from cls_utils import evaluate_cls, infer_cls, read_json, train_cls
from workflow_utils import make_phantom_set, tensorboard_tags

import bundle.sam.loading as loading

# the README main job's grid: side-by-side boxes, no refinement round
LITE = {"priors#sam_model_type": "lite_medsam", "priors#box_grid#box_stride": 1.0, "priors#box_grid#refine_rounds": 0,
        "task": "lits_tumour", "roi_size": [16, 16, 16]}


@pytest.fixture(scope="module")
def tiny_lits(tmp_path_factory):
    return make_phantom_set("lits", tmp_path_factory.mktemp("lits16"), cases=3, size=16)


def test_lite_medsam_priors_train_evaluate_infer(tiny_lits, tmp_path, monkeypatch):
    data = tiny_lits
    train_cls(data, tmp_path, **LITE)

    (partition,) = [p for p in (tmp_path / "priors").iterdir() if p.is_dir()]
    assert partition.name.startswith("lite_medsam-")
    signature = json.loads((partition / "partition.json").read_text())["signature"]["prior"]
    assert signature["kinds"] == ["samaugc_prior"] and signature["generator"]["generator"] == "sam_box_grid_masks"
    cases = data.cases["training"] + data.cases["validation"]
    assert sorted(p.name for p in partition.iterdir() if p.is_dir()) == sorted(cases)
    # LiteMedSAM's masks make a non-trivial prior map on the CT: values in [0, 1], some pixels salient, some not
    prior = np.asarray(nib.load(next(partition.glob(f"{cases[0]}/samaugc_prior.*nii*"))).dataobj)
    assert prior.min() >= 0.0 and prior.max() == pytest.approx(1.0) and 0.0 < (prior > 0.5).mean() < 0.9

    card = read_json(tmp_path / "models" / "model_card.json")
    assert card["prior"]["sam_model_type"] == "lite_medsam" and card["prior"]["box_grid"]["box_stride"] == 1.0
    _, texts = tensorboard_tags(tmp_path / "run")
    assert any("sam_box_grid_masks" in t for t in texts.values()), texts

    # evaluation computes the testing case's priors; inference then finds every prior cached and builds no SAM
    summary, eval_dir = evaluate_cls(data, tmp_path, **LITE)
    assert summary["n"] == 8 and set(summary["per_class"]) == {"no_tumour", "tumour"}

    def no_sam(*args, **kwargs):
        raise RuntimeError("SAM was built")

    monkeypatch.setattr(loading, "build_sam", no_sam)
    out = infer_cls(data, tmp_path, input_section="testing")
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + 8
    expected = [i["probabilities"][1] for i in read_json(eval_dir / "predictions.json")["items"]]
    got = [float(r.split(",")[rows[0].split(",").index("p_tumour")]) for r in rows[1:]]
    np.testing.assert_allclose(got, expected, atol=1e-5)
