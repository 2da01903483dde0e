"""Decathlon-style datalists with per-slice labels and seeded case-level splits.

Weak supervision (WeakMedSAM, SAM-Mix) trains on slice labels ("is label v present in axial slice d?"), and several
workflows sample slices by them; computing them once here means no workflow reads a label volume just to know
which slices are positive. Entries follow the contract in ``docs/design.md``::

    {"case_id": "BraTS19_2013_2_1", "image": ["HGG/x/x_flair.nii.gz", ...], "label": "HGG/x/x_seg.nii.gz",
     "volume_labels": [1, 2, 4], "num_slices": 155,
     "slice_labels": {"1": [0, 0, 1, ...], "2": [...], "4": [...]}, "slice_foreground": [0, 0, 1, ...]}

Entries of the BraTS 2019 layout (``{HGG,LGG}/<case>/``) also record the case's ``"grade"`` (``"HGG"`` / ``"LGG"``,
the folder it sits in), for grade classification; other layouts have no grade and no such key.

Slices run along the last axis after ``Orientation("RAS")``, i.e. inferior to superior, whatever the file's
own axis order. The summaries record the label file they were computed from (``"summarised"``: size, modification
time and sha256, :mod:`bundle.data.summaries`), so a label edited afterwards is found by the workflows that read
them. Each entry also records what the case check verified (``"checked"``: size, modification time and
checks per file, :mod:`bundle.data.case_check`), so the workflows re-check only files changed since. Note:
``monai.data.load_decathlon_datalist`` joins ``base_dir`` to any string value that names an existing path, so for
layouts with ``<root>/<case_id>/`` folders ``case_id`` comes back as a folder path; its basename is still the case
id (the workflows read datalists with :mod:`bundle.data.datalist_io` instead).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirst, Orientation
from tqdm import tqdm

from bundle.atomic import remove_stale_temps, write_text_atomic
from bundle.data.case_check import RECORD_KEY, check_case_files
from bundle.data.case_ids import case_id_problem
from bundle.data.checks import InputError, check_image_file, check_label
from bundle.data.layouts import DatasetLayoutError, natural_key, scan_dataset
from bundle.data.summaries import SUMMARY_KEY, summary_record

__all__ = [
    "DatasetLayoutError",
    "build_datalist",
    "write_datalist",
    "split_sizes",
    "split_cases",
    "label_summary",
]


def split_sizes(num_cases: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """``(train, validation, test)`` case counts: fractions rounded half up, at least one training case.

    With few cases the rounding matters: 4 cases at 0.25 / 0.25 give 2 / 1 / 1; when rounding would leave no
    training case, the test split gives up a case first, then validation.

    Raises:
        ValueError: fractions outside [0, 1) or summing to 1 or more.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}.")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}.")
    # the epsilon keeps 0.5-ties from float error (e.g. 5 * 0.1 = 0.5000000000000001 or 0.49999...) rounding down
    n_val = math.floor(num_cases * val_fraction + 0.5 + 1e-9)
    n_test = math.floor(num_cases * test_fraction + 0.5 + 1e-9)
    while num_cases > 0 and n_val + n_test > num_cases - 1:
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    return num_cases - n_val - n_test, n_val, n_test


def split_cases(
    case_ids: Sequence[str], val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[str]]:
    """Split case ids into ``training`` / ``validation`` / ``testing``, deterministically for a seed.

    The ids are sorted first, so the split depends only on the set of cases and the seed, not on the order the
    file system listed them; then a ``numpy.random.default_rng(seed)`` permutation assigns them. Each split is
    returned in natural order.

    Raises:
        ValueError: duplicate ids or invalid fractions.
    """
    ids = sorted(case_ids, key=natural_key)
    if len(set(ids)) != len(ids):
        dupes = sorted({c for c in ids if ids.count(c) > 1}, key=natural_key)
        raise ValueError(f"duplicate case ids: {dupes}")
    _, n_val, n_test = split_sizes(len(ids), val_fraction, test_fraction)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    parts = {
        "validation": order[:n_val],
        "testing": order[n_val : n_val + n_test],
        "training": order[n_val + n_test :],
    }
    return {name: sorted(part, key=natural_key) for name, part in parts.items()}


def label_summary(
    label_path: str | MetaTensor, foreground_values: Sequence[int], label_values: Sequence[int] | None = None
) -> dict:
    """Read a label volume once and summarise it per axial slice.

    The volume goes through MONAI ``LoadImage(image_only=True)``, ``EnsureChannelFirst()`` and
    ``Orientation(axcodes="RAS")``, so "slice d" means the same anatomy whichever way the file stores its axes.

    Args:
        label_path: the label file, or the label already read and checked (``CaseCheck.label`` of
            :func:`bundle.data.case_check.check_case_files`), which is then neither read nor checked again.
        foreground_values: the dataset's foreground label values; each gets a ``slice_labels`` row.
        label_values: the full label set, background included, to reject other values; None skips that check.

    Returns:
        ``{"volume_labels", "num_slices", "slice_labels", "slice_foreground"}`` with plain ``int`` values.

    Raises:
        InputError: unreadable file, not a 3D single-channel volume, non-finite or non-integer values, or values
            outside ``label_values``; the message starts with the file path.
    """
    loaded = isinstance(label_path, MetaTensor)
    image = label_path if loaded else check_image_file(label_path, dtype=None)  # native dtype: uint8 stays 1 byte
    # labels=None: axis codes follow the MetaTensor's own space (RAS from MONAI's readers), MONAI's new default
    image = Orientation(axcodes="RAS", labels=None)(EnsureChannelFirst()(image))
    if not loaded:
        check_label(image, label_values)
    volume = image.as_tensor().numpy()[0]
    present = [int(v) for v in np.unique(volume) if int(v) != 0]
    slice_labels = {str(int(v)): (volume == v).any(axis=(0, 1)).astype(int).tolist() for v in foreground_values}
    return {
        "volume_labels": present,
        "num_slices": int(volume.shape[-1]),
        "slice_labels": slice_labels,
        "slice_foreground": (volume != 0).any(axis=(0, 1)).astype(int).tolist(),
    }


def _problem_text(root: str, what: str, problems: Sequence[str]) -> str:
    """``<root>: N <what>, the first: <problem>`` on the first line (the ``ERROR:`` line shows only that one, so it
    names a file at fault and its problem), then every problem, one per line."""
    first = f"{root}: {len(problems)} {what}" + (f", the first: {problems[0]}" if problems else "")
    return f"{first}\n" + "\n".join(f"  - {p}" for p in problems)


def build_datalist(
    dataset: str,
    root: str | os.PathLike,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    skip_incomplete: bool = False,
    relative: bool = True,
    progress: bool = True,
) -> dict:
    """Find the cases of a dataset folder, summarise their labels per slice and split them by case.

    Args:
        dataset: ``brats``, ``lits``, ``abdomenct1k`` or ``msd``.
        root: the dataset root.
        val_fraction: fraction of cases for validation.
        test_fraction: fraction of cases for testing.
        seed: seed of the case permutation.
        skip_incomplete: leave out cases with problems (missing files, duplicates, unreadable, truncated or
            mismatched images and labels, invalid label values) with one warning listing them, instead of raising.
        relative: paths relative to ``root`` (for ``load_decathlon_datalist(..., base_dir=root)``); False gives
            absolute paths.
        progress: show a progress bar over cases.

    Every case goes through :func:`bundle.data.case_check.check_case_files` (every image header and the label's
    voxels: readable, complete, 3D, one grid, label values in the set) and its entry records what was verified.

    Returns:
        the datalist: ``training`` / ``validation`` / ``testing`` entries (see the module docstring), ``dataset``,
        ``layout``, ``labels`` (``{"0": "background", ...}``), ``regions``, ``modalities``, ``seed``, ``fractions``.

    Raises:
        DatasetLayoutError: one error listing every problem (unless ``skip_incomplete``), or no usable case.
        ValueError: invalid fractions.
    """
    split_sizes(1, val_fraction, test_fraction)  # validate before the (long) label pass
    scan = scan_dataset(dataset, root)
    root = scan.root
    hint = "Fix them, or pass skip_incomplete=True (--skip-incomplete) to leave those cases out."
    if scan.problems and not skip_incomplete:
        text = _problem_text(root, f"problem(s) in the {scan.layout} layout", scan.problems)
        raise DatasetLayoutError(text + "\n" + hint)

    spec = scan.spec
    entries, case_problems = [], []
    for case in tqdm(scan.cases, desc=f"case checks ({scan.layout})", unit="case", disable=not progress):
        paths = _paths(case, root, relative)
        problem = case_id_problem(case["case_id"])
        if problem:  # named after its files: a datalist the other stages would refuse
            case_problems.append(f"case {case['case_id']}: {_first_file(case)}: {problem}")
            continue
        try:
            # the label's identity first: a label changed while it is read fails the workflows' check later
            source = summary_record(os.path.join(root, paths["label"]))
            checked = check_case_files(paths["image"], paths["label"], label_values=spec.label_values,
                                       image_channels=len(spec.modalities), data_root=root)
            summary = label_summary(checked.label, spec.foreground_values)
        except InputError as err:
            case_problems.append(f"case {case['case_id']}: {err}")
            continue
        grade = _brats2019_grade(case["label"], root) if scan.layout == "brats2019" else {}
        entries.append({**paths, **grade, **summary, SUMMARY_KEY: source, RECORD_KEY: checked.record})

    if case_problems and not skip_incomplete:
        raise DatasetLayoutError(_problem_text(root, "unusable case file(s)", case_problems) + "\n" + hint)
    skipped = list(scan.problems) + case_problems
    if skipped:
        warnings.warn(_problem_text(root, "problem(s); leaving those cases out", skipped), stacklevel=2)
    if not entries:
        raise DatasetLayoutError(f"{root}: no complete {scan.dataset} case left to build a datalist from.")

    by_id = {e["case_id"]: e for e in entries}
    splits = split_cases(list(by_id), val_fraction, test_fraction, seed)
    return {
        "dataset": scan.dataset,
        "layout": scan.layout,
        "labels": spec.labels_json(),
        "regions": {name: list(values) for name, values in spec.regions.items()},
        "modalities": list(spec.modalities),
        "seed": seed,
        "fractions": {"validation": val_fraction, "testing": test_fraction},
        **{name: [by_id[c] for c in splits[name]] for name in ("training", "validation", "testing")},
    }


def _brats2019_grade(label_path: str, root: str) -> dict:
    """``{"grade": "HGG" | "LGG"}`` from the grade folder above a BraTS 2019 case, or ``{}`` outside one."""
    folders = [p for p in os.path.relpath(label_path, root).split(os.sep)[:-1] if p in ("HGG", "LGG")]
    return {"grade": folders[-1]} if folders else {}


def _first_file(case: dict) -> str:
    """The case's (first) image file, absolute: what a message about the case points at."""
    image = case["image"][0] if isinstance(case["image"], list) else case["image"]
    return os.path.abspath(image)


def _paths(case: dict, root: str, relative: bool) -> dict:
    def fmt(path):
        return os.path.relpath(path, root).replace(os.sep, "/") if relative else os.path.abspath(path)

    image = [fmt(p) for p in case["image"]] if isinstance(case["image"], list) else fmt(case["image"])
    return {"case_id": case["case_id"], "image": image, "label": fmt(case["label"])}


def _dumps(obj, level: int = 0) -> str:
    """JSON with one key per line but lists of scalars on one line: a slice list of 155 values stays one line."""
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(obj, dict) and obj:
        body = ",\n".join(f"{inner}{json.dumps(str(k))}: {_dumps(v, level + 1)}" for k, v in obj.items())
        return "{\n" + body + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in obj):
        return "[\n" + ",\n".join(inner + _dumps(v, level + 1) for v in obj) + "\n" + pad + "]"
    return json.dumps(obj, allow_nan=False)


def write_datalist(datalist: dict, path: str | os.PathLike) -> str:
    """Write a datalist as JSON atomically (temporary file in the same folder, then ``os.replace``).

    A reader never sees a half-written file, and an interrupted run leaves the previous datalist intact.

    Returns:
        the absolute path written.
    """
    path = os.path.abspath(os.fspath(path))
    remove_stale_temps(os.path.dirname(path))  # leftovers of a write killed earlier
    write_text_atomic(path, _dumps(datalist) + "\n")
    return path
