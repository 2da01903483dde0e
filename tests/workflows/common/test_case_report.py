import csv
import json
import math

import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator

from bundle.workflows.common.case_report import (
    PER_CASE_CSV,
    PER_CASE_JSON,
    SUMMARY_JSON,
    CaseReport,
    case_id_from_meta,
    format_summary_table,
    gather_records,
    json_safe,
    summarise,
    write_report,
)

CLASSES = ["a", "b"]
METRICS = ["acc", "auc"]


def _record(case_id, acc_a, auc_b, **extra):
    return {"case_id": case_id, "source": None, "metrics": {"a": {"acc": acc_a, "auc": 0.5},
                                                             "b": {"acc": 1.0, "auc": auc_b}}, **extra}


RECORDS = [_record("c0", 1.0, 0.2, fold=[1, 2]), _record("c1", 0.0, float("nan"), fold=[3]),
           _record("c2", 1.0, 0.6, fold=None)]


def test_summarise_ignores_nan_and_counts_values():
    stats = summarise(RECORDS, CLASSES, METRICS)
    assert stats["a"]["acc"]["mean"] == pytest.approx(2 / 3)
    assert stats["a"]["acc"]["std"] == pytest.approx(math.sqrt(1 / 3))  # sample std (ddof=1)
    assert stats["b"]["auc"] == {"mean": pytest.approx(0.4), "std": pytest.approx(math.sqrt(0.08)),
                                 "median": pytest.approx(0.4), "n": 2}
    assert summarise(RECORDS[:1], ["a"], ["acc"])["a"]["acc"]["std"] is None


def test_write_report_with_task_metrics_and_info_columns(tmp_path):
    summary = write_report(RECORDS, tmp_path, CLASSES, METRICS, metric_definitions={"acc": "accuracy"},
                           tags={"seed": 1}, info_columns=("fold",))
    rows = list(csv.reader((tmp_path / PER_CASE_CSV).open(newline="")))
    assert rows[0] == ["case_id", "source", "fold", "a/acc", "a/auc", "b/acc", "b/auc"]
    assert rows[1][:3] == ["c0", "", "1x2"] and rows[3][2] == "" and rows[2][-1] == "nan"
    per_case = json.loads((tmp_path / PER_CASE_JSON).read_text())
    assert per_case["metrics"] == METRICS and per_case["cases"][1]["metrics"]["b"]["auc"] is None
    on_disk = json.loads((tmp_path / SUMMARY_JSON).read_text())
    assert on_disk == summary and on_disk["metric_definitions"] == {"acc": "accuracy"}
    assert on_disk["tags"] == {"seed": 1} and on_disk["n_cases"] == 3
    assert not list(tmp_path.glob("*.tmp"))
    table = format_summary_table(summary, title="classification report")
    assert table.startswith("classification report: 3 cases") and len(table.splitlines()) == 2 + 4


def test_helpers():
    assert json_safe({1: [float("inf"), 2.0, (float("nan"),)]}) == {"1": [None, 2.0, [None]]}
    assert gather_records(RECORDS) == RECORDS and gather_records(RECORDS) is not RECORDS
    t = MetaTensor(torch.zeros(2), meta={"filename_or_obj": "/data/slices/case_7.nii.gz"})
    assert case_id_from_meta(torch.zeros(1), t) == "case_7"


class ClassProbabilityReport(CaseReport):
    """A classification-like report: ``pred`` and ``label`` are class vectors, not images."""

    metric_names = ("correct",)
    title = "class report"

    def score_case(self, pred, label, class_names, case_id):
        hits = (pred > 0.5).float() == label
        return {"case_id": case_id, "source": None,
                "metrics": {c: {"correct": float(h)} for c, h in zip(class_names, hits)}}


def test_a_task_subclass_in_an_evaluator(tmp_path):
    data = [{"image": torch.tensor([0.9, 0.1]), "label": torch.tensor([1.0, 1.0]), "case_id": f"s{i}"}
            for i in range(3)]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(data), batch_size=2, num_workers=0),
        network=torch.nn.Identity(),
        val_handlers=[ClassProbabilityReport(tmp_path, class_names=["x", "y"], tags={"task": "cls"})],
    )
    evaluator.run()
    summary = json.loads((tmp_path / SUMMARY_JSON).read_text())
    assert summary["n_cases"] == 3 and summary["metrics"]["x"]["correct"]["mean"] == 1.0
    assert summary["metrics"]["y"]["correct"]["mean"] == 0.0 and summary["metric_definitions"] == {}
    cases = json.loads((tmp_path / PER_CASE_JSON).read_text())["cases"]
    assert [c["case_id"] for c in cases] == ["s0", "s1", "s2"]


def test_the_base_handler_needs_a_scoring_rule(tmp_path):
    with pytest.raises(NotImplementedError, match="score_case"):
        CaseReport(tmp_path).score_case(torch.zeros(1), torch.zeros(1), ["a"], "c")
    with pytest.raises(TypeError):
        CaseReport(tmp_path, tags={"bad": object()})  # tags must be JSON: fail before a long evaluation
