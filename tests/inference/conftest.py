"""Fixtures of the batch-inference tests: tiny trained models of each kind (segmentation, classification, SAM-Mix)
on LiTS phantoms, trained once per session with the workflow tests' helpers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parents[1]
for folder in ("workflows", "workflows/classification", "workflows/semisup", "data"):
    if str(_TESTS / folder) not in sys.path:
        sys.path.insert(0, str(_TESTS / folder))

from workflow_utils import make_phantom_set, train


@pytest.fixture(scope="session")
def lits_data(tmp_path_factory):
    """4 LiTS phantoms (32 x 32 slices) with a 2 / 1 / 1 datalist."""
    return make_phantom_set("lits", tmp_path_factory.mktemp("lits"))


@pytest.fixture(scope="session")
def seg_work(lits_data, tmp_path_factory):
    """A SAMAug segmentation model (weight-free prior generator, one epoch): ``<work>/models``."""
    work = tmp_path_factory.mktemp("seg")
    train(lits_data, work)
    return work


@pytest.fixture(scope="session")
def cls_work(lits_data, tmp_path_factory):
    """A SAMAug-C slice classifier (liver tumour present, dual branch): ``<work>/models``."""
    from cls_utils import train_cls

    work = tmp_path_factory.mktemp("cls")
    train_cls(lits_data, work, task="lits_tumour")
    return work


@pytest.fixture(scope="session")
def mix_work(lits_data, tiny_sam_checkpoint, tmp_path_factory):
    """A SAM-Mix liver model on the random-weight tiny SAM: ``<work>/models``."""
    from semisup_utils import run_mix

    work = tmp_path_factory.mktemp("mix")
    run_mix(lits_data, work, tiny_sam_checkpoint)
    return work
