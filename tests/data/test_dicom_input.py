"""Tests of DICOM export scanning and volume reading, on files written by SimpleITK, ITK, highdicom and pydicom."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import (
    itk_series_reference,
    rewrite_tags,
    sitk_series_reference,
    write_itk_series,
    write_legacy_enhanced_ct,
    write_sitk_series,
)
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import JPEG2000Lossless

from bundle.data.dicom_input import DicomSeries, is_dicom_file, read_dicom_volume, scan_dicom_files
from bundle.testing.dicom_series import read_series, write_ct_series
from bundle.errors import InputError

# SimpleITK's and ITK's SWIG wrappers warn about their own types when first imported
pytestmark = pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute:DeprecationWarning")


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _ras_affine(rotation: np.ndarray, spacing, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


SHAPE = (24, 20, 6)  # [I, J, K]
HU = (np.arange(np.prod(SHAPE)).reshape(SHAPE) * 7 % 1500 - 500).astype(np.int16)
OBLIQUE = _ras_affine(_rotation(2, 0.35) @ _rotation(0, 0.2), (0.7, 0.8, 2.0), (12.0, -30.0, 45.0))
ARRAY_ZYX = np.ascontiguousarray(np.transpose(HU, (2, 1, 0)))  # ITK's [K, rows, columns]
DS_ATOL = 1e-4  # DS values are written with 6 to 16 significant characters


def _ct(folder: Path, hu: np.ndarray = HU, affine: np.ndarray = OBLIQUE, seed: str = "ct") -> list[Path]:
    return write_ct_series(hu, affine, folder, uid_seed=seed)


def _one_series(files) -> DicomSeries:
    scan = scan_dicom_files(files)
    assert not scan.failed and not scan.skipped and len(scan.series) == 1, scan
    return scan.series[0]


def _restack(files: list[Path], z: list[float], shift: dict[int, np.ndarray] | None = None) -> None:
    """Move slice ``k`` to position ``z[k]`` mm along the normal (plus an optional in-plane ``shift``)."""
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    iop = np.asarray(first.ImageOrientationPatient, np.float64)
    normal = np.cross(iop[:3], iop[3:])
    base = np.asarray(first.ImagePositionPatient, np.float64)
    base = base - (base @ normal) * normal
    for k, (file, depth) in enumerate(zip(files, z)):
        position = base + depth * normal + (shift or {}).get(k, 0.0)
        rewrite_tags(file, ImagePositionPatient=[f"{v:.6f}" for v in position])


# --- series written by other tools, compared with those tools' own readers -----------------------------------

SITK_CASES = [  # (direction in LPS, whether its normal row x column runs against the slice axis)
    (np.eye(3), False),
    (np.diag([1.0, 1.0, -1.0]), True),  # slices stacked towards the feet: left-handed, as many CT exports
    (_rotation(1, 0.3) @ np.diag([-1.0, 1.0, 1.0]), True),  # oblique and left-handed
    (_rotation(2, 0.4) @ _rotation(0, -0.25), False),  # oblique
]


@pytest.mark.parametrize("direction, reversed_normal", SITK_CASES)
def test_simpleitk_series_matches_simpleitk_reader(tmp_path, direction, reversed_normal):
    names = [f"x{(7 * k) % 6}_{k}.dcm" for k in range(6)]  # names out of slice order
    files = write_sitk_series(
        tmp_path, ARRAY_ZYX, (0.8, 0.9, 2.5), (10.0, -20.0, 30.0), direction, series_uid="1.2.826.0.1.3680043.8.498.1"
    )
    for file, name in zip(files, names):
        file.rename(tmp_path / name)
    files = [tmp_path / name for name in names]
    series = _one_series(sorted(tmp_path.iterdir()))
    assert series.files == [str(f) for f in (files[::-1] if reversed_normal else files)]
    assert (series.modality, series.description, series.multiframe) == ("CT", "SimpleITK series", False)
    assert series.label == f"{tmp_path} (series 1.2.826.0.1.3680043.8.498.1, 6 files)"

    values, affine = read_dicom_volume(series)
    reference_values, reference_affine = sitk_series_reference(tmp_path, series.series_uid)
    assert values.dtype == np.float32 and values.shape == (24, 20, 6)
    np.testing.assert_array_equal(values, reference_values)
    np.testing.assert_allclose(affine, reference_affine, atol=DS_ATOL)
    np.testing.assert_array_equal(values, HU[:, :, ::-1] if reversed_normal else HU)


def test_itk_series_matches_itk_reader(tmp_path):
    direction = _rotation(0, 0.3) @ _rotation(2, -0.1)
    write_itk_series(tmp_path, ARRAY_ZYX, (0.8, 0.9, 2.5), (10.0, -20.0, 30.0), direction, series_uid="1.2.3.9")
    series = _one_series(sorted(tmp_path.iterdir()))
    assert series.modality == "MR" and series.sop_class_uid == pydicom.uid.MRImageStorage
    values, affine = read_dicom_volume(series)
    reference_values, reference_affine = itk_series_reference(tmp_path, "1.2.3.9")
    np.testing.assert_array_equal(values, reference_values)
    np.testing.assert_allclose(affine, reference_affine, atol=DS_ATOL)
    np.testing.assert_array_equal(values, HU)


# --- multi-frame (Legacy Converted Enhanced CT by highdicom) ------------------------------------------------------

FRAME_ORDER = [3, 0, 5, 1, 4, 2]  # frame f holds slice FRAME_ORDER[f]


@pytest.fixture
def enhanced(tmp_path):
    """``(multi-frame file, single-frame volume, single-frame affine)`` of the same oblique CT."""
    files = _ct(tmp_path / "single")
    values, affine = read_dicom_volume(_one_series(files))
    path = write_legacy_enhanced_ct(files, tmp_path / "enhanced.dcm", frame_order=FRAME_ORDER)
    return path, values, affine


def test_legacy_enhanced_ct_matches_single_frame_series(enhanced, tmp_path):
    path, single_values, single_affine = enhanced
    series = _one_series([path])
    assert series.multiframe and series.files == [str(path)]
    assert series.frame_order == [FRAME_ORDER.index(k) for k in range(6)]
    assert pydicom.uid.UID(series.sop_class_uid).name == "Legacy Converted Enhanced CT Image Storage"
    assert series.label.startswith(f"{path} (series ") and series.label.endswith(", 6 frames)")
    values, affine = read_dicom_volume(series)
    np.testing.assert_array_equal(values, single_values)
    np.testing.assert_allclose(affine, single_affine, atol=DS_ATOL)
    reference_values, reference_affine = read_series(tmp_path / "single")  # the independent pydicom reader
    np.testing.assert_array_equal(values, reference_values)
    np.testing.assert_allclose(affine, reference_affine, atol=DS_ATOL)
    np.testing.assert_array_equal(values, HU)


def _per_frame_only(ds: Dataset, sequence: str) -> None:
    """Move functional group ``sequence`` from the shared item into every per-frame item."""
    shared = ds.SharedFunctionalGroupsSequence[0]
    item = shared[sequence].value[0]
    del shared[sequence]
    for frame in ds.PerFrameFunctionalGroupsSequence:
        setattr(frame, sequence, DicomSequence([item]))


def test_enhanced_per_frame_groups_override_shared(enhanced):
    path, single_values, single_affine = enhanced
    ds = pydicom.dcmread(path)
    _per_frame_only(ds, "PlaneOrientationSequence")
    _per_frame_only(ds, "PixelMeasuresSequence")
    transform = Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = "1", "-1000", "HU"
    ds.PerFrameFunctionalGroupsSequence[0].PixelValueTransformationSequence = DicomSequence([transform])
    ds.save_as(path)
    values, affine = read_dicom_volume(_one_series([path]))
    np.testing.assert_allclose(affine, single_affine, atol=DS_ATOL)
    expected = single_values.copy()
    expected[:, :, FRAME_ORDER[0]] += 24  # intercept -1000 instead of the shared -1024
    np.testing.assert_array_equal(values, expected)


# --- geometry faults ---------------------------------------------------------------------------------------------


def test_missing_slice_file(tmp_path):
    files = _ct(tmp_path)
    files.pop(2).unlink()
    with pytest.raises(InputError, match="missing slice") as error:
        read_dicom_volume(_one_series(files))
    assert error.value.path.startswith(f"{tmp_path} (series ") and "5 files" in error.value.path
    assert "gap of 4.0 mm" in error.value.problem and "2.0 mm apart" in error.value.problem


def test_missing_slices_of_issue_example(tmp_path):
    files = _ct(tmp_path, HU[:, :, :4])
    _restack(files[::-1], [-99.5, 103.0, 104.3, 105.5])  # file names against position order, too
    with pytest.raises(InputError) as error:
        read_dicom_volume(_one_series(files))
    assert "missing slice(s): gap of 202.5 mm between z=-99.5 and z=103.0" in error.value.problem


def _mutate_orientation(files):
    rewrite_tags(files[3], ImageOrientationPatient=["1", "0", "0", "0", "0.866025", "-0.5"])


def _mutate_spacing(files):
    _restack(files[:4], [0.0, 1.0, 2.3, 3.5])
    for file in files[4:]:
        file.unlink()


def _mutate_shear(files):  # every slice shifted a bit more along its rows: a gantry tilt
    iop = np.asarray(pydicom.dcmread(files[0]).ImageOrientationPatient, np.float64)
    _restack(files, [2.0 * k for k in range(6)], {k: 0.3 * k * iop[:3] for k in range(6)})


def _mutate_duplicate(files):
    rewrite_tags(files[4], ImagePositionPatient=pydicom.dcmread(files[3]).ImagePositionPatient)


def _mutate_pixel_spacing(files):
    rewrite_tags(files[1], PixelSpacing=["0.8", "0.75"])


def _mutate_size(files):
    ds = pydicom.dcmread(files[2])
    ds.Rows, ds.Columns = 10, 12
    ds.PixelData = np.zeros((10, 12), "<u2").tobytes()
    ds.save_as(files[2])


FAULTS = [
    (_mutate_orientation, "mixed slice orientations: IM_0001.dcm has ImageOrientationPatient"),
    (_mutate_orientation, "but IM_0004.dcm has [1.0000, 0.0000, 0.0000, 0.0000, 0.8660, -0.5000]"),
    (_mutate_spacing, "inconsistent slice spacing: gaps between consecutive slices of 1.0, 1.3, 1.2 mm"),
    (_mutate_shear, "mixed geometry: IM_0006.dcm is offset by 1.5 mm across the slice plane"),
    (_mutate_duplicate, "duplicate slice positions: IM_0004.dcm and IM_0005.dcm both lie at z="),
    (_mutate_pixel_spacing, "different pixel spacings: IM_0001.dcm has PixelSpacing [0.8, 0.7] mm"),
    (_mutate_size, "slices of different sizes: IM_0001.dcm is 20 x 24 (rows x columns) but IM_0003.dcm is 10 x 12"),
]


@pytest.mark.parametrize("mutate, message", FAULTS)
def test_geometry_faults_are_named(tmp_path, mutate, message):
    files = _ct(tmp_path)
    mutate(files)
    series = _one_series(sorted(tmp_path.iterdir()))
    with pytest.raises(InputError) as error:
        read_dicom_volume(series)
    assert message in error.value.problem
    assert error.value.path == series.label


# --- scanning a mixed export ---------------------------------------------------------------------------------------


def test_scan_of_mixed_export(tmp_path):
    export = tmp_path / "export"
    write_sitk_series(export / "b_sitk", ARRAY_ZYX, (0.8, 0.9, 2.5), (0.0, 0.0, 0.0), np.eye(3), description="<b>x")
    ct_files = _ct(export / "a_ct", seed="second")
    shutil.copy(get_testdata_file("rtstruct.dcm"), export / "rtstruct.dcm")  # no preamble: read by suffix
    shutil.copy(get_testdata_file("test-SR.dcm"), export / "b_sitk" / "report")  # preamble, no suffix
    (export / "corrupt.dcm").write_bytes(ct_files[0].read_bytes()[:600])  # cut inside the header
    (export / "README.txt").write_text("exported by a PACS\n")
    files = sorted(p for p in export.rglob("*") if p.is_file())

    scan = scan_dicom_files(files)
    assert [Path(s.folder).name for s in scan.series] == ["a_ct", "b_sitk"]
    assert [len(s.files) for s in scan.series] == [6, 6]
    assert scan.series[1].description == "<b>x"  # raw, unsanitised
    skipped = dict(scan.skipped)
    assert skipped[str(export / "rtstruct.dcm")] == "RT Structure Set Storage is not an image; skipped"
    assert skipped[str(export / "b_sitk" / "report")] == "Comprehensive SR Storage is not an image; skipped"
    assert "not a DICOM file" in skipped[str(export / "README.txt")]
    assert [path for path, _ in scan.failed] == [str(export / "corrupt.dcm")]
    assert "no Rows/Columns" in scan.failed[0][1]
    for series in scan.series:
        assert read_dicom_volume(series)[0].shape == (24, 20, 6)


@pytest.mark.parametrize("name", ["rtdose.dcm", "waveform_ecg.dcm", "rtplan.dcm"])
def test_non_image_sop_classes_are_skipped(name):
    path = get_testdata_file(name)
    scan = scan_dicom_files([path])
    uid = pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPClassUID
    assert scan.series == [] and scan.skipped == [(path, f"{uid.name} is not an image; skipped")]


def test_segmentation_storage_is_skipped(tmp_path):
    file = _ct(tmp_path)[0]
    rewrite_tags(file, SOPClassUID=pydicom.uid.SegmentationStorage)
    assert scan_dicom_files([file]).skipped == [(str(file), "Segmentation Storage is not an image; skipped")]


def _truncate_pixels(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:-300])


def _junk(file: Path) -> None:
    file.write_text("this is not DICOM at all\n" * 4)


@pytest.mark.parametrize(
    "damage, reason", [(_truncate_pixels, "is truncated: its pixel data ends at byte "), (_junk, "cannot be parsed")]
)
def test_damaged_files_fail(tmp_path, damage, reason):
    files = _ct(tmp_path, HU[:, :, :3])
    damage(files[1])
    scan = scan_dicom_files(files)
    assert len(scan.series) == 1 and len(scan.series[0].files) == 2
    assert len(scan.failed) == 1 and scan.failed[0][0] == str(files[1]) and reason in scan.failed[0][1]


def test_is_dicom_file(tmp_path):
    (tmp_path / "short.dcm").write_bytes(b"\0" * 100)
    assert is_dicom_file(get_testdata_file("CT_small.dcm"))
    assert not is_dicom_file(get_testdata_file("rtstruct.dcm"))  # valid, but written without preamble
    assert not is_dicom_file(tmp_path / "short.dcm")
    assert not is_dicom_file(tmp_path / "absent.dcm")
    assert not is_dicom_file(tmp_path)


# --- single files from pydicom's test data -------------------------------------------------------------------------


def test_single_slice_ct_small():
    path = get_testdata_file("CT_small.dcm")
    series = _one_series([path])
    values, affine = read_dicom_volume(series)
    assert values.shape == (128, 128, 1)
    np.testing.assert_array_equal(values[:, :, 0], pydicom.dcmread(path).pixel_array.T.astype(np.float32) - 1024)
    expected = np.array(
        [
            [-0.661468, 0.0, 0.0, 158.135803],
            [0.0, -0.661468, 0.0, 179.035797],
            [0.0, 0.0, 5.0, -75.699997],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    np.testing.assert_allclose(affine, expected, atol=1e-6)


def test_single_slice_without_thickness_is_one_mm(tmp_path):
    file = _ct(tmp_path, HU[:, :, :1], seed="one")[0]
    rewrite_tags(file, SliceThickness=None, SpacingBetweenSlices=None)
    values, affine = read_dicom_volume(_one_series([file]))
    assert values.shape == (24, 20, 1)
    normal = np.cross(OBLIQUE[:3, 0], OBLIQUE[:3, 1])
    np.testing.assert_allclose(affine[:3, 2], normal / np.linalg.norm(normal), atol=DS_ATOL)


@pytest.mark.parametrize(
    "name, colour",
    [("SC_rgb_small_odd.dcm", "RGB, 3 samples per pixel"), ("examples_palette.dcm", "PALETTE COLOR, 1 sample")],
)
def test_colour_image_is_refused(name, colour):
    series = _one_series([get_testdata_file(name)])
    with pytest.raises(InputError) as error:
        read_dicom_volume(series)
    assert error.value.problem.startswith(f"is a colour ({colour}")
    assert "a grey-scale CT/MR volume is expected" in error.value.problem


def test_undecodable_pixel_data_names_file_and_syntax(tmp_path):
    file = _ct(tmp_path, HU[:, :, :1], seed="j2k")[0]
    ds = pydicom.dcmread(file)
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a codestream"])
    ds["PixelData"].VR = "OB"
    ds.save_as(file, enforce_file_format=True)
    with pytest.raises(InputError) as error:
        read_dicom_volume(_one_series([file]))
    assert error.value.path == str(file)
    assert "cannot decode its pixel data (transfer syntax JPEG 2000 Image Compression (Lossless Only)" in str(
        error.value
    )


# --- ordering ------------------------------------------------------------------------------------------------------


def test_shuffled_names_and_instance_numbers(tmp_path):
    files = _ct(tmp_path / "in")
    shuffled = [4, 1, 5, 0, 3, 2]
    for k, file in enumerate(files):
        rewrite_tags(file, InstanceNumber=shuffled[k] + 1)
        file.rename(tmp_path / "in" / f"{chr(ord('a') + shuffled[k])}.dcm")
    series = _one_series(sorted((tmp_path / "in").iterdir()))
    assert [Path(f).name for f in series.files] == [f"{chr(ord('a') + s)}.dcm" for s in shuffled]
    values, affine = read_dicom_volume(series)
    np.testing.assert_array_equal(values, HU)
    np.testing.assert_allclose(affine, OBLIQUE, atol=DS_ATOL)
