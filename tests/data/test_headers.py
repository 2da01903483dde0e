"""Tests of bundle.data.headers: shape, grid and completeness from headers of files other tools wrote."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from monai.transforms import LoadImage

from bundle.data.headers import read_header
from bundle.errors import InputError, MissingInputError

SHAPE = (10, 9, 7)


def _affine():
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    affine[:3, 3] = (-20.0, 12.5, 4.0)
    return affine


def nibabel_file(path, data=None):
    data = np.random.default_rng(0).random(SHAPE).astype(np.float32) if data is None else data
    nib.save(nib.Nifti1Image(data, _affine()), str(path))
    return str(path)


def sitk_file(path, data=None, **kwargs):
    data = np.random.default_rng(0).random(SHAPE).astype(np.float32) if data is None else data
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))  # SimpleITK arrays are z, y, x
    image.SetSpacing((1.5, 1.5, 3.0))
    image.SetOrigin((20.0, -12.5, 4.0))  # LPS: the same place as the nibabel file's RAS origin
    sitk.WriteImage(image, str(path), useCompression=str(path).endswith((".gz", ".mha", ".nrrd")))
    return str(path)


@pytest.mark.parametrize("name, writer", [("a.nii.gz", nibabel_file), ("a.nii", nibabel_file),
                                          ("b.nii.gz", sitk_file), ("b.mha", sitk_file), ("b.nrrd", sitk_file)])
def test_header_matches_monai_reader(tmp_path, name, writer):
    path = writer(tmp_path / name)
    header = read_header(path)
    loaded = LoadImage(image_only=True)(path)
    assert header.shape == header.spatial_shape == SHAPE == tuple(loaded.shape) and header.channels == 1
    np.testing.assert_allclose(header.affine, np.asarray(loaded.affine), atol=1e-5)
    np.testing.assert_allclose(header.affine[:3, 3], _affine()[:3, 3], atol=1e-5)


def test_4d_and_2d_headers(tmp_path):
    header = read_header(nibabel_file(tmp_path / "t.nii.gz", np.zeros((*SHAPE, 4), np.float32)))
    assert header.shape == (*SHAPE, 4) and header.spatial_shape == SHAPE and header.channels == 4
    flat = read_header(nibabel_file(tmp_path / "f.nii.gz", np.zeros((10, 9), np.float32)))
    assert flat.spatial_shape == (10, 9)
    single = read_header(nibabel_file(tmp_path / "s.nii.gz", np.zeros((*SHAPE, 1), np.float32)))
    assert single.shape == SHAPE and single.channels == 1


@pytest.mark.parametrize("name, writer", [("a.nii.gz", nibabel_file), ("b.nii.gz", sitk_file), ("a.nii", nibabel_file)])
def test_truncated_file_with_intact_header(tmp_path, name, writer):
    whole = writer(tmp_path / f"whole_{name}")
    data = Path(whole).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: int(len(data) * 0.7)])
    assert nib.load(str(cut)).shape == SHAPE  # the header alone still reads
    with pytest.raises(InputError) as info:
        read_header(cut)
    assert str(info.value).startswith(f"{cut}: cannot be read: it is truncated")


def test_multi_member_gzip_is_not_taken_for_truncated(tmp_path):
    """bgzip-style files store a member's size in the trailer: the confirming read accepts them."""
    raw = tmp_path / "raw.nii"
    nibabel_file(raw)
    data = raw.read_bytes()
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]))
    assert read_header(path).shape == SHAPE


@pytest.mark.parametrize(
    "content, fragment",
    [(b"", r"the file is empty \(0 bytes\)"), (b"plain text, no image", "not gzip-compressed")],
)
def test_unreadable(tmp_path, content, fragment):
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(content)
    with pytest.raises(InputError, match=fragment) as info:
        read_header(path)
    assert str(info.value).startswith(str(path))


def test_missing(tmp_path):
    with pytest.raises(MissingInputError, match="does not exist"):
        read_header(tmp_path / "nope.nii.gz")


def test_qform_only_and_nifti2_headers(tmp_path):
    """The fast path reads sform headers; other headers (qform only, NIfTI-2) go through nibabel with the same result."""
    data = np.zeros(SHAPE, np.int16)
    qform_only = nib.Nifti1Image(data, None)
    qform_only.set_qform(_affine(), code=1)
    qform_only.set_sform(None, code=0)
    nib.save(qform_only, str(tmp_path / "q.nii.gz"))
    nib.save(nib.Nifti2Image(data, _affine()), str(tmp_path / "n2.nii"))
    for name in ("q.nii.gz", "n2.nii"):
        header = read_header(tmp_path / name)
        assert header.shape == SHAPE
        np.testing.assert_allclose(header.affine, nib.load(str(tmp_path / name)).affine, atol=1e-5)
        np.testing.assert_allclose(header.affine, _affine(), atol=1e-5)
