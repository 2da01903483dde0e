"""The modality rule of batch inference (bundle/inference/modality.py) on typical intensity ranges."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.errors import InputError
from bundle.inference.modality import check_input_modality, modality_of, modality_problem

RNG = np.random.default_rng(0)


def _ct_body(air: bool = True) -> np.ndarray:
    """A CT slab in HU: air around a body of fat, soft tissue and a little bone (or a crop inside the body)."""
    hu = RNG.normal(40, 20, (32, 32, 8))  # soft tissue
    hu[:4] = RNG.normal(-100, 10, (4, 32, 8))  # fat
    hu[-2:] = 700  # bone
    if air:
        hu[:, :6] = -1000
    return hu


@pytest.mark.parametrize("name, image", [
    ("CT with air", _ct_body()),
    ("CT cropped inside the body (fat, no air)", _ct_body(air=False)),
])
def test_ct_ranges_pass_a_ct_model(name, image):
    assert modality_problem("CT", image) is None, name


@pytest.mark.parametrize("name, image", [
    ("raw MR magnitudes", RNG.gamma(2.0, 150.0, (32, 32, 8))),
    ("z-scored MR", RNG.normal(0.0, 1.0, (32, 32, 8))),
    ("MR in [0, 1]", RNG.uniform(0.0, 1.0, (32, 32, 8))),
])
def test_mr_ranges_fail_a_ct_model_and_pass_an_mr_model(name, image):
    assert "look like MR" in modality_problem("CT", image), name
    assert modality_problem("MR", image) is None, name


def test_hounsfield_air_fails_an_mr_model_but_a_few_outliers_do_not():
    assert "look like CT" in modality_problem("MR", _ct_body())
    mr = RNG.gamma(2.0, 150.0, (32, 32, 8))
    mr.flat[:10] = -1000  # 0.1 % of the voxels: noise, not air
    assert modality_problem("MR", mr) is None


def test_dicom_modality_decides_when_it_contradicts_and_other_models_are_not_checked():
    assert "DICOM Modality is MR" in modality_problem("CT", _ct_body(), "MR")
    assert modality_problem("CT", _ct_body(), "OT") is None
    assert modality_problem("other", RNG.normal(size=(4, 4, 4)), "MR") is None
    with pytest.raises(InputError, match="^scan.nii.gz: DICOM Modality is CT"):
        check_input_modality("MR", "scan.nii.gz", None, "CT")
    assert "DICOM Modality is CT" in check_input_modality("MR", "scan.nii.gz", None, "CT", allow=True)


@pytest.mark.parametrize("dataset, channels, modality", [
    ("brats", ["FLAIR", "T1", "T1ce", "T2"], "MR"), ("brats2023", ["t2f"], "MR"), ("lits", ["CT"], "CT"),
    ("abdomenct1k", ["CT"], "CT"), ("msd", ["MRI"], "MR"), ("msd", ["T2", "ADC"], "MR"), ("msd", ["CT"], "CT"),
    (None, ["CT", "T1"], "other"), (None, ["PET"], "other"),
])
def test_card_modality_from_dataset_or_channel_names(dataset, channels, modality):
    assert modality_of(dataset, channels) == modality
