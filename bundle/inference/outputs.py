"""The files batch inference writes for one input, each written to a temporary name and renamed into place.

- ``<name>_pred.nii.gz``: the label map in the input's own grid (its shape, including a 2D input's two axes, and its
  affine), uint8;
- ``<name>_pred.dcm``: for a DICOM input, a DICOM Segmentation referencing the source series
  (:mod:`bundle.inference.dicom_seg`), one segment per label value;
- ``<name>_classes.json`` and ``<name>_classes.csv``: for a classifier, the fused class probabilities per slice (or
  for the volume) and the predicted class names.

``_pred`` (:data:`PREDICTION_SUFFIX`) is not a label name of any dataset the bundle reads (BraTS ``<case>_seg``, LiTS
``segmentation-N``, AbdomenCT-1K ``Mask/<case>``, MSD ``labelsTr/<case>``) and holds no ``seg``, which the BraTS layout
scan takes for a misnamed label: predictions written next to a case's files never replace or pose as its ground
truth. Which model wrote them is recorded in ``<name>_record.json`` (:mod:`bundle.inference.records`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from bundle.atomic import atomic_path, write_text_atomic
from bundle.inference.dicom_seg import segment_specs, write_dicom_seg
from bundle.inference.sources import InputSource
from bundle.workflows.classification.report import predicted_names

__all__ = ["PREDICTION_SUFFIX", "expected_outputs", "write_classes", "write_label_dicom_seg", "write_label_nifti"]


#: the suffix of a prediction's file name (see the module docstring)
PREDICTION_SUFFIX = "_pred"


def expected_outputs(output_dir: Path, source: InputSource, kind: str, dicom_seg: bool = True) -> list[Path]:
    """The files a complete run writes for ``source`` with a model of ``kind``."""
    if kind == "classification":
        return [output_dir / f"{source.name}_classes.json", output_dir / f"{source.name}_classes.csv"]
    files = [output_dir / f"{source.name}{PREDICTION_SUFFIX}.nii.gz"]
    if dicom_seg and source.kind == "dicom":
        files.append(output_dir / f"{source.name}{PREDICTION_SUFFIX}.dcm")
    return files


def write_label_nifti(label: np.ndarray, affine: np.ndarray, spatial_shape: Sequence[int], path: Path) -> Path:
    """Write ``label`` (``[I, J, K]``, the input's grid) as a uint8 NIfTI in the input's loaded shape and affine."""
    volume = np.asarray(label, np.uint8).reshape(tuple(int(s) for s in spatial_shape))
    image = nib.Nifti1Image(volume, np.asarray(affine, np.float64))
    image.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:  # the temporary name keeps .nii.gz: nibabel picks the format from it
        nib.save(image, tmp)
    return path


def write_label_dicom_seg(label: np.ndarray, source: InputSource, segments: Mapping[int, str], path: Path,
                          description: str) -> Path:
    """Write ``label`` (``[I, J, K]`` in the series' sorted slice order) as a DICOM-SEG of ``source``'s series."""
    series = source.series
    return write_dicom_seg(np.asarray(label), series.datasets, series.frame_order, segment_specs(dict(segments)), path,
                           series_description=description, multiframe=series.multiframe)


def write_classes(rows: Sequence[Mapping], class_names: Sequence[str], multi_label: bool, json_path: Path,
                  csv_path: Path) -> list[Path]:
    """Write the class probabilities of one input as JSON and CSV (``slice_index`` empty for a volume)."""
    table = [{**row, "predicted": predicted_names([float(row[n]) for n in class_names], class_names, multi_label)}
             for row in rows]
    write_text_atomic(json_path, json.dumps({"class_names": list(class_names), "multi_label": bool(multi_label),
                                             "rows": table}, indent=1) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["slice_index", *class_names, "predicted"])
    for row in table:
        index = "" if row["slice_index"] is None else row["slice_index"]
        writer.writerow([index, *(row[n] for n in class_names), ";".join(row["predicted"])])
    write_text_atomic(csv_path, buffer.getvalue())
    return [json_path, csv_path]
