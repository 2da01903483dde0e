"""bundle.data.case_ids: one naming rule for cases everywhere."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from bundle.data.case_ids import case_id_from_files, case_id_of, source_files_of, strip_image_suffix


@pytest.mark.parametrize(
    "name, expected",
    [("volume-12.nii", "volume-12"), ("Case_00001_0000.nii.gz", "Case_00001_0000"), ("CT.NII.GZ", "CT"),
     ("series", "series"), (".nii.gz", ".nii.gz"), ("a.mha", "a"), ("x.tar", "x.tar")],
)
def test_strip_image_suffix(name, expected):
    assert strip_image_suffix(name) == expected


@pytest.mark.parametrize(
    "files, expected",
    [
        ("/d/LiTS/volume-12.nii", "volume-12"),
        ("/d/dicom/SE1/", "SE1"),
        (["/d/x/BraTS2021_00001_flair.nii.gz", "/d/x/BraTS2021_00001_t1.nii.gz"], "BraTS2021_00001"),
        (["/d/B/BraTS-GLI-00002-000-t2f.nii.gz", "/d/B/BraTS-GLI-00002-000-t1n.nii.gz"], "BraTS-GLI-00002-000"),
        (["/d/case_7/flair.nii.gz", "/d/case_7/t1.nii.gz"], "case_7"),
    ],
)
def test_case_id_from_files(files, expected):
    assert case_id_from_files(files) == expected


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"case_id": "BraTS2021_00001", "image": None}, "BraTS2021_00001"),
        ({"case_id": "/data/root/case_9/", "image": None}, "case_9"),
        ({"image": "/d/volume-3.nii"}, "volume-3"),
        ({"image": ["/d/a_flair.nii.gz", "/d/a_t1.nii.gz"]}, "a"),
        ({"image": MetaTensor(torch.zeros(1), meta={"filename_or_obj": "/d/volume-12.nii.gz"})}, "volume-12"),
        ({"image": MetaTensor(torch.zeros(1), meta={"source_filenames": "/d/a_flair.nii.gz\n/d/a_t1.nii.gz"})}, "a"),
    ],
)
def test_case_id_of(data, expected):
    assert case_id_of(data) == expected


def test_case_without_a_name_is_an_error():
    with pytest.raises(ValueError, match="cannot name the case"):
        case_id_of({"image": MetaTensor(torch.zeros(1))})


def test_source_files_of_stacked_image():
    t = MetaTensor(torch.zeros(1), meta={"filename_or_obj": "/d/a.nii", "source_filenames": "/d/a.nii\n/d/b.nii"})
    assert source_files_of(t) == ["/d/a.nii", "/d/b.nii"]
    assert source_files_of(torch.zeros(1)) == []
