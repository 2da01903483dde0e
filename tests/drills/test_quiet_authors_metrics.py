"""Quiet failures of the authors' metric conventions (issue 22, item 3).

Before ``bundle.workflows.common.authors_metrics`` the reports called their boundary-based slice distances in native
pixels "the authors' convention", although WeakMedSAM's ``eval.py`` measures region-based distances in the 256 x 256
trimmed frame (a different number on every non-trivial mask), and SAM-Mix's anchor HD skipped slices with an empty
prediction where ADA-SAM's code counts them as infinitely far. Each drill shows the authors' number now computed
and labelled, and that a report asked for the trimmed frame without the image refuses instead of scoring untrimmed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bundle.workflows.common.authors_metrics import sam_mix_authors_slice, weak_authors_metrics
from bundle.workflows.common.case_report import summarise
from bundle.workflows.segmentation.report import SegmentationReport


def test_weak_authors_distances_are_region_based_in_the_trimmed_frame(counts):
    image = np.zeros((1, 8, 8, 1))
    image[0, 2:6, 2:6] = 1.0
    pred, label = np.zeros((1, 8, 8, 1), bool), np.zeros((1, 8, 8, 1), bool)
    pred[0, 2, 2] = True
    label[0, 2, 2] = label[0, 2, 5] = True
    out = weak_authors_metrics(pred, label, image=image, class_names=["t"], size=8)["t"]
    assert (out["authors_hd95"], out["authors_assd"]) == (pytest.approx(6.0), pytest.approx(1.375))
    counts["quiet"] += 1


def test_sam_mix_authors_hd_counts_an_empty_prediction_as_infinite(counts):
    truth = np.zeros((4, 4), bool)
    truth[1:3, 1:3] = True
    assert sam_mix_authors_slice(np.zeros_like(truth), truth) == math.inf
    records = [{"metrics": {"liver": {"authors_hd_px1024": math.inf, "authors_slices": 2.0}}},
               {"metrics": {"liver": {"authors_hd_px1024": 3.0, "authors_slices": 5.0}}}]
    pooled = summarise(records, ["liver"], ["authors_hd_px1024"], pooling={"authors_hd_px1024": "authors_slices"})
    assert pooled["liver"]["authors_hd_px1024"]["mean"] == math.inf  # not dropped to 3.0
    counts["quiet"] += 1


def test_a_report_asked_for_the_trimmed_frame_without_the_image_refuses(counts):
    report = SegmentationReport("unused", authors_metrics=True, authors_image_key="input_grid_image")
    with pytest.raises(ValueError, match="authors_image_key 'input_grid_image' is not in the batch"):
        report.case_extras({"image": np.zeros((1, 4, 4, 1))})
    counts["quiet"] += 1
