"""bundle.workflows.common.prior_quality: coverage of labelled structures and agreement of two pipelines' priors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bundle.workflows.common.prior_quality import coverage_summary, prior_agreement, structure_coverage
from bundle.workflows.common.seg_metrics import dice


def _mask(shape, rows, cols):
    m = np.zeros(shape, bool)
    m[rows, cols] = True
    return m


def test_coverage_is_the_best_matching_mask_per_region():
    label = np.zeros((20, 20), int)
    label[2:10, 2:10] = 1  # liver (64 px)
    label[4:6, 4:6] = 2  # tumour inside it (4 px)
    label[12:18, 12:18] = 3  # another organ, no mask touches it
    records = [{"segmentation": _mask((20, 20), slice(2, 10), slice(2, 10))},  # the liver with its tumour
               {"segmentation": _mask((20, 20), slice(2, 10), slice(2, 6))}]  # half of it
    regions = {"liver": (1, 2), "tumour": (2,), "spleen": (3,), "absent": (4,)}
    cov = structure_coverage(records, label, regions, min_pixels=3)
    assert cov["liver"] == 1.0 and cov["spleen"] == 0.0 and "absent" not in cov
    assert cov["tumour"] == pytest.approx(2 * 4 / (4 + 32))  # best: the half mask (32 px) holding all 4 px
    assert "tumour" not in structure_coverage(records, label, regions, min_pixels=10)
    assert structure_coverage([], label, {"liver": (1, 2)}) == {"liver": 0.0}


def test_coverage_summary():
    s = coverage_summary([0.0, 0.5, 0.9, 1.0])
    assert s["n"] == 4 and s["mean"] == pytest.approx(0.6) and s["median"] == pytest.approx(0.7)
    assert s["at_least_0.5"] == 0.75 and s["at_least_0.8"] == 0.5
    assert coverage_summary([]) == {"n": 0}


def test_prior_agreement():
    rng = np.random.default_rng(0)
    seg = [rng.random((8, 8)) for _ in range(2)]
    bnd = [rng.random((8, 8)) > 0.5 for _ in range(2)]
    same = list(zip(seg, bnd))
    assert prior_agreement(same, same) == pytest.approx((1.0, 1.0))
    flipped = [(s, ~b) for s, b in same]
    assert prior_agreement(same, flipped)[1] == 0.0
    scaled = [(2 * s + 1, b) for s, b in same]
    assert prior_agreement(same, scaled)[0] == pytest.approx(1.0)  # Pearson: invariant to scale and offset
    empty = [(np.zeros((8, 8)), np.zeros((8, 8), bool))] * 2
    pearson, boundary = prior_agreement(empty, empty)
    assert math.isnan(pearson) and boundary == 1.0 == dice(np.zeros(3, bool), np.zeros(3, bool))
