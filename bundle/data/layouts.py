"""Finding the cases of a dataset folder: BraTS 2019 / 2020-2021 / 2023+, LiTS, AbdomenCT-1K and MSD.

Files are paired by the case id (or case number) parsed from their names, never by listing order: folder listings
come back in arbitrary order, and sorting names as strings puts ``volume-10`` before ``volume-2``. Every
inconsistency (an image without a label, a label without an image, a missing BraTS modality, a duplicate case id)
is collected as a human-readable problem naming the files, so that one run reports all of them at once.

A case is ``{"case_id": str, "image": str | list[str], "label": str | None}`` with absolute paths; ``image`` is a
list in :data:`bundle.data.labels.BRATS_MODALITIES` order for BraTS and a single path otherwise.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field

from monai.utils import look_up_option

from bundle.data.case_ids import strip_image_suffix
from bundle.data.labels import DATASET_NAMES, DATASETS, DatasetSpec, msd_spec
from bundle.errors import BundleError

__all__ = ["DatasetLayoutError", "DatasetScan", "LAYOUTS", "scan_dataset", "discover_cases", "natural_key"]

LAYOUTS = {
    "brats": {
        "brats2019": "{HGG,LGG}/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz]",
        "brats2020-2021": "<case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz]",
        "brats2023": "<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii[.gz]",
    },
    "lits": {"lits": "[any/sub/folder/]volume-N.nii[.gz] + [any/sub/folder/]segmentation-N.nii[.gz]"},
    "abdomenct1k": {"abdomenct1k": "Case_XXXXX_0000.nii[.gz] + Mask/Case_XXXXX.nii[.gz] (or next to the image)"},
    "msd": {"msd": "dataset.json + imagesTr/<case>.nii.gz + labelsTr/<case>.nii.gz"},
}
"""Dataset -> layout name -> the file pattern looked for (quoted in error messages)."""

_NIFTI = re.compile(r"\.nii(?:\.gz)?$", re.IGNORECASE)
_BRATS_LEGACY = re.compile(r"^(?P<case>.+)_(?P<mod>flair|t1ce|t1|t2|seg)\.nii(?:\.gz)?$", re.IGNORECASE)
_BRATS_2023 = re.compile(r"^(?P<case>.+)-(?P<mod>t2f|t1n|t1c|t2w|seg)\.nii(?:\.gz)?$", re.IGNORECASE)
_LITS_VOLUME = re.compile(r"^volume-(\d+)\.nii(?:\.gz)?$", re.IGNORECASE)
_LITS_SEGMENTATION = re.compile(r"^segmentation-(\d+)\.nii(?:\.gz)?$", re.IGNORECASE)
_ACT1K_IMAGE = re.compile(r"^Case_(\d+)_0000\.nii(?:\.gz)?$", re.IGNORECASE)
_ACT1K_MASK = re.compile(r"^Case_(\d+)\.nii(?:\.gz)?$", re.IGNORECASE)


class DatasetLayoutError(BundleError, ValueError):
    """A dataset folder does not hold what its layout promises; the message lists every problem found."""


@dataclass
class DatasetScan:
    """Result of :func:`scan_dataset`.

    Attributes:
        dataset: dataset name (``brats``, ``lits``, ``abdomenct1k``, ``msd``).
        root: absolute dataset root.
        layout: the detected layout, a key of ``LAYOUTS[dataset]``.
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


def discover_cases(dataset: str, root: str | os.PathLike) -> tuple[list[dict], list[str]]:
    """Find the cases of a dataset folder.

    Args:
        dataset: one of ``brats``, ``lits``, ``abdomenct1k``, ``msd``.
        root: the dataset root folder.

    Returns:
        ``(cases, problems)``: complete cases ``{"case_id", "image", "label"}`` with absolute paths, and one
        human-readable string per problem found (each names the files or the case concerned).

    Raises:
        DatasetLayoutError: the root does not exist, or no case of any known layout was found under it.
    """
    scan = scan_dataset(dataset, root)
    return scan.cases, scan.problems


def scan_dataset(dataset: str, root: str | os.PathLike) -> DatasetScan:
    """Like :func:`discover_cases`, also returning the detected layout and the label spec that applies to it."""
    dataset = look_up_option(dataset.strip().lower() if isinstance(dataset, str) else dataset, DATASET_NAMES)
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise DatasetLayoutError(f"{root}: dataset root does not exist or is not a folder.")
    finder = {"brats": _scan_brats, "lits": _scan_lits, "abdomenct1k": _scan_abdomenct1k, "msd": _scan_msd}[dataset]
    scan = finder(root)
    if not scan.cases and not scan.problems:
        looked_for = "; ".join(f"{name}: {pattern}" for name, pattern in LAYOUTS[dataset].items())
        raise DatasetLayoutError(f"{root}: no {dataset} cases found. Layouts looked for: {looked_for}.")
    scan.cases.sort(key=lambda c: natural_key(c["case_id"]))
    return scan


def _nifti_files(root: str) -> list[str]:
    """Every NIfTI file under ``root`` (absolute paths, sorted); hidden files such as macOS ``._x.nii.gz`` skipped."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(folder, f) for f in files if not f.startswith(".") and _NIFTI.search(f))
    return sorted(found)


def _warn_unrecognised(root: str, paths: list[str], expected: str) -> None:
    if paths:
        shown = ", ".join(os.path.relpath(p, root) for p in paths[:10])
        more = f" (and {len(paths) - 10} more)" if len(paths) > 10 else ""
        warnings.warn(f"{root}: ignoring {len(paths)} NIfTI file(s) not named {expected}: {shown}{more}", stacklevel=3)


def _duplicates(kind: str, key: str, paths: list[str]) -> str:
    return f"duplicate case id {key}: {len(paths)} {kind} files: " + ", ".join(paths)


# ----------------------------------------------------------------------------------------------------------- BraTS


def _scan_brats(root: str) -> DatasetScan:
    files: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    styles: dict[str, set] = defaultdict(set)
    unrecognised = []
    for path in _nifti_files(root):
        name = os.path.basename(path)
        match = _BRATS_2023.match(name)
        style = "brats2023"
        if match is None:
            match, style = _BRATS_LEGACY.match(name), "legacy"
        if match is None:
            unrecognised.append(path)
            continue
        files[match["case"]][match["mod"].lower()].append(path)
        styles[match["case"]].add(style)

    all_styles = set().union(*styles.values()) if styles else set()
    if len(all_styles) > 1:
        legacy = sorted(c for c, s in styles.items() if "legacy" in s)[:3]
        new = sorted(c for c, s in styles.items() if "brats2023" in s)[:3]
        raise DatasetLayoutError(
            f"{root}: mixes BraTS naming styles (<case>_flair... as in 2019-2021, e.g. {legacy}; <case>-t2f... as "
            f"in 2023+, e.g. {new}); the label numbering differs between them, so keep one release per root."
        )
    if all_styles == {"brats2023"}:
        layout, spec = "brats2023", DATASETS["brats2023"]
    else:
        in_grade_folder = any(
            {"HGG", "LGG"} & set(os.path.relpath(p, root).split(os.sep)[:-1])
            for mods in files.values()
            for paths in mods.values()
            for p in paths
        )
        layout, spec = ("brats2019" if in_grade_folder else "brats2020-2021"), DATASETS["brats"]
    scan = DatasetScan("brats", root, layout, spec)
    file_token = {canonical: token for token, canonical in spec.file_modalities.items()}
    sep = "-" if layout == "brats2023" else "_"

    unrecognised = _rescue_misnamed_segs(files, unrecognised)
    _warn_unrecognised(root, unrecognised, f"<case>{sep}<modality>.nii[.gz]")

    for case_id in sorted(files, key=natural_key):
        mods = files[case_id]
        folders = sorted({os.path.dirname(p) for paths in mods.values() for p in paths})
        if len(folders) > 1:
            scan.problems.append(f"duplicate case id {case_id}: files in {len(folders)} folders: " + ", ".join(folders))
            continue
        repeated = [_duplicates(m, case_id, paths) for m, paths in sorted(mods.items()) if len(paths) > 1]
        if repeated:
            scan.problems.extend(repeated)
            continue
        folder = folders[0]
        images = {spec.file_modalities[m]: paths[0] for m, paths in mods.items() if m != "seg"}
        label = mods["seg"][0] if "seg" in mods else None
        missing = [m for m in spec.modalities if m not in images]
        expected = os.path.join(folder, f"{case_id}{sep}{{}}.nii[.gz]")
        if not images:
            scan.problems.append(f"label without image: {label} (case {case_id} has no image file in {folder})")
        elif missing:
            tokens = [file_token[m] for m in missing]
            text = f"case {case_id} in {folder}: missing modality {', '.join(tokens)}"
            text += f" (expected {expected.format(tokens[0])})"
            if label is None:
                text += " and no segmentation"
            scan.problems.append(text)
        elif label is None:
            scan.problems.append(
                f"image without label: case {case_id} in {folder} has no segmentation "
                f"(expected {expected.format('seg')})"
            )
        else:
            scan.cases.append({"case_id": case_id, "image": [images[m] for m in spec.modalities], "label": label})
    return scan


def _rescue_misnamed_segs(files: dict, unrecognised: list[str]) -> list[str]:
    """Adopt a lone segmentation-like file that sits in the folder of exactly one case lacking a seg.

    BraTS 2020 ships case 355's label as ``W39_1998.09.19_Segm.nii``; reporting that case as unlabelled would lose
    a training case to a naming accident. Returns the files that remain unrecognised.
    """
    cases_in_folder = defaultdict(set)
    for case_id, mods in files.items():
        for paths in mods.values():
            for p in paths:
                cases_in_folder[os.path.dirname(p)].add(case_id)
    seg_like = defaultdict(list)
    for path in unrecognised:
        if "seg" in os.path.basename(path).lower():
            seg_like[os.path.dirname(path)].append(path)
    remaining = []
    for path in unrecognised:
        folder = os.path.dirname(path)
        owners = cases_in_folder.get(folder, set())
        if path in seg_like[folder] and len(seg_like[folder]) == 1 and len(owners) == 1:
            case_id = next(iter(owners))
            if "seg" not in files[case_id]:
                warnings.warn(
                    f"{path}: not named <case>_seg.nii[.gz], but it is the only segmentation-like file in the folder "
                    f"of case {case_id} (as BraTS 2020 case 355 ships it); using it as that case's label.",
                    stacklevel=4,
                )
                files[case_id]["seg"].append(path)
                continue
        remaining.append(path)
    return remaining


# ------------------------------------------------------------------------------------------- LiTS and AbdomenCT-1K


def _pair_by_number(scan: DatasetScan, images: dict, labels: dict, case_id, image_name, label_name) -> None:
    for number in sorted(set(images) | set(labels)):
        case = case_id(number)
        image_paths, label_paths = images.get(number, []), labels.get(number, [])
        if len(image_paths) > 1 or len(label_paths) > 1:
            for kind, paths in (("image", image_paths), ("label", label_paths)):
                if len(paths) > 1:
                    scan.problems.append(_duplicates(kind, case, paths))
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


def _scan_numbered(root: str, dataset: str, image_re, label_re, expected: str) -> tuple[DatasetScan, dict, dict]:
    scan = DatasetScan(dataset, root, dataset, DATASETS[dataset])
    images, labels, unrecognised = defaultdict(list), defaultdict(list), []
    for path in _nifti_files(root):
        name = os.path.basename(path)
        if m := image_re.match(name):
            images[int(m[1])].append(path)
        elif m := label_re.match(name):
            labels[int(m[1])].append(path)
        else:
            unrecognised.append(path)
    _warn_unrecognised(root, unrecognised, expected)
    return scan, images, labels


def _scan_lits(root: str) -> DatasetScan:
    scan, images, labels = _scan_numbered(
        root, "lits", _LITS_VOLUME, _LITS_SEGMENTATION, "volume-N.nii[.gz] or segmentation-N.nii[.gz]"
    )
    _pair_by_number(
        scan,
        images,
        labels,
        case_id=lambda n: f"lits_{n:03d}",
        image_name=lambda n: f"volume-{n}.nii[.gz]",
        label_name=lambda n: f"segmentation-{n}.nii[.gz]",
    )
    return scan


def _scan_abdomenct1k(root: str) -> DatasetScan:
    # masks are paired by number wherever they sit: Mask/ under the root, a sibling Mask/ folder of an image
    # folder, or next to the images (the released archives have been repacked in all three ways)
    scan, images, labels = _scan_numbered(
        root, "abdomenct1k", _ACT1K_IMAGE, _ACT1K_MASK, "Case_XXXXX_0000.nii[.gz] or Case_XXXXX.nii[.gz]"
    )
    _pair_by_number(
        scan,
        images,
        labels,
        case_id=lambda n: f"Case_{n:05d}",
        image_name=lambda n: f"Case_{n:05d}_0000.nii[.gz]",
        label_name=lambda n: f"Mask/Case_{n:05d}.nii[.gz]",
    )
    return scan


# ------------------------------------------------------------------------------------------------------------- MSD


def _case_stem(path: str) -> str:
    return strip_image_suffix(os.path.basename(path))


def _scan_msd(root: str) -> DatasetScan:
    json_path = os.path.join(root, "dataset.json")
    if not os.path.isfile(json_path):
        raise DatasetLayoutError(
            f"{root}: no MSD dataset.json found. Layouts looked for: msd: {LAYOUTS['msd']['msd']}."
        )
    try:
        with open(json_path, encoding="utf-8") as f:
            info = json.load(f)
        spec = msd_spec(info)
    except (OSError, ValueError) as err:
        raise DatasetLayoutError(f"{json_path}: cannot use this MSD dataset description ({err}).") from err
    scan = DatasetScan("msd", root, "msd", spec)
    entries = info.get("training")
    if not isinstance(entries, list):
        scan.problems.append(f"{json_path}: no 'training' list of image/label pairs")
        entries = []

    def on_disk(rel):
        return os.path.normpath(os.path.join(root, rel))

    listed_images, listed_labels, seen = set(), set(), {}
    for index, entry in enumerate(entries):
        where = f"{json_path} training[{index}]"
        if not isinstance(entry, dict) or "image" not in entry:
            scan.problems.append(f"{where}: entry has no 'image' ({entry!r})")
            continue
        rel_images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        image_paths = [on_disk(p) for p in rel_images]
        label_path = on_disk(entry["label"]) if entry.get("label") else None
        listed_images.update(image_paths)
        if label_path:
            listed_labels.add(label_path)
        case_id = _case_stem(image_paths[0])
        if case_id in seen:
            scan.problems.append(f"duplicate case id {case_id}: listed in {seen[case_id]} and {where}")
            continue
        seen[case_id] = where
        missing = [p for p in image_paths if not os.path.isfile(p)]
        if missing:
            scan.problems.append(f"{where}: image file does not exist: {', '.join(missing)}")
        if label_path is None:
            scan.problems.append(f"image without label: {where} ({image_paths[0]}) has no 'label'")
        elif not os.path.isfile(label_path):
            scan.problems.append(f"{where}: label file does not exist: {label_path}")
        if missing or label_path is None or not os.path.isfile(label_path):
            continue
        image = image_paths if isinstance(entry["image"], list) else image_paths[0]
        scan.cases.append({"case_id": case_id, "image": image, "label": label_path})

    # cross-check the folders: files dataset.json does not know about are usually a half-copied task
    folder_images = _folder_niftis(os.path.join(root, "imagesTr"))
    folder_labels = _folder_niftis(os.path.join(root, "labelsTr"))
    image_stems = {_case_stem(p) for p in folder_images}
    for path in folder_images:
        if path not in listed_images:
            scan.problems.append(f"{path}: in imagesTr but not listed in {json_path} 'training'")
    for path in folder_labels:
        if path in listed_labels:
            continue
        if _case_stem(path) not in image_stems:
            scan.problems.append(f"label without image: {path} (no imagesTr/{os.path.basename(path)})")
        else:
            scan.problems.append(f"{path}: in labelsTr but not listed in {json_path} 'training'")
    return scan


def _folder_niftis(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    with os.scandir(folder) as it:
        names = [e.name for e in it if not e.name.startswith(".") and _NIFTI.search(e.name)]
    return [os.path.normpath(os.path.join(folder, n)) for n in sorted(names)]
