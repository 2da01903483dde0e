"""Tests of bundle.data.case_check: the one case check, and the record that lets later steps trust unchanged files."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

import bundle.data.case_check as case_check
from bundle.data.case_check import RECORD_KEY, check_case_files, check_entry, file_stat
from bundle.errors import InputError, MissingInputError

SHAPE = (8, 8, 6)
BRATS = [0, 1, 2, 4]


def nifti(path, data, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return str(path)


def label_data(extra=None):
    label = np.zeros(SHAPE, np.uint8)
    label[2:4, 2:4, 1:3] = 1
    label[4:6, 4:6, 3] = 4
    if extra is not None:
        label[0, 0, 0] = extra
    return label


def bump_mtime(path, seconds=10):
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + seconds * 10**9))


@pytest.fixture
def case(tmp_path):
    """Two modalities written by nibabel, the label by SimpleITK, on one grid; paths relative to tmp_path."""
    rng = np.random.default_rng(0)
    for m in ("t1", "t2"):
        nifti(tmp_path / "c1" / f"c1_{m}.nii.gz", rng.random(SHAPE).astype(np.float32))
    label = sitk.GetImageFromArray(np.ascontiguousarray(label_data().transpose(2, 1, 0)))
    label.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS identity, written in ITK's LPS
    sitk.WriteImage(label, str(tmp_path / "c1" / "c1_seg.nii.gz"), useCompression=True)
    return {"image": ["c1/c1_t1.nii.gz", "c1/c1_t2.nii.gz"], "label": "c1/c1_seg.nii.gz"}


def check(entry, root, **kwargs):
    kwargs.setdefault("label_values", BRATS)
    kwargs.setdefault("image_channels", 2)
    return check_entry(entry, root, **kwargs)


def test_good_case_records_what_was_verified(case, tmp_path):
    result = check(case, tmp_path)
    record = result.record
    assert record["label_values"] == BRATS and record["image_channels"] == 2
    assert list(record["files"]) == case["image"] + [case["label"]]
    assert record["files"][case["label"]]["verified"] == ["header", "grid", "label_values"]
    assert record["files"][case["image"][0]] == {**file_stat(tmp_path / case["image"][0]), "verified": ["header", "grid"]}
    assert len(result.read) == 3 and result.label is not None  # the label's voxels, for datalist summaries


def test_unchanged_files_are_trusted_without_reading(case, tmp_path, monkeypatch):
    case[RECORD_KEY] = check(case, tmp_path).record

    def no_reading(*args, **kwargs):
        raise AssertionError("an unchanged file was read")

    monkeypatch.setattr(case_check, "read_header", no_reading)
    monkeypatch.setattr(case_check, "check_image_file", no_reading)
    result = check(case, tmp_path)
    assert result.read == () and result.label is None and result.record == case[RECORD_KEY]
    assert check(case, tmp_path, label_values=BRATS + [3]).read == ()  # a wider label set needs no re-check


def test_changed_label_is_checked_again(case, tmp_path):
    """A datalist written before the label changed: the value 7 is found, not trained as background."""
    case[RECORD_KEY] = check(case, tmp_path).record
    label = nifti(tmp_path / case["label"], label_data(extra=7))
    bump_mtime(label)
    with pytest.raises(InputError) as info:
        check(case, tmp_path)
    assert str(info.value) == f"{label}: label values [7] are not in the label set [0, 1, 2, 4]"


def test_changed_image_is_checked_again(case, tmp_path):
    case[RECORD_KEY] = check(case, tmp_path).record
    t2 = nifti(tmp_path / case["image"][1], np.zeros((8, 8, 5), np.float32))
    bump_mtime(t2)
    with pytest.raises(InputError, match=r"c1_t2.nii.gz: modality shape \(8, 8, 5\) does not match .*c1_t1.nii.gz"):
        check(case, tmp_path)


def test_stricter_label_set_or_other_settings_recheck(case, tmp_path):
    case[RECORD_KEY] = check(case, tmp_path).record
    with pytest.raises(InputError, match=r"label values \[4\] are not in the label set \[0, 1, 2\]"):
        check(case, tmp_path, label_values=[0, 1, 2])
    assert len(check(case, tmp_path, affine_atol=1e-2).read) == 3


@pytest.mark.parametrize(
    "label, affine, fragments",
    [
        (np.zeros((8, 8, 5), np.uint8), None, ["label shape (8, 8, 5) does not match", "shape (8, 8, 6)"]),
        (label_data(), np.diag([1.0, 1.0, 2.5, 1.0]),
         ["label affine differs from", "by more than 0.001 (largest difference 1.5)",
          "spacing (1.0, 1.0, 2.5), origin (0.0, 0.0, 0.0) vs spacing (1.0, 1.0, 1.0)"]),
    ],
)
def test_label_on_another_grid(case, tmp_path, label, affine, fragments):
    path = nifti(tmp_path / case["label"], label, affine)
    with pytest.raises(InputError) as info:
        check(case, tmp_path)
    message = str(info.value)
    assert message.startswith(path)
    for fragment in fragments:
        assert fragment in message, message


def test_truncated_image_found_without_reading_voxels(case, tmp_path):
    t1 = tmp_path / case["image"][0]
    data = t1.read_bytes()
    t1.write_bytes(data[: len(data) - 200])
    with pytest.raises(InputError, match="cannot be read: it is truncated"):
        check(case, tmp_path)


def test_empty_and_missing_images(case, tmp_path):
    (tmp_path / case["image"][1]).write_bytes(b"")
    with pytest.raises(InputError, match=r"c1_t2.nii.gz: cannot be read: the file is empty \(0 bytes\)"):
        check(case, tmp_path)
    os.remove(tmp_path / case["image"][1])
    with pytest.raises(MissingInputError, match="c1_t2.nii.gz: cannot be read: the file does not exist"):
        check(case, tmp_path)


def test_channels_of_a_4d_file(tmp_path):
    image = nifti(tmp_path / "msd.nii.gz", np.zeros((*SHAPE, 4), np.float32))
    label = nifti(tmp_path / "msd_seg.nii.gz", label_data())
    assert check_case_files(image, label, label_values=BRATS, image_channels=4).record["files"][image]
    with pytest.raises(InputError, match=r"msd.nii.gz: has shape \(8, 8, 6, 4\): a 4D series of 4 volumes"):
        check_case_files(image, label, image_channels=1)
    with pytest.raises(InputError, match="cannot hold the 3 channels"):
        check_case_files([image, image], label, image_channels=3)
