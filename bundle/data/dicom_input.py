"""DICOM exports as input: find the image series among a folder's files, and read one series as a checked volume.

An export folder may hold several series, non-image objects (RT structure sets, SR documents, presentation states,
DICOMDIR) and junk. :func:`scan_dicom_files` reads headers only and sorts the files into :class:`DicomSeries`
(``skipped``: what is not an image; ``failed``: what looks like DICOM but cannot be used). :func:`read_dicom_volume`
then reads one series' pixels, after checks that turn the usual export faults (colour images, mixed orientations,
missing or repeated slices, uneven spacing, sheared stacks) into an :class:`~bundle.errors.InputError` with numbers.

Conventions (DICOM PS3.3 C.7.6.2; the test writer :mod:`bundle.testing.dicom_series` shares them): the volume
``[I, J, K]`` has ``i`` = column, ``j`` = row, ``k`` = slice ordered by position along the slice normal (``row
cosine x column cosine``); a slice's pixel array is ``volume[:, :, k].T``; ``PixelSpacing`` is ``[spacing along j,
spacing along i]``; the affine maps voxels to RAS (DICOM's LPS with x and y negated). Multi-frame files (Enhanced
and Legacy Converted Enhanced CT/MR/PET) are read through their functional groups (per-frame first, then shared,
then the top level).

Pydicom does not raise on a file cut short: it returns the elements read so far. A file whose header lacks the
image size, or whose (uncompressed) pixel data element runs past the end of the file, is therefore reported in
``failed`` here: the header read stops at that element, whose length is checked against the file size.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from bundle.errors import InputError

__all__ = ["DicomScan", "DicomSeries", "check_dicom_series", "is_dicom_file", "lps_from_ras", "read_dicom_volume",
           "scan_dicom_files"]

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
ORIENTATION_TOLERANCE = 1e-3  # per direction-cosine component
SPACING_TOLERANCE = 0.01  # relative deviation of a slice gap from the median gap
MISSING_SLICE_RATIO = 1.5  # a gap this many times the median gap means slices are missing
DUPLICATE_TOLERANCE_MM = 0.01  # slices closer than this along the normal share a position
# in-plane offset allowed between slices, as a fraction of a pixel: the rounding of ImagePositionPatient to a few
# decimals stays far below it, while a gantry tilt or a second stack shifts slices by whole pixels
SHEAR_TOLERANCE_PIXELS = 0.1


@dataclass
class DicomSeries:
    """One image series (single-frame files) or one multi-frame file, in slice order.

    Attributes:
        series_uid: SeriesInstanceUID ('' when the files have none).
        files: single-frame: one file per slice, in ``k`` order; multi-frame: ``[the file]``.
        datasets: headers (read without pixel data), in the order of ``files``.
        multiframe: whether this is one multi-frame file.
        frame_order: multi-frame: 0-based frame indices in ``k`` order; single-frame: ``list(range(len(files)))``.
        modality: Modality ('' if none).
        description: raw SeriesDescription ('' if none); not sanitised.
        sop_class_uid: SOPClassUID of the first file.
    """

    series_uid: str
    files: list[str]
    datasets: list[Dataset]
    multiframe: bool
    frame_order: list[int]
    modality: str = ""
    description: str = ""
    sop_class_uid: str = ""

    @property
    def folder(self) -> str:
        """The deepest folder holding all of the series' files."""
        return os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in self.files])

    @property
    def label(self) -> str:
        """Human description for messages: ``<common folder> (series <uid>, N files)``; a series of one file (a
        multi-frame file, a single slice) is named by its file."""
        uid = self.series_uid or "without SeriesInstanceUID"
        if self.multiframe:
            return f"{self.files[0]} (series {uid}, {len(self.frame_order)} frames)"
        if len(self.files) == 1:
            return f"{self.files[0]} (series {uid}, 1 file)"
        return f"{self.folder} (series {uid}, {len(self.files)} files)"


@dataclass
class DicomScan:
    """What :func:`scan_dicom_files` found.

    Attributes:
        series: image series, sorted by folder, then SeriesInstanceUID, then first file.
        skipped: ``(path, reason)`` of files that are not images (non-image SOP classes, non-DICOM files).
        failed: ``(path, reason)`` of files that look like DICOM but cannot be parsed or are incomplete.
    """

    series: list[DicomSeries] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def lps_from_ras(affine: np.ndarray) -> np.ndarray:
    """Convert a voxel-to-RAS affine to voxel-to-LPS (the conversion is its own inverse)."""
    return _LPS @ np.asarray(affine, np.float64)

def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file with the ``DICM`` marker at byte 128 (False for short or unreadable files)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _meta(ds: Dataset) -> Dataset:
    return getattr(ds, "file_meta", None) or Dataset()


def _sop_class(ds: Dataset) -> str:
    uid = ds.get("SOPClassUID") or _meta(ds).get("MediaStorageSOPClassUID") or ""
    return str(uid).strip()


def _is_image_class(uid: str, ds: Dataset) -> bool:
    """Image storage SOP classes are all named '... Image Storage' (PS3.4 B.5); unknown ones are judged by size."""
    if not uid or UID(uid).is_private or UID(uid).name == uid:
        return "Rows" in ds and "Columns" in ds
    return "Image Storage" in UID(uid).name


def _class_name(uid: str) -> str:
    return UID(uid).name if UID(uid).name != uid else f"SOP class {uid}"


def _looks_like_bare_dicom(head: bytes) -> bool:
    # a DICOM data set without preamble starts with a group 0x0002 or 0x0008 tag (little endian)
    return head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00"


def _pixel_data_problem(f, size: int) -> str:
    """Why the pixel data element at ``f``'s position (where a ``stop_before_pixels`` read ends) is cut short."""
    offset = f.tell()
    head = f.read(12)
    if len(head) < 8:
        return f"is truncated: it ends after its header ({size} bytes) without pixel data"
    if head[:2] not in (b"\xe0\x7f", b"\x7f\xe0"):
        return ""  # not at a pixel data element: nothing to judge
    order = "<" if head[:2] == b"\xe0\x7f" else ">"
    # explicit VR (OB, OW, OF, OD, OL, OV, UN): 2 bytes VR, 2 reserved, 4 length; implicit VR: 4 bytes length. An
    # implicit length cannot look like those VRs: it would be odd, and pixel data lengths are even
    explicit = len(head) == 12 and head[4:5] in (b"O", b"U") and head[5:6].isalpha()
    header, length = (12, head[8:12]) if explicit else (8, head[4:8])
    (length,) = struct.unpack(f"{order}I", length)
    if length == 0xFFFFFFFF:  # encapsulated (compressed) frames: only decoding tells
        return ""
    if offset + header + length > size:
        return f"is truncated: its pixel data ends at byte {offset + header + length} but the file has {size} bytes"
    return ""


def _read_header(path: str) -> tuple[Dataset | None, str, str]:
    """``(dataset, '', '')`` for an image, else ``(None, reason to skip, reason it failed)`` with one reason set."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
            size = os.fstat(f.fileno()).st_size
            has_marker = len(head) == 132 and head[128:] == b"DICM"
            if not (has_marker or path.lower().endswith(_DICOM_SUFFIXES) or _looks_like_bare_dicom(head)):
                return None, "not a DICOM file (no 'DICM' marker at byte 128); skipped", ""
            f.seek(0)
            try:
                with warnings.catch_warnings():  # pydicom warns about every odd element of a malformed file
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(f, stop_before_pixels=True, force=not has_marker)
                    sop = _sop_class(ds)
                    is_image = _is_image_class(sop, ds)
            except Exception as exc:  # noqa: BLE001 - pydicom raises many types on malformed input; it is recorded
                return None, "", f"cannot be parsed as DICOM: {type(exc).__name__}: {exc}".splitlines()[0]
            if not sop and not is_image:
                return None, "", "cannot be parsed as DICOM: no SOP Class UID and no image size in its header"
            if not is_image:
                return None, f"{_class_name(sop)} is not an image; skipped", ""
            if "Rows" not in ds or "Columns" not in ds:
                return None, "", f"is incomplete: the {_class_name(sop)} header has no Rows/Columns (file truncated?)"
            problem = _pixel_data_problem(f, size)
    except OSError as exc:
        return None, "", f"cannot be read: {exc.strerror or exc}"
    return (None, "", problem) if problem else (ds, "", "")


def scan_dicom_files(files: Sequence[str | os.PathLike]) -> DicomScan:
    """Sort DICOM files into image series, reading headers only.

    Single-frame images are grouped by SeriesInstanceUID (files without one, by folder) and ordered along the slice
    normal (by file name when positions are missing; :func:`read_dicom_volume` then reports that). Each multi-frame
    file is a series of its own. Files that differ in size or orientation stay together: the read reports them.

    Args:
        files: candidate files (e.g. everything under an export folder); non-DICOM files are skipped.

    Returns:
        the series, the skipped files and the failed files (see :class:`DicomScan`).
    """
    scan = DicomScan()
    groups: dict[tuple[str, str], list[tuple[str, Dataset]]] = {}
    for file in files:
        path = os.fspath(file)
        ds, skip, fail = _read_header(path)
        if ds is None:
            (scan.skipped if skip else scan.failed).append((path, skip or fail))
            continue
        uid = str(ds.get("SeriesInstanceUID") or "").strip()
        if _frame_count(ds) > 1:
            key = (uid, path)
        else:
            key = (uid, "" if uid else os.path.dirname(os.path.abspath(path)))
        groups.setdefault(key, []).append((path, ds))
    for (uid, _), members in groups.items():
        if _frame_count(members[0][1]) > 1:
            (path, ds), multiframe = members[0], True
            frame_order = _sorted_order([ds], [(0, f) for f in range(_frame_count(ds))])
            members = [(path, ds)]
        else:
            members.sort(key=lambda m: m[0])
            order = _sorted_order([ds for _, ds in members], [(i, 0) for i in range(len(members))])
            members, multiframe = [members[i] for i in order], False
            frame_order = list(range(len(members)))
        first = members[0][1]
        scan.series.append(
            DicomSeries(
                series_uid=uid,
                files=[p for p, _ in members],
                datasets=[ds for _, ds in members],
                multiframe=multiframe,
                frame_order=frame_order,
                modality=str(first.get("Modality") or ""),
                description=str(first.get("SeriesDescription") or ""),
                sop_class_uid=_sop_class(first),
            )
        )
    scan.series.sort(key=lambda s: (s.folder, s.series_uid, s.files[0]))
    return scan


@dataclass
class _Frame:
    """Header facts of one slice: a single-frame file, or one frame of a multi-frame file."""

    file: int
    index: int
    name: str
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: np.ndarray
    size: tuple[int, int]
    rescale: tuple[float, float]
    thickness: float


def _functional(ds: Dataset, frame: int, sequence: str, keyword: str):
    """``keyword`` from functional group ``sequence`` (per-frame, then shared), else from the top level."""
    for groups_name, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(groups_name)
        if groups and index < len(groups):
            items = groups[index].get(sequence)
            if items and keyword in items[0]:
                return items[0][keyword].value
    return ds.get(keyword)


def _numbers(value, count: int, what: str, where: str) -> np.ndarray:
    try:
        if isinstance(value, (str, bytes)):
            value = (value.decode(errors="replace") if isinstance(value, bytes) else value).split("\\")
        values = np.asarray([float(v) for v in (value if isinstance(value, Sequence) else [value])], np.float64)
    except (TypeError, ValueError):
        values = np.empty(0)
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise InputError(where, f"{what} {value!r} is not {count} numbers")
    return values


def _frame(ds: Dataset, file: int, index: int, name: str, where: str) -> _Frame:
    values = {}
    for keyword, sequence, count in (
        ("ImagePositionPatient", "PlanePositionSequence", 3),
        ("ImageOrientationPatient", "PlaneOrientationSequence", 6),
        ("PixelSpacing", "PixelMeasuresSequence", 2),
    ):
        value = _functional(ds, index, sequence, keyword)
        if value is None or value == "":
            raise InputError(where, f"{name} has no {keyword}; its place in a volume is unknown")
        values[keyword] = _numbers(value, count, f"{name}: {keyword}", where)
    orientation = values["ImageOrientationPatient"]
    lengths = np.linalg.norm(orientation.reshape(2, 3), axis=1)
    if np.any(np.abs(lengths - 1) > 1e-2) or abs(np.dot(orientation[:3], orientation[3:])) > 1e-2:
        raise InputError(
            where, f"{name}: ImageOrientationPatient {orientation.tolist()} is not two orthogonal unit vectors"
        )
    rescale = []
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        value = _functional(ds, index, "PixelValueTransformationSequence", keyword)
        rescale.append(default if value in (None, "") else float(_numbers(value, 1, f"{name}: {keyword}", where)[0]))
    thickness = 0.0
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = _functional(ds, index, "PixelMeasuresSequence", keyword)
        try:
            thickness = thickness or abs(float(value))
        except (TypeError, ValueError):
            pass
    return _Frame(
        file=file,
        index=index,
        name=name,
        position=values["ImagePositionPatient"],
        orientation=np.concatenate([o / n for o, n in zip(orientation.reshape(2, 3), lengths)]),
        pixel_spacing=values["PixelSpacing"],
        size=(int(ds.Rows), int(ds.Columns)),
        rescale=(rescale[0], rescale[1]),
        thickness=thickness or 1.0,
    )


def _frames(datasets: Sequence[Dataset], refs: Sequence[tuple[int, int]], names: Sequence[str], where: str):
    """Frames of ``refs`` = ``(file, frame index)``; a frame is named after its file, or its number in a multi-frame."""
    multiframe = len(datasets) == 1 and _frame_count(datasets[0]) > 1
    return [_frame(datasets[f], f, i, f"frame {i + 1}" if multiframe else names[f], where) for f, i in refs]


def _normal(frame: _Frame) -> np.ndarray:
    return np.cross(frame.orientation[:3], frame.orientation[3:])


def _sorted_order(datasets: Sequence[Dataset], refs: Sequence[tuple[int, int]]) -> list[int]:
    """Indices of ``refs`` sorted along the first slice's normal; the given order when geometry is unusable."""
    try:
        frames = _frames(datasets, refs, [str(i) for i in range(len(datasets))], "")
    except (InputError, AttributeError, TypeError, ValueError):
        return list(range(len(refs)))
    normal = _normal(frames[0])
    return sorted(range(len(frames)), key=lambda n: float(frames[n].position @ normal))


def _mm(value: float) -> str:
    text = f"{value:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _mm_list(values: Sequence[float], limit: int = 12) -> str:
    shown = ", ".join(_mm(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _check_same_grid(frames: list[_Frame], where: str) -> None:
    first = frames[0]
    for frame in frames[1:]:
        if np.max(np.abs(frame.orientation - first.orientation)) > ORIENTATION_TOLERANCE:
            raise InputError(
                where,
                f"mixed slice orientations: {first.name} has ImageOrientationPatient "
                f"[{', '.join(f'{v:.4f}' for v in first.orientation)}] but {frame.name} has "
                f"[{', '.join(f'{v:.4f}' for v in frame.orientation)}]; the slices do not form one volume",
            )
        if frame.size != first.size:
            raise InputError(
                where,
                f"slices of different sizes: {first.name} is {first.size[0]} x {first.size[1]} (rows x columns) but "
                f"{frame.name} is {frame.size[0]} x {frame.size[1]}",
            )
        if np.max(np.abs(frame.pixel_spacing - first.pixel_spacing)) > 1e-3 * np.max(first.pixel_spacing):
            raise InputError(
                where,
                f"different pixel spacings: {first.name} has PixelSpacing [{_mm_list(first.pixel_spacing)}] mm but "
                f"{frame.name} has [{_mm_list(frame.pixel_spacing)}] mm",
            )


def _check_stack(frames: list[_Frame], z: np.ndarray, where: str) -> None:
    """Checks of slices sorted by ``z`` (position along the normal): one straight stack, evenly spaced."""
    normal = _normal(frames[0])
    across = np.array([f.position - (f.position @ normal) * normal for f in frames])
    offsets = np.linalg.norm(across - across[0], axis=1)
    worst = int(np.argmax(offsets))
    if offsets[worst] > SHEAR_TOLERANCE_PIXELS * float(np.min(frames[0].pixel_spacing)):
        raise InputError(
            where,
            f"mixed geometry: {frames[worst].name} is offset by {_mm(offsets[worst])} mm across the slice plane from "
            f"{frames[0].name}, so the slices do not lie on one line along their normal (gantry tilt, or several "
            "stacks in one series)",
        )
    gaps = np.diff(z)
    same = np.flatnonzero(gaps < DUPLICATE_TOLERANCE_MM)
    if same.size:
        k = int(same[0])
        raise InputError(
            where,
            f"duplicate slice positions: {frames[k].name} and {frames[k + 1].name} both lie at z={_mm(z[k])} mm along "
            f"the normal ({same.size} such pair(s) among {len(frames)} slices; repeated acquisitions, echoes or "
            "phases in one series?)",
        )
    if gaps.size < 2:
        return
    # the lower median is always one of the gaps, also for an even count (gaps 2 and 6 mm: 2 mm, 1 slice missing)
    median = float(np.sort(gaps)[(gaps.size - 1) // 2])
    big = np.flatnonzero(gaps >= MISSING_SLICE_RATIO * median)
    if big.size:
        described = [f"gap of {_mm(gaps[k])} mm between z={_mm(z[k])} and z={_mm(z[k + 1])}" for k in big[:3].tolist()]
        missing = int(sum(max(1, round(gaps[k] / median) - 1) for k in big))
        raise InputError(
            where,
            f"missing slice(s): {'; '.join(described)}{' and more' if big.size > 3 else ''} (mm along the normal), "
            f"where slices are otherwise {_mm(median)} mm apart: about {missing} slice(s) missing",
        )
    deviation = np.abs(gaps - median) / median
    if np.max(deviation) > SPACING_TOLERANCE:
        raise InputError(
            where,
            f"inconsistent slice spacing: gaps between consecutive slices of {_mm_list(gaps)} mm (median "
            f"{_mm(median)} mm) differ by up to {100 * np.max(deviation):.0f}% (more than "
            f"{100 * SPACING_TOLERANCE:g}% allowed)",
        )


def _pixels(path: str, frames: int, size: tuple[int, int]) -> tuple[np.ndarray, Dataset]:
    """Stored pixel values ``[frames, rows, columns]`` of one file."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:  # re-raised with the file named; pydicom's error types vary
        raise InputError(path, f"cannot be read as DICOM: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    try:
        array = ds.pixel_array
    except Exception as exc:  # decoders (pydicom, pylibjpeg, GDCM, Pillow) raise many types
        syntax = UID(str(_meta(ds).get("TransferSyntaxUID") or ""))
        name = f"{syntax.name} ({syntax})" if syntax.name != syntax else str(syntax) or "unknown"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(path, f"cannot decode its pixel data (transfer syntax {name}): {reason}") from exc
    array = array.reshape((frames, *size)) if array.size == frames * size[0] * size[1] else array
    if array.shape != (frames, *size):
        raise InputError(path, f"pixel data of shape {array.shape} does not match {frames} frame(s) of {size}")
    return array, ds


def _checked_geometry(series: DicomSeries) -> tuple[list[_Frame], np.ndarray]:
    """The frames of ``series`` in ``k`` order and the voxel-to-LPS affine, from the headers alone."""
    where = series.label
    for ds in series.datasets:
        samples = int(ds.get("SamplesPerPixel") or 1)
        photometric = str(ds.get("PhotometricInterpretation") or "").strip()
        if samples != 1 or photometric.startswith(("PALETTE", "RGB", "YBR")):
            raise InputError(
                where,
                f"is a colour ({photometric or 'unknown'}, {samples} sample{'s' if samples != 1 else ''} per pixel) "
                "image; a grey-scale CT/MR volume is expected",
            )
    refs = [(0, i) for i in series.frame_order] if series.multiframe else [(f, 0) for f in range(len(series.files))]
    names = [os.path.relpath(f, series.folder) for f in series.files]
    frames = _frames(series.datasets, refs, names, where)
    _check_same_grid(frames, where)
    normal = _normal(frames[0])
    z = np.array([f.position @ normal for f in frames])
    order = np.argsort(z, kind="stable")
    frames, z = [frames[k] for k in order], z[order]
    _check_stack(frames, z, where)

    first = frames[0]
    row_spacing, column_spacing = first.pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = first.orientation[:3] * column_spacing
    lps[:3, 1] = first.orientation[3:] * row_spacing
    if len(frames) > 1:
        lps[:3, 2] = (frames[-1].position - first.position) / (len(frames) - 1)
    else:
        lps[:3, 2] = normal * first.thickness
    lps[:3, 3] = first.position
    return frames, lps


def check_dicom_series(series: DicomSeries) -> tuple[list[_Frame], np.ndarray]:
    """The checks of :func:`read_dicom_volume` that need no pixel data (colour, geometry, missing slices), on the
    headers :func:`scan_dicom_files` read: cheap enough to run on every series before any work starts.

    Returns:
        the checked geometry (frames in ``k`` order, voxel-to-LPS affine), which :func:`read_dicom_volume` takes so
        that a series is checked once.

    Raises:
        InputError: as :func:`read_dicom_volume`, with ``path`` = ``series.label``.
    """
    return _checked_geometry(series)


def read_dicom_volume(series: DicomSeries, geometry: tuple[list[_Frame], np.ndarray] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Read a series' pixels as one checked volume, with the modality LUT applied.

    Args:
        series: a series from :func:`scan_dicom_files`.
        geometry: what :func:`check_dicom_series` returned for it (None: checked here).

    Returns:
        ``(values, affine)``: float32 ``[I, J, K]`` (``i`` = column, ``j`` = row, ``k`` = slice along the normal)
        and the 4 x 4 voxel-to-RAS affine. A single slice gives ``[I, J, 1]`` whose third axis is
        SpacingBetweenSlices, SliceThickness or 1 mm along the normal.

    Raises:
        InputError: with ``path`` = ``series.label`` when the slices do not form one grey-scale volume (colour,
            missing geometry, mixed orientations, sizes or spacings, sheared stack, duplicate or missing slices,
            uneven spacing); with ``path`` = the file when its pixel data cannot be read or decoded.
    """
    frames, lps = geometry if geometry is not None else _checked_geometry(series)
    rows, columns = frames[0].size
    values = np.empty((columns, rows, len(frames)), np.float32)
    by_file: dict[int, list[int]] = {}
    for k, frame in enumerate(frames):
        by_file.setdefault(frame.file, []).append(k)
    for file, slots in by_file.items():
        count = _frame_count(series.datasets[file])
        stored, ds = _pixels(series.files[file], count, (rows, columns))
        for k in slots:
            frame = frames[k]
            if "ModalityLUTSequence" in ds and not series.multiframe:
                try:
                    from pydicom.pixels import apply_modality_lut
                except ImportError:  # pydicom 2 (the MONAI Label app's environment: pydicom-seg needs pydicom < 3)
                    from pydicom.pixel_data_handlers.util import apply_modality_lut

                values[:, :, k] = np.asarray(apply_modality_lut(stored[frame.index], ds), np.float32).T
            else:
                slope, intercept = frame.rescale
                values[:, :, k] = (stored[frame.index].astype(np.float64) * slope + intercept).T
    return values, lps_from_ras(lps)
