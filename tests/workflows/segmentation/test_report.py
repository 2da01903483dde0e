import csv
import json
import math

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.transforms import Activationsd, AsDiscreted, Compose

from bundle.workflows.common.case_report import PER_CASE_CSV, PER_CASE_JSON, SUMMARY_JSON, case_id_from_meta
from bundle.workflows.segmentation.report import SegmentationReport, spacing_from_meta, write_report

SPACING = (0.5, 0.5, 2.0)
CLASSES = ["liver", "tumour"]


class ScaledIdentity(torch.nn.Module):
    """Maps a binary 'image' to logits whose sigmoid thresholds back to the same mask."""

    def forward(self, x):
        return (x - 0.5) * 10.0


def _case(name, pred_mask, label_mask, case_id=None):
    affine = torch.diag(torch.tensor([*SPACING, 1.0]))
    meta = {"filename_or_obj": f"/data/Mask/{name}.nii.gz"}
    item = {
        "image": MetaTensor(torch.as_tensor(pred_mask, dtype=torch.float32), affine=affine, meta=dict(meta)),
        "label": MetaTensor(torch.as_tensor(label_mask, dtype=torch.float32), affine=affine, meta=dict(meta)),
    }
    if case_id is not None:
        item["case_id"] = case_id
    return item


def _dataset(with_case_id):
    shape = (2, 8, 8, 4)
    label = np.zeros(shape, dtype=np.float32)
    label[0, 2:6, 2:6, :] = 1
    label[1, 3:5, 3:5, 1:3] = 1
    perfect = label.copy()
    half = label.copy()
    half[0, 2:6, 2:4, :] = 0  # liver: 32 of 64 voxels predicted -> dice 2*32/96
    missed = label.copy()
    missed[1] = 0  # tumour missed -> dice 0, hd95 nan
    names = ["Case_00001", "Case_00002", "Case_00003"]
    ids = [f"case-{i}" for i in range(3)] if with_case_id else [None] * 3
    return [_case(n, p, label, i) for n, p, i in zip(names, (perfect, half, missed), ids)], names, ids


def _run_evaluator(data, handler):
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(data), batch_size=2, num_workers=0),
        network=ScaledIdentity(),
        postprocessing=Compose([Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=0.5)]),
        val_handlers=[handler],
    )
    evaluator.run()


@pytest.mark.parametrize("with_case_id", [False, True])
def test_report_in_supervised_evaluator(tmp_path, with_case_id):
    data, names, ids = _dataset(with_case_id)
    tags = {"prior_mode": "concat", "infer_mode": "aug_only", "seed": 3}
    _run_evaluator(data, SegmentationReport(tmp_path, class_names=CLASSES, tags=tags))

    expected_ids = ids if with_case_id else names
    with open(tmp_path / PER_CASE_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case_id"] for r in rows] == expected_ids
    assert rows[0]["spacing"] == "0.5x0.5x2"
    assert rows[0]["source"] == "/data/Mask/Case_00001.nii.gz"
    assert float(rows[1]["liver/dice"]) == pytest.approx(64 / 96)
    assert math.isnan(float(rows[2]["tumour/hd95"]))

    per_case = json.loads((tmp_path / PER_CASE_JSON).read_text())
    assert [c["case_id"] for c in per_case["cases"]] == expected_ids
    assert per_case["cases"][2]["metrics"]["tumour"]["hd95"] is None

    summary = json.loads((tmp_path / SUMMARY_JSON).read_text())
    assert summary["tags"] == tags
    assert summary["n_cases"] == 3
    assert summary["class_names"] == CLASSES
    liver = summary["metrics"]["liver"]["dice"]
    values = [1.0, 64 / 96, 1.0]
    assert liver["mean"] == pytest.approx(np.mean(values))
    assert liver["std"] == pytest.approx(np.std(values, ddof=1))
    assert liver["median"] == pytest.approx(1.0)
    assert liver["n"] == 3
    tumour_hd = summary["metrics"]["tumour"]["hd95"]
    assert tumour_hd["n"] == 2 and tumour_hd["mean"] == pytest.approx(0.0)
    assert summary["metrics"]["tumour"]["dice"]["mean"] == pytest.approx(2 / 3)
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries


def test_report_resets_between_runs(tmp_path):
    data, _, _ = _dataset(False)
    handler = SegmentationReport(tmp_path, class_names=CLASSES)
    _run_evaluator(data, handler)
    _run_evaluator(data[:1], handler)
    assert json.loads((tmp_path / SUMMARY_JSON).read_text())["n_cases"] == 1


def test_meta_helpers():
    t = MetaTensor(torch.zeros(1, 2, 2, 2), affine=torch.diag(torch.tensor([0.8, 0.8, 3.0, 1.0])))
    t.meta["filename_or_obj"] = "/x/y/segmentation-12.nii.gz"
    assert spacing_from_meta(torch.zeros(1), t) == pytest.approx([0.8, 0.8, 3.0])
    assert case_id_from_meta(t) == "segmentation-12"
    assert case_id_from_meta(torch.zeros(1)) is None
    with pytest.raises(ValueError, match="MetaTensor"):
        spacing_from_meta(torch.zeros(1, 2, 2, 2))


def test_write_report_handles_no_cases(tmp_path):
    summary = write_report([], tmp_path / "out", class_names=["WT"], tags={"seed": 0})
    assert summary["n_cases"] == 0
    assert summary["metrics"]["WT"]["dice"] == {"mean": None, "std": None, "median": None, "n": 0}
    assert (tmp_path / "out" / PER_CASE_CSV).read_text().startswith("case_id,source,spacing,WT/dice")
