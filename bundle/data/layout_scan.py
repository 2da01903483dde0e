"""What every dataset's layout scanner shares: the scan result, its error, NIfTI listing and pairing by case number.

A dataset module (:mod:`bundle.data.datasets`) scans its folders with these; :mod:`bundle.data.layouts` dispatches to
the module of a dataset name.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

from bundle.data.case_ids import strip_image_suffix
from bundle.data.dataset_spec import DatasetSpec
from bundle.errors import BundleError

__all__ = ["NIFTI", "DatasetLayoutError", "DatasetScan", "case_stem", "duplicates", "folder_niftis", "natural_key",
           "nifti_files", "scan_by_number", "warn_unrecognised"]

NIFTI = re.compile(r"\.nii(?:\.gz)?$", re.IGNORECASE)


class DatasetLayoutError(BundleError, ValueError):
    """A dataset folder does not hold what its layout promises; the message lists every problem found."""


@dataclass
class DatasetScan:
    """Result of :func:`bundle.data.layouts.scan_dataset`.

    Attributes:
        dataset: dataset name (``brats``, ``lits``, ``abdomenct1k``, ``msd``).
        root: absolute dataset root.
        layout: the detected layout, a key of the dataset module's ``layouts``.
        spec: label set and modality order that apply to this layout (BraTS 2023 numbers ET as 3).
        cases: complete cases, sorted by case id (natural order).
        problems: human-readable problems; a case with a problem is not in ``cases``.
    """

    dataset: str
    root: str
    layout: str
    spec: DatasetSpec
    cases: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def natural_key(text: str) -> list:
    """Sort key that orders embedded numbers by value (``case_2`` before ``case_10``)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def nifti_files(root: str) -> list[str]:
    """Every NIfTI file under ``root`` (absolute paths, sorted); hidden files such as macOS ``._x.nii.gz`` skipped."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(folder, f) for f in files if not f.startswith(".") and NIFTI.search(f))
    return sorted(found)


def warn_unrecognised(root: str, paths: list[str], expected: str) -> None:
    if paths:
        shown = ", ".join(os.path.relpath(p, root) for p in paths[:10])
        more = f" (and {len(paths) - 10} more)" if len(paths) > 10 else ""
        warnings.warn(f"{root}: ignoring {len(paths)} NIfTI file(s) not named {expected}: {shown}{more}", stacklevel=3)


def duplicates(kind: str, key: str, paths: list[str]) -> str:
    return f"duplicate case id {key}: {len(paths)} {kind} files: " + ", ".join(paths)


def scan_by_number(root: str, dataset: str, spec: DatasetSpec, image_re, label_re, expected: str, case_id,
                   image_name, label_name) -> DatasetScan:
    """The cases of a folder whose image and label files carry a case number in their names (LiTS, AbdomenCT-1K),
    paired by number wherever they sit under ``root``.

    Args:
        image_re, label_re: the file name patterns; group 1 is the case number.
        expected: the names looked for, quoted in the warning about other NIfTI files.
        case_id, image_name, label_name: case number -> the case id, and the image and label names a problem quotes.
    """
    scan = DatasetScan(dataset, root, dataset, spec)
    images, labels, unrecognised = defaultdict(list), defaultdict(list), []
    for path in nifti_files(root):
        name = os.path.basename(path)
        if m := image_re.match(name):
            images[int(m[1])].append(path)
        elif m := label_re.match(name):
            labels[int(m[1])].append(path)
        else:
            unrecognised.append(path)
    warn_unrecognised(root, unrecognised, expected)
    for number in sorted(set(images) | set(labels)):
        case = case_id(number)
        image_paths, label_paths = images.get(number, []), labels.get(number, [])
        if len(image_paths) > 1 or len(label_paths) > 1:
            for kind, paths in (("image", image_paths), ("label", label_paths)):
                if len(paths) > 1:
                    scan.problems.append(duplicates(kind, case, paths))
        elif not label_paths:
            scan.problems.append(
                f"image without label: {image_paths[0]} (no {label_name(number)} found anywhere under {scan.root})"
            )
        elif not image_paths:
            scan.problems.append(
                f"label without image: {label_paths[0]} (no {image_name(number)} found anywhere under {scan.root})"
            )
        else:
            scan.cases.append({"case_id": case, "image": image_paths[0], "label": label_paths[0]})
    return scan


def case_stem(path: str) -> str:
    return strip_image_suffix(os.path.basename(path))


def folder_niftis(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    with os.scandir(folder) as it:
        names = [e.name for e in it if not e.name.startswith(".") and NIFTI.search(e.name)]
    return [os.path.normpath(os.path.join(folder, n)) for n in sorted(names)]
