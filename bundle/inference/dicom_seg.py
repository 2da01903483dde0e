"""DICOM Segmentation (SEG) objects for label maps predicted on DICOM series, written and read with highdicom.

Batch inference writes one SEG per DICOM input series: the object PACS, 3D Slicer and OHIF display over the source
images. :func:`write_dicom_seg` encodes a label map ``[I, J, K]`` (``i`` = column, ``j`` = row, ``k`` = slice in the
order of :func:`bundle.data.dicom_input.read_dicom_volume`) as a BINARY segmentation with one segment per
:class:`SegmentSpec`; frame ``f`` of the source (a slice file, or a frame of a multi-frame image) receives
``label[:, :, k]`` where ``frame_order[k] == f``. highdicom takes the plane positions, orientation and spacing
from the source headers and references every source image, so the SEG shares the source's study, frame of
reference and patient.

Choices that viewers depend on:

- Every segment of ``segments`` is declared, present in the label or not, and by default every segment keeps a
  frame for every source frame (``omit_empty_frames=False``): OHIF versions have hung on segments without frames
  and misplaced segments whose frames skip slices. The cost is one bit per voxel and segment (about 6.5 MB for two
  segments on 512 x 512 x 100); ``omit_empty_frames=True`` stores only frames with foreground.
- Label values become segment numbers ``1..N`` in increasing value (highdicom requires consecutive numbers for
  BINARY); the segment label keeps the name, and :func:`read_dicom_seg_label` maps back through ``segments``.
- Text copied from the source (patient, study, equipment) stays DICOM data but is made valid for its value
  representation first: control characters and backslashes removed, lengths cut to the VR's limit, dates and code
  strings that do not parse emptied. A value a source writer broke (or a hostile one) thus never makes the SEG
  unreadable for strict readers; UIDs are references and are never changed (an invalid one is an error).
- Headers read with ``stop_before_pixels=True`` are enough: highdicom needs no source pixel data. Attributes that
  SimpleITK/GDCM does not write are filled in the copy given to highdicom: empty Type 2 patient/study attributes,
  and ``SliceThickness`` from the slice spacing (used for the SEG's pixel measures).

UIDs are derived from the source series, the algorithm and a digest of the encoded frames, so the same input gives
the same UIDs (a rerun replaces a SEG instead of adding a second one to a PACS).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from pydicom.valuerep import format_number_as_ds

import bundle
from bundle.atomic import atomic_path
from bundle.errors import InputError
from bundle.inference.dicom_text import character_set, clean_copy, clean_text, code_string, parses

__all__ = ["MANUFACTURER", "SegmentSpec", "read_dicom_seg_label", "segment_specs", "write_dicom_seg"]

logger = logging.getLogger(__name__)

MANUFACTURER = "MONAI SAM-priors bundle"
"""Manufacturer of the SEGs (the software that creates them)."""

_SCT = codes.SCT
_ANATOMY, _ABNORMAL, _TISSUE = _SCT.AnatomicalStructure, _SCT.MorphologicallyAbnormalStructure, _SCT.Tissue


@dataclass(frozen=True)
class SegmentSpec:
    """One segment of a SEG: a label value and what it shows (DICOM CID 7150/7151 style codes).

    Attributes:
        value: the label value in the label map (1 to 65535; 0 is background).
        name: the segment label shown by viewers, e.g. ``"liver"`` or ``"WT"``.
        category: segmented property category, e.g. SNOMED CT "Anatomical Structure".
        property_type: segmented property type, e.g. SNOMED CT "Liver" or "Neoplasm".
        anatomic_region: where an abnormal structure lies (e.g. "Liver" for a liver tumour), or None.
    """

    value: int
    name: str
    category: Code = _TISSUE
    property_type: Code = _TISSUE
    anatomic_region: Code | None = None

    def __post_init__(self):
        if isinstance(self.value, bool) or not isinstance(self.value, (int, np.integer)) or not 0 < self.value < 65536:
            raise ValueError(f"segment value must be an integer in [1, 65535], got {self.value!r} ({self.name!r}).")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"segment {self.value} needs a non-empty name, got {self.name!r}.")


def _neoplasm(region: Code | None = None) -> tuple[Code, Code, Code | None]:
    return _ABNORMAL, _SCT.Neoplasm, region


_BRATS_TUMOUR = "wt|whole tumor|tc|tumor core|et|enhancing tumor|netc|non enhancing tumor|brain tumor"
_ORGANS = {"liver": _SCT.Liver, "spleen": _SCT.Spleen, "kidney": _SCT.Kidney, "pancreas": _SCT.Pancreas}
_KNOWN: dict[str, tuple[Code, Code, Code | None]] = {
    **{organ: (_ANATOMY, code, None) for organ, code in _ORGANS.items()},
    "kidneys": (_ANATOMY, _SCT.Kidney, None),
    "brain": (_ANATOMY, _SCT.Brain, None),
    **{f"{organ} {kind}": _neoplasm(code) for organ, code in _ORGANS.items() for kind in ("tumor", "lesion", "cancer")},
    **{name: _neoplasm() for name in ("tumor", "neoplasm", "cancer", "mass")},
    "lesion": (_ABNORMAL, _SCT.Lesion, None),
    "cyst": (_ABNORMAL, _SCT.Cyst, None),
    "kidney cyst": (_ABNORMAL, _SCT.Cyst, _SCT.Kidney),
    # brain tumour sub-regions (BraTS): whole tumour, tumour core, enhancing tumour are neoplasm regions
    **{name: _neoplasm(_SCT.Brain) for name in _BRATS_TUMOUR.split("|")},
    **{name: (_ABNORMAL, _SCT.Edema, _SCT.Brain) for name in ("ed", "edema", "peritumoral edema", "snfh")},
    **{name: (_ABNORMAL, _SCT.Necrosis, _SCT.Brain) for name in ("ncr", "net", "ncr net", "necrosis", "necrotic core")},
}


def _name_key(name: str) -> str:
    key = re.sub(r"[\s_\-/]+", " ", name.strip().lower())
    return key.replace("tumour", "tumor").replace("oedema", "edema")


def segment_specs(names_by_value: Mapping[int, str]) -> list[SegmentSpec]:
    """Segment descriptions for a label set, with SNOMED CT codes for the names this project uses.

    Known names (case, ``_``/``-`` and British spelling ignored): organs (liver, spleen, kidney, pancreas, brain)
    as "Anatomical Structure"; tumours and lesions (``liver tumour``, ``tumor``, BraTS ``WT``/``TC``/``ET``...) as
    "Morphologically Abnormal Structure" / "Neoplasm" with the organ as anatomic region; oedema and necrosis
    likewise. Any other name gets "Tissue" / "Tissue", the generic pair 3D Slicer also uses for unnamed segments.

    Args:
        names_by_value: label value -> name, e.g. ``{0: "background", 1: "liver", 2: "liver tumour"}``; value 0
            (background) is skipped.

    Returns:
        one :class:`SegmentSpec` per non-zero value, in increasing value.
    """
    specs = []
    for value in sorted(names_by_value):
        if int(value) == 0:
            continue
        name = str(names_by_value[value])
        category, property_type, region = _KNOWN.get(_name_key(name), (_TISSUE, _TISSUE, None))
        specs.append(SegmentSpec(int(value), name, category, property_type, region))
    return specs


# ------------------------------------------------------------------------------------------ what a source must hold

_SOURCE_NEEDS = "SOPClassUID SOPInstanceUID StudyInstanceUID SeriesInstanceUID Rows Columns FrameOfReferenceUID"
_PATIENT_STUDY_TYPE2 = "PatientName PatientID PatientBirthDate PatientSex StudyDate StudyTime AccessionNumber StudyID"


# ------------------------------------------------------------------------------------------------ source geometry


def _source_name(datasets: Sequence[Dataset]) -> str:
    files = [getattr(ds, "filename", None) for ds in datasets]
    if all(isinstance(f, (str, os.PathLike)) and f for f in files):
        parents = {Path(f).parent for f in files}
        return os.fspath(files[0]) if len(files) == 1 or len(parents) > 1 else os.fspath(parents.pop())
    return f"DICOM series {datasets[0].get('SeriesInstanceUID', '(no SeriesInstanceUID)')}"


def _is_multiframe(datasets: Sequence[Dataset], multiframe: bool | None, source: str) -> bool:
    found = len(datasets) == 1 and "PerFrameFunctionalGroupsSequence" in datasets[0]
    if multiframe is not None and bool(multiframe) != found:
        what = "one multi-frame image" if found else f"{len(datasets)} single-frame image(s)"
        raise InputError(source, f"multiframe={multiframe} but the source is {what}.")
    return found


def _check_source(datasets: Sequence[Dataset], multiframe: bool, source: str) -> None:
    needed = _SOURCE_NEEDS.split()
    if not multiframe:
        needed += ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"]
    for ds in datasets:
        missing = [kw for kw in needed if ds.get(kw) in (None, "")]
        if missing:
            raise InputError(
                getattr(ds, "filename", None) or source,
                f"a DICOM SEG needs {', '.join(missing)} in every source image (the frame of reference places the "
                "segmentation; the UIDs reference the images); this one has none.",
            )
        for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            if not parses("UI", str(ds.get(kw))):
                raise InputError(getattr(ds, "filename", None) or source, f"{kw} {str(ds.get(kw))!r} is not a UID.")


def _slice_spacing(datasets: Sequence[Dataset]) -> float | None:
    """Distance between neighbouring slice positions along the slice normal (single-frame series)."""
    iop = np.asarray(datasets[0].ImageOrientationPatient, np.float64)
    normal = np.cross(iop[:3], iop[3:])
    distances = np.sort([float(np.dot(np.asarray(ds.ImagePositionPatient, np.float64), normal)) for ds in datasets])
    steps = np.diff(distances)
    steps = steps[steps > 1e-6]
    return float(np.median(steps)) if steps.size else None


def _header_for_highdicom(datasets: Sequence[Dataset], multiframe: bool, source: str, own_texts: Sequence[str]):
    """The first source header as highdicom gets it: cleaned text, missing Type 2 and SliceThickness filled, a
    SpacingBetweenSlices that contradicts the slice positions corrected."""
    cleaned: list[str] = []
    header = clean_copy(datasets[0], cleaned)
    if hasattr(datasets[0], "file_meta"):
        header.file_meta = copy.deepcopy(datasets[0].file_meta)
    if cleaned:
        # names only: the values are patient data and stay out of logs
        logger.warning(
            "%s: source header values invalid for their DICOM VR were cleaned for the SEG: %s",
            source,
            ", ".join(sorted(set(cleaned))),
        )
    for keyword in [*_PATIENT_STUDY_TYPE2.split(), "ReferringPhysicianName"]:
        if keyword not in header:
            setattr(header, keyword, "")
    measured = None if multiframe or len(datasets) < 2 else _slice_spacing(datasets)
    # GDCM (SimpleITK, ITK) writes SpacingBetweenSlices 1 whatever the spacing; highdicom copies it into the SEG's
    # pixel measures, whose volume geometry then disagrees with its frame positions
    stated = header.get("SpacingBetweenSlices")
    if measured is not None and stated not in (None, "") and abs(float(stated) - measured) > 0.01 * measured:
        logger.warning("%s: SpacingBetweenSlices %s disagrees with the slice positions (%.4g mm apart); the SEG "
                       "records %.4g", source, header.SpacingBetweenSlices, measured, measured)
        header.SpacingBetweenSlices = format_number_as_ds(measured)
    if not multiframe and header.get("SliceThickness") in (None, ""):
        spacing = measured or header.get("SpacingBetweenSlices")
        if spacing is None:
            raise InputError(source, "SliceThickness is missing and cannot be derived from a single slice.")
        header.SliceThickness = format_number_as_ds(float(spacing))
    charset = character_set(header, own_texts)
    if charset is not None:
        header.SpecificCharacterSet = charset
    elif "SpecificCharacterSet" in header:
        del header.SpecificCharacterSet
    return header


# -------------------------------------------------------------------------------------------------------- writing


def _label_array(label) -> np.ndarray:
    array = np.asarray(label)
    if array.ndim != 3:
        raise ValueError(f"label must be a 3D label map [I, J, K], got shape {array.shape}.")
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ValueError("label must hold integer values (a float label map has non-integer values).")
        array = array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"label must be an integer label map, got dtype {array.dtype}.")
    return array


def _segment_numbers(label: np.ndarray, specs: Sequence[SegmentSpec]) -> np.ndarray:
    """The label map with value ``specs[n].value`` replaced by segment number ``n + 1`` (0 stays 0)."""
    declared = [s.value for s in specs]
    low, top = (int(label.min()), int(label.max())) if label.size else (0, 0)
    if low < 0 or top > max(declared):
        raise ValueError(f"label values [{low}, {top}] are outside [0, {max(declared)}] (declared: {declared}).")
    lut = np.zeros(max(declared) + 1, np.uint8 if len(specs) < 256 else np.uint16)
    for number, spec in enumerate(specs, start=1):
        lut[spec.value] = number
    present = np.flatnonzero(np.bincount(label.ravel(), minlength=top + 1))
    undeclared = [int(v) for v in present if v and not lut[v]]
    if undeclared:
        raise ValueError(f"label values {undeclared} have no SegmentSpec (declared: {declared}).")
    return lut[label]


def _frame_order(frame_order: Sequence[int] | None, n_frames: int) -> np.ndarray:
    if frame_order is None:
        return np.arange(n_frames)
    order = np.asarray(list(frame_order), np.int64)
    in_range = order.ndim == 1 and order.size > 0 and 0 <= order.min() and order.max() < n_frames
    if not in_range or len(np.unique(order)) != len(order):
        raise ValueError(f"frame_order must list distinct frame indices in [0, {n_frames}), got {list(frame_order)}.")
    return order


def _seg_frames(label, datasets: Sequence[Dataset], multiframe: bool, frame_order: Sequence[int] | None,
                specs: Sequence[SegmentSpec], source: str) -> np.ndarray:
    """The SEG's ``[frames, rows, columns]`` segment numbers: ``label`` ``[I, J, K]`` on the source frames of
    ``frame_order``, the other frames empty.

    Raises:
        InputError: (naming the source) the label's shape is not the source's.
    """
    n_frames = int(datasets[0].get("NumberOfFrames", 1)) if multiframe else len(datasets)
    rows, columns = int(datasets[0].Rows), int(datasets[0].Columns)
    label = _label_array(label)
    order = _frame_order(frame_order, n_frames)
    if label.shape != (columns, rows, len(order)):
        raise InputError(
            source,
            f"label shape [I, J, K] = {tuple(label.shape)} does not match the source series "
            f"{(columns, rows, len(order))} ({columns} columns, {rows} rows, {len(order)} slices).",
        )
    numbers = _segment_numbers(label, specs)
    frames = np.zeros((n_frames, rows, columns), numbers.dtype)
    frames[order] = numbers.transpose(2, 1, 0)
    return frames


def _segment_descriptions(specs: Sequence[SegmentSpec], names: Sequence[str], model: str,
                          version: str) -> list:
    """One highdicom ``SegmentDescription`` per segment (numbered from 1), each naming the algorithm."""
    algorithm = hd.AlgorithmIdentificationSequence(name=model, family=codes.DCM.ArtificialIntelligence, version=version)
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=spec.category,
            segmented_property_type=spec.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=None if spec.anatomic_region is None else [spec.anatomic_region],
        )
        for number, (spec, name) in enumerate(zip(specs, names), start=1)
    ]


def write_dicom_seg(
    label,
    source_datasets: Sequence[Dataset],
    frame_order: Sequence[int] | None,
    segments: Sequence[SegmentSpec],
    path: str | os.PathLike,
    *,
    series_description: str = "SAM-prior segmentation",
    series_number: int = 300,
    algorithm_name: str = "monai-sam-priors",
    algorithm_version: str = bundle.__version__,
    multiframe: bool | None = None,
    omit_empty_frames: bool = False,
    manufacturer: str = MANUFACTURER,
) -> Path:
    """Write a label map predicted on a DICOM series as a BINARY DICOM Segmentation (atomically).

    Args:
        label: ``[I, J, K]`` integer label map (0 background) on the source grid: ``I`` = Columns, ``J`` = Rows,
            ``K`` = number of slices in ``frame_order``.
        source_datasets: the source headers (``stop_before_pixels=True`` is enough): the single-frame images in
            ``k`` order, or the one multi-frame image.
        frame_order: source frame (file index, or 0-based frame index of a multi-frame image) of each ``k``; None
            for ``range(number of frames)``. Source frames not listed get empty SEG frames.
        segments: one :class:`SegmentSpec` per label value (distinct values); all are declared in the SEG, present
            in the label or not.
        path: the output file; its name is the caller's choice.
        series_description: SeriesDescription (and ContentDescription) of the SEG.
        series_number: SeriesNumber of the SEG.
        algorithm_name: name in each segment's algorithm identification (and the SEG's model name / ContentLabel).
        algorithm_version: version in the algorithm identification and SoftwareVersions.
        multiframe: whether the source is one multi-frame image; None detects it, a value is checked.
        omit_empty_frames: store only frames with foreground (smaller; see the module docstring for viewers).
        manufacturer: Manufacturer of the SEG.

    Returns:
        ``path``.

    Raises:
        InputError: (naming the source) for a label whose shape is not the source's, or a source lacking what a SEG
            needs (UIDs, frame of reference, geometry) or that highdicom rejects.
        ValueError: for bad arguments: a non-3D or non-integer label, label values without a segment, duplicate
            segment values, an invalid ``frame_order``.
    """
    datasets = list(source_datasets)
    if not datasets:
        raise ValueError("source_datasets is empty: a SEG needs the source images' headers.")
    specs = sorted(segments, key=lambda s: s.value)
    if not specs or len({s.value for s in specs}) != len(specs):
        raise ValueError(f"segments must be non-empty with distinct values, got {[s.value for s in specs]}.")
    source = _source_name(datasets)
    multiframe = _is_multiframe(datasets, multiframe, source)
    _check_source(datasets, multiframe, source)
    frames = _seg_frames(label, datasets, multiframe, frame_order, specs, source)

    description = clean_text("LO", series_description)
    names = [clean_text("LO", s.name) or f"segment {s.value}" for s in specs]
    model = clean_text("LO", algorithm_name) or "unnamed algorithm"
    version = clean_text("LO", str(algorithm_version)) or "unknown"
    maker = clean_text("LO", manufacturer) or MANUFACTURER
    header = _header_for_highdicom(datasets, multiframe, source, [description, *names, model, version, maker])
    descriptions = _segment_descriptions(specs, names, model, version)
    digest = hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()
    seed = [
        str(datasets[0].SeriesInstanceUID),
        model,
        version,
        description,
        str(series_number),
        digest,
        repr([(s.value, n, s.category.value, s.property_type.value) for s, n in zip(specs, names)]),
    ]
    try:
        seg = hd.seg.Segmentation(
            source_images=[header, *datasets[1:]],
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=generate_uid(entropy_srcs=[*seed, "series"]),
            series_number=int(series_number),
            sop_instance_uid=generate_uid(entropy_srcs=[*seed, "instance"]),
            instance_number=1,
            manufacturer=maker,
            manufacturer_model_name=model,
            software_versions=version,
            device_serial_number="0",  # Type 1 in the Enhanced General Equipment module; software has none
            content_label=code_string(model, "SEGMENTATION"),
            content_description=description or None,
            omit_empty_frames=omit_empty_frames,
            series_description=description or None,
            specific_character_set=header.get("SpecificCharacterSet"),
        )
    except (ValueError, KeyError, AttributeError) as error:  # highdicom's verdict on the source, made readable
        problem = f"highdicom cannot build a SEG on this series: {type(error).__name__}: {error}"
        raise InputError(source, problem) from error
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return Path(path)


# -------------------------------------------------------------------------------------------------------- reading

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_KJI_TO_IJK = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], np.float64)


def _ijk_lps(affine_kji: np.ndarray, shape_kji: Sequence[int]) -> tuple[np.ndarray, bool]:
    """highdicom's ``(slice, row, column)`` affine as ``[I, J, K]`` with ``k`` along the slice normal.

    Returns the LPS affine and whether the slice axis had to be reversed for that.
    """
    lps = np.asarray(affine_kji, np.float64) @ _KJI_TO_IJK
    if np.dot(lps[:3, 2], np.cross(lps[:3, 0], lps[:3, 1])) >= 0:
        return lps, False
    lps[:3, 3] += (shape_kji[0] - 1) * lps[:3, 2]
    lps[:3, 2] *= -1
    return lps, True


def _value_lut(seg: hd.seg.Segmentation, segments: Sequence[SegmentSpec] | None, path) -> np.ndarray:
    numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence]
    lut = np.arange(max(numbers) + 1, dtype=np.int64)
    if segments is not None:
        by_name = {clean_text("LO", s.name): s.value for s in segments}
        for item in seg.SegmentSequence:
            if item.SegmentLabel not in by_name:
                raise InputError(path, f"segment {item.SegmentLabel!r} is not among {sorted(by_name)}.")
            lut[int(item.SegmentNumber)] = by_name[item.SegmentLabel]
    return lut.astype(np.uint8 if lut.max() < 256 else np.uint16)


def _source_origin(datasets: Sequence[Dataset], order: np.ndarray) -> np.ndarray:
    if "PerFrameFunctionalGroupsSequence" in datasets[0]:
        item = datasets[0].PerFrameFunctionalGroupsSequence[int(order[0])]
        return np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, np.float64)
    return np.asarray(datasets[int(order[0])].ImagePositionPatient, np.float64)


def read_dicom_seg_label(
    path: str | os.PathLike,
    source_datasets: Sequence[Dataset] | None = None,
    frame_order: Sequence[int] | None = None,
    *,
    segments: Sequence[SegmentSpec] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a BINARY or LABELMAP SEG back as a label map ``[I, J, K]`` and its voxel-to-RAS affine (highdicom).

    Without sources the grid is the SEG's own volume (highdicom ``get_volume``): its frames' positions,
    orientation and spacing, ``k`` along the slice normal; frames a SEG omitted at either end are outside it.
    With sources, the label is read per referenced source frame (``get_pixels_by_source_instance`` /
    ``get_pixels_by_source_frame``) on the source grid in ``frame_order``, and the affine is the SEG's geometry
    moved to the first source slice. highdicom's volume geometry stacks slices along their normal: for a sheared
    (gantry-tilted) series the affine's slice axis is the normal times the slice distance, not the true step.

    Args:
        path: the SEG file.
        source_datasets: the source headers as given to :func:`write_dicom_seg`, or None.
        frame_order: as for :func:`write_dicom_seg` (only with ``source_datasets``).
        segments: map segment labels back to these specs' values; None keeps segment numbers (1..N).

    Returns:
        ``(label, affine)``: uint8 (uint16 above 255) ``[I, J, K]`` and a 4 x 4 RAS affine.

    Raises:
        InputError: for a file that is not a readable SEG, has no regular volume geometry, or a segment label not
            in ``segments``.
    """
    try:
        seg = hd.seg.segread(path)
    except (OSError, ValueError, AttributeError, KeyError) as error:
        raise InputError(path, f"not a readable DICOM SEG: {error}") from error
    lut = _value_lut(seg, segments, path)
    if source_datasets is None:
        try:
            volume = seg.get_volume(combine_segments=True, relabel=False, dtype=np.uint16)
        except (ValueError, RuntimeError) as error:
            raise InputError(path, f"the SEG's frames do not form a regularly spaced volume: {error}") from error
        lps, flip = _ijk_lps(volume.affine, volume.spatial_shape)
        numbers = volume.array.transpose(2, 1, 0)
        return lut[numbers[:, :, ::-1] if flip else numbers], _LPS @ lps

    datasets = list(source_datasets)
    multiframe = "PerFrameFunctionalGroupsSequence" in datasets[0]
    n_frames = int(datasets[0].NumberOfFrames) if multiframe else len(datasets)
    order = _frame_order(frame_order, n_frames)
    kwargs = {"combine_segments": True, "relabel": False, "dtype": np.uint16}
    try:
        if multiframe:
            frames = seg.get_pixels_by_source_frame(datasets[0].SOPInstanceUID, [int(f) + 1 for f in order], **kwargs)
        else:
            frames = seg.get_pixels_by_source_instance([datasets[int(f)].SOPInstanceUID for f in order], **kwargs)
    except (ValueError, KeyError) as error:
        raise InputError(path, f"the SEG does not segment these source images: {error}") from error
    geometry = seg.get_volume_geometry()
    if geometry is None:
        raise InputError(path, "the SEG's frames do not form a regularly spaced volume.")
    lps, _ = _ijk_lps(geometry.affine, geometry.spatial_shape)
    step = lps[:3, 2]
    k0 = round(float(np.dot(lps[:3, 3] - _source_origin(datasets, order), step) / np.dot(step, step)))
    lps[:3, 3] -= k0 * step
    return lut[frames.transpose(2, 1, 0)], _LPS @ lps
