"""A CT volume as a DICOM series (CT Image Storage, one file per slice), and a pydicom-only reader for it.

Geometry conventions (DICOM PS3.3 C.7.6.2): ``ImageOrientationPatient`` holds the row direction (the direction
in which the *column* index grows) and then the column direction (in which the *row* index grows), in LPS;
``PixelSpacing`` is ``[spacing between rows, spacing between columns]``. The volume ``[I, J, K]`` maps to
columns = ``i``, rows = ``j``, slices = ``k``, so a slice's pixel array is ``volume[:, :, k].T`` and
``PixelSpacing = [spacing along j, spacing along i]``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid
from pydicom.valuerep import format_number_as_ds

from bundle.atomic import atomic_path
from bundle.data.dicom_input import lps_from_ras

__all__ = ["SeriesGeometry", "lps_from_ras", "read_series", "series_geometry", "write_ct_series"]

_FIXED_DATE, _FIXED_TIME = "20000101", "120000"


@dataclass(frozen=True)
class SeriesGeometry:
    """DICOM geometry of a volume ``[I, J, K]`` (all vectors in LPS mm).

    Attributes:
        row_cosine: direction of increasing column index (array axis ``i``).
        column_cosine: direction of increasing row index (array axis ``j``).
        pixel_spacing: ``(row spacing, column spacing)`` = ``(spacing along j, spacing along i)``.
        slice_step: vector from one slice position to the next (``k`` to ``k + 1``).
        positions: ``[K, 3]`` ``ImagePositionPatient`` of each slice (centre of its first pixel).
    """

    row_cosine: np.ndarray
    column_cosine: np.ndarray
    pixel_spacing: tuple[float, float]
    slice_step: np.ndarray
    positions: np.ndarray

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_cosine, self.column_cosine)


def series_geometry(affine: np.ndarray, shape: Sequence[int]) -> SeriesGeometry:
    """DICOM geometry of a volume with voxel-to-RAS ``affine`` and ``shape`` ``(I, J, K)``."""
    lps = lps_from_ras(affine)
    col_i, col_j, step = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    spacing_i, spacing_j = float(np.linalg.norm(col_i)), float(np.linalg.norm(col_j))
    k = np.arange(shape[2], dtype=np.float64)
    positions = lps[:3, 3][None, :] + k[:, None] * step[None, :]
    return SeriesGeometry(col_i / spacing_i, col_j / spacing_j, (spacing_j, spacing_i), step, positions)


def _ds(values: Sequence[float]) -> list[str]:
    # DS is limited to 16 characters; format explicitly instead of relying on pydicom's auto-formatting
    return [format_number_as_ds(float(v)) for v in values]


@dataclass(frozen=True)
class _CtSeries:
    """What every slice of a written series shares."""

    study_uid: str
    series_uid: str
    frame_uid: str
    description: str
    patient_id: str
    patient_name: str
    bits_stored: int
    rescale_intercept: int


def _ct_slice(k: int, sop_uid: str, stored: np.ndarray, geo, series: _CtSeries) -> Dataset:
    """The CT Image dataset of slice ``k`` (``stored``: its ``[I, J]`` unsigned pixels)."""
    normal = geo.normal
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _FIXED_DATE
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _FIXED_TIME
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "monai-sam-priors phantom"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "phantom abdomen CT"
    ds.SeriesDescription = series.description
    ds.PatientName = series.patient_name
    ds.PatientID = series.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "ABDOMEN"
    ds.SliceThickness = _ds([np.linalg.norm(geo.slice_step)])[0]
    ds.SpacingBetweenSlices = _ds([np.linalg.norm(geo.slice_step)])[0]
    ds.KVP = "120"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = series.study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = _ds(geo.positions[k])
    ds.ImageOrientationPatient = _ds([*geo.row_cosine, *geo.column_cosine])
    ds.FrameOfReferenceUID = series.frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds([float(np.dot(geo.positions[k], normal))])[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[0])
    ds.PixelSpacing = _ds(geo.pixel_spacing)
    ds.BitsAllocated = 16
    ds.BitsStored = series.bits_stored
    ds.HighBit = series.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = str(int(series.rescale_intercept))
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(stored.T).astype("<u2").tobytes()
    return ds


def write_ct_series(
    hu: np.ndarray,
    affine: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    uid_seed: str,
    patient_id: str = "PHANTOM",
    patient_name: str = "Phantom^CT",
    series_description: str = "phantom CT",
    rescale_intercept: int = -1024,
) -> list[Path]:
    """Write a CT volume as a DICOM series ``out_dir/IM_0001.dcm`` ... (one file per slice ``k``).

    Pixels are stored unsigned (``stored = HU - rescale_intercept``, RescaleSlope 1), 12 bits when they fit.
    UIDs are derived from ``uid_seed`` (``pydicom.uid.generate_uid`` with fixed entropy), dates are fixed, so
    the same input gives the same files. Each file is written to a temporary name and moved into place;
    stale ``IM_*.dcm`` files from an earlier, longer series are removed.

    Args:
        hu: ``[I, J, K]`` integer Hounsfield units, ``k`` the slice index.
        affine: voxel-to-world matrix in RAS (NIfTI convention), e.g. the NIfTI file's affine.
        out_dir: the series folder (created).
        uid_seed: entropy for the Study/Series/Frame-of-reference/SOP instance UIDs.
        patient_id: PatientID, also the StudyDescription's subject.
        patient_name: PatientName.
        series_description: SeriesDescription.
        rescale_intercept: RescaleIntercept; every HU must be >= it.

    Returns:
        the written file paths, in slice order.

    Raises:
        ValueError: for a non-3D or non-integer volume, or HU values the unsigned 16-bit encoding cannot hold.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3 or not np.issubdtype(hu.dtype, np.integer):
        raise ValueError(f"hu must be a 3D integer array [I, J, K], got {hu.dtype} {hu.shape}.")
    stored = hu.astype(np.int64) - int(rescale_intercept)
    if stored.min() < 0 or stored.max() > np.iinfo(np.uint16).max:
        raise ValueError(
            f"HU range [{hu.min()}, {hu.max()}] does not fit unsigned 16-bit storage with "
            f"RescaleIntercept {rescale_intercept}."
        )
    bits_stored = 12 if stored.max() < 4096 else 16
    geo = series_geometry(affine, hu.shape)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=[uid_seed, *map(str, parts)])

    series = _CtSeries(uid("study"), uid("series"), uid("frame-of-reference"), series_description, patient_id,
                       patient_name, bits_stored, int(rescale_intercept))
    written = []
    for k in range(hu.shape[2]):
        ds = _ct_slice(k, uid("instance", k), stored[:, :, k], geo, series)
        path = out / f"IM_{k + 1:04d}.dcm"
        with atomic_path(path) as tmp:
            pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
        written.append(path)
    for stale in out.glob("IM_*.dcm"):
        if stale not in written:
            stale.unlink()
    return written


def read_series(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a single-frame DICOM series with pydicom alone: rescaled values and the voxel-to-RAS affine.

    Slices are ordered by position along the slice normal (not by file name or InstanceNumber), which is what
    robust readers do. Meant as an independent check of other readers.

    Args:
        folder: folder holding the series' files (``*.dcm``) and nothing else of the same series.

    Returns:
        ``(values, affine)``: float32 ``[I, J, K]`` (``i`` = column, ``j`` = row) and a 4 x 4 RAS affine.

    Raises:
        ValueError: when the folder holds no DICOM files.
    """
    files = sorted(Path(folder).glob("*.dcm"))
    if not files:
        raise ValueError(f"no *.dcm files in {folder}.")
    slices = [pydicom.dcmread(f) for f in files]
    iop = np.asarray(slices[0].ImageOrientationPatient, np.float64)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    slices.sort(key=lambda s: float(np.dot(np.asarray(s.ImagePositionPatient, np.float64), normal)))
    values = np.stack(
        [s.pixel_array.T.astype(np.float32) * float(s.RescaleSlope) + float(s.RescaleIntercept) for s in slices],
        axis=-1,
    )
    first = np.asarray(slices[0].ImagePositionPatient, np.float64)
    last = np.asarray(slices[-1].ImagePositionPatient, np.float64)
    row_spacing, col_spacing = (float(v) for v in slices[0].PixelSpacing)
    if len(slices) > 1:
        step = (last - first) / (len(slices) - 1)
    else:
        step = normal * float(getattr(slices[0], "SliceThickness", 1.0))
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row * col_spacing, col * row_spacing, step, first
    return values, lps_from_ras(lps)
