"""DICOM files written by other tools (SimpleITK, ITK, highdicom), and those tools' own readings, for tests.

Importable from any test folder as ``tests.data.dicom_fixtures`` (the repository root is on ``sys.path``).

Geometry arguments follow ITK: ``array_zyx`` is indexed ``[slice, row, column]``, ``spacing`` and ``origin`` are
``(x, y, z)`` in LPS mm, ``direction`` is the 3 x 3 matrix whose columns are the LPS directions of the column, row
and slice indices. Both ITK writers need every geometry and UID tag given per slice: without them GDCM writes a
Secondary Capture image with no ImagePositionPatient, and SimpleITK gives every file a new SeriesInstanceUID.
"""

from __future__ import annotations

import contextlib
import locale
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

__all__ = [
    "itk_series_reference",
    "ras_affine",
    "rewrite_tags",
    "sitk_series_reference",
    "write_itk_series",
    "write_legacy_enhanced_ct",
    "write_sitk_series",
]

_SOP_CLASSES = {"CT": CTImageStorage, "MR": MRImageStorage}


@contextlib.contextmanager
def _locale_kept():
    """ITK's and SimpleITK's GDCM series I/O leaves the process in the C locale: text I/O of every later test
    (subprocess output, ``Path.read_text``) would then decode as ASCII. Restores the locale (also as a decorator)."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def ras_affine(spacing: Sequence[float], origin: Sequence[float], direction) -> np.ndarray:
    """Voxel ``(i, j, k)`` -> RAS affine of an ITK geometry (LPS ``origin``, ``spacing``, 3 x 3 ``direction``)."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, np.float64).reshape(3, 3) @ np.diag(np.asarray(spacing, np.float64))
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _ds_text(values: Sequence[float]) -> str:
    return "\\".join(f"{float(v):.6f}" for v in values)


def _slice_tags(
    k: int,
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: np.ndarray,
    *,
    modality: str,
    uids: dict[str, str],
    description: str,
) -> dict[str, str]:
    """The tags that make slice ``k`` part of a proper series (GDCM keys ``group|element``)."""
    position = np.asarray(origin, np.float64) + direction[:, 2] * spacing[2] * k
    return {
        "0008|0016": _SOP_CLASSES[modality],
        "0008|0060": modality,
        "0008|103e": description,
        "0020|000d": uids["study"],
        "0020|000e": uids["series"],
        "0020|0052": uids["frame"],
        "0020|0011": "1",
        "0020|0013": str(k + 1),
        "0020|0032": _ds_text(position),
        "0020|0037": _ds_text([*direction[:, 0], *direction[:, 1]]),
        "0028|0030": _ds_text([spacing[1], spacing[0]]),
        "0018|0050": _ds_text([spacing[2]]),
        "0018|0088": _ds_text([spacing[2]]),
    }


def _uids(folder: Path, series_uid: str | None) -> dict[str, str]:
    seed = [str(folder)]
    return {
        "study": generate_uid(entropy_srcs=[*seed, "study"]),
        "series": series_uid or generate_uid(entropy_srcs=[*seed, "series"]),
        "frame": generate_uid(entropy_srcs=[*seed, "frame"]),
    }


@_locale_kept()
def write_sitk_series(
    folder: str | os.PathLike,
    array_zyx: np.ndarray,
    spacing: Sequence[float],
    origin: Sequence[float],
    direction,
    *,
    series_uid: str | None = None,
    description: str = "SimpleITK series",
    modality: str = "CT",
    names: Sequence[str] | None = None,
) -> list[Path]:
    """Write ``array_zyx`` (int16) with SimpleITK, one ``sitk.WriteImage``-style file per slice ``k``.

    Args:
        folder: output folder (created).
        array_zyx: ``[K, rows, columns]`` integer values (written as int16; GDCM stores slope 1, intercept 0).
        spacing: ``(column spacing, row spacing, slice spacing)`` in mm.
        origin: LPS position of the first voxel of slice 0.
        direction: 3 x 3 LPS direction matrix (columns: column, row, slice directions); may be left-handed.
        series_uid: SeriesInstanceUID (derived from ``folder`` when None).
        description: SeriesDescription.
        modality: ``"CT"`` or ``"MR"`` (sets Modality and the SOP class).
        names: file names per slice (default ``slice_000.dcm`` ...), e.g. shuffled ones.

    Returns:
        the written files, in slice order ``k`` of ``array_zyx``.
    """
    import SimpleITK as sitk

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    direction = np.asarray(direction, np.float64).reshape(3, 3)
    image = sitk.GetImageFromArray(np.asarray(array_zyx).astype(np.int16))
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in origin])
    image.SetDirection(direction.ravel().tolist())
    uids = _uids(out, series_uid)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # otherwise GDCM replaces the series / study UIDs given below
    written = []
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]  # a 2D image: its origin and direction lose z, hence the tags
        tags = _slice_tags(k, spacing, origin, direction, modality=modality, uids=uids, description=description)
        for key, value in tags.items():
            slice_image.SetMetaData(key, value)
        path = out / (names[k] if names else f"slice_{k:03d}.dcm")
        writer.SetFileName(str(path))
        writer.Execute(slice_image)
        written.append(path)
    return written


@_locale_kept()
def sitk_series_reference(folder: str | os.PathLike, series_uid: str) -> tuple[np.ndarray, np.ndarray]:
    """SimpleITK's own reading of a series (its GDCM file sorting): ``[I, J, K]`` float32 values, RAS affine."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid))
    image = reader.Execute()
    values = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)).astype(np.float32)
    return values, ras_affine(image.GetSpacing(), image.GetOrigin(), image.GetDirection())


@_locale_kept()
def write_itk_series(
    folder: str | os.PathLike,
    array_zyx: np.ndarray,
    spacing: Sequence[float],
    origin: Sequence[float],
    direction,
    *,
    series_uid: str | None = None,
    description: str = "ITK series",
    modality: str = "MR",
) -> list[Path]:
    """Write ``array_zyx`` (int16) with ITK's ``ImageSeriesWriter`` + ``GDCMImageIO`` (``IMG000.dcm`` ...).

    Same arguments as :func:`write_sitk_series`; the per-slice tags go through ``SetMetaDataDictionaryArray``.

    Returns:
        the written files, in slice order ``k``.
    """
    import itk

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    direction = np.asarray(direction, np.float64).reshape(3, 3)
    image = itk.image_from_array(np.ascontiguousarray(np.asarray(array_zyx).astype(np.int16)))
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in origin])
    image.SetDirection(itk.matrix_from_array(direction))
    uids = _uids(out, series_uid)
    # the wrapped vector holds *pointers* (std::vector<MetaDataDictionary *>): the Python list keeps the
    # dictionaries alive until the writer has run, or it reads freed memory and crashes
    keep = []
    dictionaries = itk.vector[itk.MetaDataDictionary]()
    for k in range(array_zyx.shape[0]):
        keep.append(itk.MetaDataDictionary())
        tags = _slice_tags(k, spacing, origin, direction, modality=modality, uids=uids, description=description)
        for key, value in tags.items():
            keep[-1][key] = value
        dictionaries.append(keep[-1])
    io = itk.GDCMImageIO.New()
    io.KeepOriginalUIDOn()
    files = [out / f"IMG{k:03d}.dcm" for k in range(array_zyx.shape[0])]
    writer = itk.ImageSeriesWriter[type(image), itk.Image[itk.SS, 2]].New()
    writer.SetInput(image)
    writer.SetImageIO(io)
    writer.SetFileNames([str(f) for f in files])
    writer.SetMetaDataDictionaryArray(dictionaries)
    writer.Update()
    del keep
    return files


@_locale_kept()
def itk_series_reference(folder: str | os.PathLike, series_uid: str) -> tuple[np.ndarray, np.ndarray]:
    """ITK's own reading of a series (``GDCMSeriesFileNames`` + ``ImageSeriesReader``): ``[I, J, K]``, RAS affine."""
    import itk

    names = itk.GDCMSeriesFileNames.New()
    names.SetDirectory(str(folder))
    reader = itk.ImageSeriesReader[itk.Image[itk.F, 3]].New()
    reader.SetImageIO(itk.GDCMImageIO.New())
    reader.SetFileNames(names.GetFileNames(series_uid))
    reader.Update()
    image = reader.GetOutput()
    values = np.transpose(itk.array_from_image(image), (2, 1, 0)).astype(np.float32)
    direction = itk.array_from_matrix(image.GetDirection())
    return values, ras_affine(tuple(image.GetSpacing()), tuple(image.GetOrigin()), direction)


def write_legacy_enhanced_ct(
    files: Sequence[str | os.PathLike], path: str | os.PathLike, frame_order: Sequence[int] | None = None
) -> Path:
    """Convert single-frame CT files into one Legacy Converted Enhanced CT file with highdicom.

    Args:
        files: the single-frame CT files of one series.
        path: the multi-frame file to write.
        frame_order: indices into ``files`` giving the frame order (default: as given). highdicom keeps this order
            because no dimension index is requested.

    Returns:
        ``path``.
    """
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    datasets = [pydicom.dcmread(f) for f in files]
    order = list(frame_order) if frame_order is not None else list(range(len(datasets)))
    image = LegacyConvertedEnhancedCTImage(
        [datasets[i] for i in order],
        series_instance_uid=generate_uid(entropy_srcs=[str(path), "series"]),
        series_number=100,
        sop_instance_uid=generate_uid(entropy_srcs=[str(path), "instance"]),
        instance_number=1,
        include_dimension_index=False,
    )
    image.save_as(path)
    return Path(path)


def rewrite_tags(path: str | os.PathLike, **keywords) -> Path:
    """Set (or, with value None, delete) data elements of a DICOM file in place, by keyword."""
    ds = pydicom.dcmread(path)
    for keyword, value in keywords.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)
    return Path(path)
