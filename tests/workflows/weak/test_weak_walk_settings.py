"""WeakMedSAM's walk transition option: its config default, its place in the pseudo-label signature, early refusal."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from monai.bundle import ConfigParser
from weak_utils import TRAIN_WEAK, error_messages, run_weak
from workflow_utils import SAM_PRIORS

from bundle.workflows.weak.pseudo_stage import PseudoLabels


def _pseudo_args(**overrides) -> dict:
    parser = ConfigParser()
    parser.read_config([SAM_PRIORS, TRAIN_WEAK])
    parser.update(overrides)
    return parser.get_parsed_content("pseudo_args")


def test_config_passes_walk_transition_column_by_default():
    assert _pseudo_args()["transition"] == "column"  # the authors' walk: better pseudo labels on the phantoms
    assert _pseudo_args(walk_transition="row")["transition"] == "row"


def test_the_transition_is_part_of_the_pseudo_label_signature(tmp_path):
    classifier = tmp_path / "classifier.pt"
    classifier.write_bytes(b"weights")
    features = SimpleNamespace(cache=SimpleNamespace(digest="features-digest"))

    def signature(**walk):
        return PseudoLabels(features, classifier, tmp_path / "cache", **walk).signature()

    row, column = signature(transition="row"), signature()
    assert row["walk"]["transition"] == "row" and column["walk"]["transition"] == "column"
    # labels of one walk are never reused for the other
    assert row != column and {**column, "walk": {**column["walk"], "transition": "row"}} == row


def test_an_unknown_transition_is_refused_before_any_sam_work(phantom_set, tmp_path, tiny_sam_checkpoint):
    data = phantom_set("brats")
    with pytest.raises(RuntimeError) as failed:
        run_weak(data, tmp_path, "sam_features", **{"priors#sam_checkpoint": str(tiny_sam_checkpoint)},
                 walk_transition="colum")
    chain = error_messages(failed.value)
    assert any(m.startswith("walk_transition:") and "'column'" in m and "\n" not in m for m in chain), chain
    assert not list(tmp_path.rglob("partition.json"))  # no feature was computed
