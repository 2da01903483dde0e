"""Phantom datasets written in the exact on-disk layouts of the real ones (docs/methods.md §6).

| dataset | layout | labels |
|---|---|---|
| brats2019 | ``{HGG,LGG}/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``, ``BraTS19_PH_0001_1`` | 1 NCR, 2 ED, 4 ET |
| brats2021 | ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz``, ``BraTS2021_00001`` | 1 NCR, 2 ED, 4 ET |
| brats2023 | ``<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii.gz``, ``BraTS-GLI-00001-000`` | 1 NCR, 2 ED, 3 ET |
| lits | ``volume-N.nii``, ``segmentation-N.nii`` (N from 0) | 1 liver, 2 tumour |
| abdomenct1k | ``Case_00001_0000.nii.gz``, ``Mask/Case_00001.nii.gz`` | 1 liver, 2 kidney, 3 spleen, 4 pancreas |
| msd | ``imagesTr/liver_N.nii.gz``, ``labelsTr/liver_N.nii.gz``, ``dataset.json`` | 1 liver, 2 cancer |

Geometry mimics the real data: BraTS 1 mm isotropic with the LPS-style affine ``diag(-1, -1, 1)`` and origin
``(0, size - 1, 0)``; CT with anisotropic spacing (in-plane 0.6-0.9 mm, slices 1.5-5 mm), LPS-style negative x/y,
origin offsets, and per case index ``n``: ``n % 4 == 0`` oblique (small rotation), ``n % 4 == 2`` inferior-going
slices (abdomenct1k) or an RAS grid (msd). Slice counts vary per case: 16-40 (CT) and 36-48 (BraTS) at
``size`` 64, scaled with ``size`` (at least 8 and 16, at most 200). Every case is determined by
``(seed, dataset, case index)`` alone, so ``--cases 2`` writes the same first two cases as ``--cases 4``.
Case variants by index: CT ``n % 4 == 1`` has no tumour; BraTS ``n % 4 == 2`` has a small tumour, LGG (2019) and
``n % 4 == 1`` (2021, 2023) have a non-enhancing core.
"""

from __future__ import annotations

import difflib
import gzip
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np

from bundle.atomic import write_bytes_atomic
from bundle.data.datasets import MODULES
from bundle.testing.dicom_series import write_ct_series
from bundle.testing.phantoms import CT_TISSUES, MR_MODALITIES, brain_phantom, ct_phantom

__all__ = [
    "BRATS_DATASETS",
    "CT_DATASETS",
    "DATASETS",
    "DATASET_LABELS",
    "PhantomCase",
    "make_phantoms",
    "save_nifti",
]

logger = logging.getLogger(__name__)

BRATS_DATASETS = ("brats2019", "brats2021", "brats2023")


def _recipes() -> dict[str, dict]:
    """The phantoms of dataset modules' recipes (``DatasetModule.phantom``, e.g. ``msd_spleen``): CT anatomy written
    in the MSD layout, the recipe's tissues as its label values."""
    recipes = {}
    for name, module in MODULES.items():
        if module.phantom is None:
            continue
        recipe = dict(module.phantom)
        if (recipe.get("anatomy"), recipe.get("layout")) != ("ct", "msd"):
            raise ValueError(f"dataset module {name!r}: the phantom writer makes CT phantoms in the MSD layout, not "
                             f"{recipe.get('anatomy')!r} in {recipe.get('layout')!r}")
        unknown = sorted(set(recipe["labels"]) - set(CT_TISSUES))
        if unknown:
            raise ValueError(f"dataset module {name!r}: phantom tissues {unknown} are none of {sorted(CT_TISSUES)}")
        recipes[name] = recipe
    return recipes


RECIPES = _recipes()
CT_DATASETS = ("lits", "abdomenct1k", "msd", *RECIPES)
DATASETS = BRATS_DATASETS + CT_DATASETS
#: label values each dataset's label maps use (background included)
DATASET_LABELS = {
    "brats2019": (0, 1, 2, 4),
    "brats2021": (0, 1, 2, 4),
    "brats2023": (0, 1, 2, 3),
    "lits": (0, 1, 2),
    "abdomenct1k": (0, 1, 2, 3, 4),
    "msd": (0, 1, 2),
    **{name: (0, *sorted(set(r["labels"].values()))) for name, r in RECIPES.items()},
}
MIN_SIZE, MAX_SIZE, MAX_SLICES = 16, 1024, 200

# (monai.utils.look_up_option would need `import monai`, i.e. torch: seconds, for a data generator)

# file suffix per phantom modality, and how the ET label and intensities are stored
_BRATS_FILES = {
    "brats2019": ({"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}, "_", 4, np.int16),
    "brats2021": ({"flair": "flair", "t1": "t1", "t1ce": "t1ce", "t2": "t2"}, "_", 4, np.int16),
    "brats2023": ({"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}, "-", 3, np.float32),
}

# CT organ codes of the phantom -> the dataset's label values (unlisted organs become background)
_CT_REMAP = {
    "lits": {"liver": 1, "liver_tumour": 2},
    "msd": {"liver": 1, "liver_tumour": 2},
    "abdomenct1k": {"liver": 1, "liver_tumour": 1, "kidney": 2, "spleen": 3, "pancreas": 4},
    **{name: dict(r["labels"]) for name, r in RECIPES.items()},
}

_MSD_JSON = {
    "name": "Liver",
    "description": "Liver and tumour segmentation (phantom)",
    "reference": "synthetic phantom written by bundle.testing.phantom_writers",
    "licence": "CC-BY-SA 4.0",
    "release": "1.0 (phantom)",
    "tensorImageSize": "3D",
    "modality": {"0": "CT"},
    "labels": {"0": "background", "1": "liver", "2": "cancer"},
}


@dataclass(eq=False)
class PhantomCase:
    """One written case.

    Attributes:
        case_id: the dataset's case identifier (folder name for BraTS, file stem for CT).
        images: modality -> path, in the dataset's modality order (BraTS: FLAIR, T1, T1ce, T2; CT: ``"ct"``).
        label: path of the label map.
        affine: voxel-to-RAS affine of the image(s) and label, exactly as stored.
        shape: spatial shape ``(I, J, K)``.
        group: ``"HGG"`` / ``"LGG"`` for BraTS 2019, else None.
        dicom_dir: folder of the DICOM series of this case, when one was written.
    """

    case_id: str
    images: dict[str, Path]
    label: Path
    affine: np.ndarray
    shape: tuple[int, int, int]
    group: str | None = None
    dicom_dir: Path | None = None


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Save ``array`` as NIfTI-1 with ``affine`` as both qform and sform (code 1, scanner), atomically.

    ``.nii.gz`` is gzip-compressed with a zero timestamp, so equal arrays give byte-identical files.
    """
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    data = img.to_bytes()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return write_bytes_atomic(path, data)


def _float32_exact(m: np.ndarray) -> np.ndarray:
    # NIfTI stores the sform in float32: keep the affine representable so what is written is what is read
    return np.asarray(m, np.float32).astype(np.float64)


def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A small oblique rotation: a few degrees about the superior axis and a tilt about the left-right axis.
    Small enough that every axis keeps an unambiguous closest anatomical direction."""
    yaw = np.deg2rad(rng.uniform(4, 8)) * rng.choice([-1, 1])
    tilt = np.deg2rad(rng.uniform(2, 4)) * rng.choice([-1, 1])
    rz = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(tilt), -np.sin(tilt)], [0, np.sin(tilt), np.cos(tilt)]])
    return rz @ rx


def _slices(offset: int, index: int, low: int, high: int, stride: int, size: int, minimum: int) -> int:
    # a stride coprime with the range walks through all counts, so nearby cases never share a count; a stride
    # near 0.4 x range keeps three consecutive cases >= 3 apart, so they stay distinct down to half the size
    base = low + (offset + stride * index) % (high - low + 1)
    return int(np.clip(round(base * size / 64), minimum, MAX_SLICES))


def _ct_geometry(
    rng: np.random.Generator, dataset: str, index: int, size: int, offset: int
) -> tuple[tuple[int, int, int], np.ndarray]:
    spacing_xy = round(rng.uniform(0.6, 0.9) * 256) / 256
    spacing_z = float(rng.choice([1.5, 2.0, 2.5, 3.0, 4.0, 5.0]))
    shape = (size, size, _slices(offset, index, 16, 40, 7, size, 8))
    signs = np.array([-1.0, -1.0, 1.0])
    rotation = np.eye(3)
    if index % 4 == 0:
        rotation = _rotation(rng)
    elif index % 4 == 2 and dataset == "abdomenct1k":
        signs[2] = -1.0
    elif index % 4 == 2 and dataset == "msd":
        signs[:2] = 1.0
    m = _float32_exact(rotation @ np.diag(signs * [spacing_xy, spacing_xy, spacing_z]))
    centre_world = np.array([rng.uniform(-15, 15), rng.uniform(-40, 10), rng.uniform(-600, -100)])
    origin = np.round((centre_world - m @ ((np.asarray(shape) - 1) / 2)) * 64) / 64
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = m, origin
    return shape, affine


def _brats_geometry(index: int, size: int, offset: int) -> tuple[tuple[int, int, int], np.ndarray]:
    # as the real BraTS NIfTIs: 1 mm, x and y flipped, origin (0, size - 1, 0)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = size - 1
    return (size, size, _slices(offset, index, 36, 48, 5, size, 16)), affine


def _case_rng(seed: int, dataset: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, DATASETS.index(dataset), index])


def _slice_offset(seed: int, dataset: str) -> int:
    """Dataset-level start of the walk through slice counts (see :func:`_slices`)."""
    return int(np.random.default_rng([seed, DATASETS.index(dataset)]).integers(0, 1000))


def _write_brats_case(
    dataset: str, out: Path, index: int, size: int, rng: np.random.Generator, offset: int
) -> PhantomCase:
    files, sep, et_label, dtype = _BRATS_FILES[dataset]
    group = None
    if dataset == "brats2019":
        group = "LGG" if index % 3 == 1 else "HGG"
        case_id = f"BraTS19_PH_{index + 1:04d}_1"
        folder = out / group / case_id
    elif dataset == "brats2021":
        case_id = f"BraTS2021_{index + 1:05d}"
        folder = out / case_id
    else:
        case_id = f"BraTS-GLI-{index + 1:05d}-000"
        folder = out / case_id
    enhancing = group != "LGG" and not (group is None and index % 4 == 1)
    shape, affine = _brats_geometry(index, size, offset)
    volumes, labels = brain_phantom(
        shape, affine, rng, tumour_scale=0.45 if index % 4 == 2 else 1.0, enhancing=enhancing
    )
    if et_label != 4:
        labels[labels == 4] = et_label
    images = {}
    for modality in MR_MODALITIES:
        data = np.rint(volumes[modality]).astype(dtype) if np.issubdtype(dtype, np.integer) else volumes[modality]
        images[modality] = save_nifti(data, affine, folder / f"{case_id}{sep}{files[modality]}.nii.gz")
    label = save_nifti(labels, affine, folder / f"{case_id}{sep}seg.nii.gz")
    return PhantomCase(case_id, images, label, affine, shape, group=group)


def _ct_paths(dataset: str, out: Path, index: int) -> tuple[str, Path, Path]:
    if dataset == "lits":
        return f"volume-{index}", out / f"volume-{index}.nii", out / f"segmentation-{index}.nii"
    if dataset == "abdomenct1k":
        case_id = f"Case_{index + 1:05d}"
        return case_id, out / f"{case_id}_0000.nii.gz", out / "Mask" / f"{case_id}.nii.gz"
    case_id = f"{RECIPES[dataset]['case_prefix'] if dataset in RECIPES else 'liver'}_{index}"  # MSD layout
    return case_id, out / "imagesTr" / f"{case_id}.nii.gz", out / "labelsTr" / f"{case_id}.nii.gz"


def _write_ct_case(
    dataset: str, out: Path, index: int, size: int, rng: np.random.Generator, offset: int, dicom_uid_seed: str | None
) -> PhantomCase:
    case_id, image_path, label_path = _ct_paths(dataset, out, index)
    shape, affine = _ct_geometry(rng, dataset, index, size, offset)
    num_tumours = 0 if index % 4 == 1 else int(rng.integers(1, 5))
    hu, organs = ct_phantom(shape, affine, rng, num_tumours=num_tumours)
    labels = np.zeros_like(organs)
    for organ, value in _CT_REMAP[dataset].items():
        labels[organs == CT_TISSUES[organ]] = value
    image = save_nifti(hu, affine, image_path)
    label = save_nifti(labels, affine, label_path)
    dicom_dir = None
    if dicom_uid_seed is not None:
        dicom_dir = out / "dicom" / case_id
        write_ct_series(hu, affine, dicom_dir, uid_seed=f"{dicom_uid_seed}/{case_id}", patient_id=case_id)
    return PhantomCase(case_id, {"ct": image}, label, affine, shape, dicom_dir=dicom_dir)


def _write_msd_json(out: Path, cases: list[PhantomCase], dataset: str = "msd") -> None:
    content = {**_MSD_JSON, **RECIPES[dataset]["dataset_json"]} if dataset in RECIPES else dict(_MSD_JSON)
    content["numTraining"] = len(cases)
    content["numTest"] = 0
    content["training"] = [
        {"image": f"./imagesTr/{c.images['ct'].name}", "label": f"./labelsTr/{c.label.name}"} for c in cases
    ]
    content["test"] = []
    write_bytes_atomic(out / "dataset.json", (json.dumps(content, indent=4) + "\n").encode())


def make_phantoms(
    dataset: str,
    out_dir: str | os.PathLike,
    cases: int = 4,
    size: int = 64,
    seed: int = 0,
    dicom: bool = False,
    progress: Callable[[PhantomCase], None] | None = None,
) -> list[PhantomCase]:
    """Write ``cases`` phantom cases of ``dataset`` into ``out_dir`` in that dataset's real layout.

    Args:
        dataset: one of :data:`DATASETS`.
        out_dir: dataset root (created); existing files of the same names are replaced.
        cases: number of cases (>= 1).
        size: in-plane matrix size (``MIN_SIZE`` .. ``MAX_SIZE``); slice counts scale with it (at most 200).
        seed: non-negative seed; the same seed gives identical arrays, another seed other arrays.
        dicom: CT datasets only: also write the first case as a DICOM series in ``out_dir/dicom/<case_id>/``
            (ignored, with a warning, for BraTS).
        progress: called with each case once it is written.

    Returns:
        the written cases, in index order.

    Raises:
        ValueError: for an unknown dataset (naming the closest one) or out-of-range numbers.
    """
    if dataset not in DATASETS:
        close = difflib.get_close_matches(str(dataset), DATASETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}.{hint}")
    if int(cases) < 1:
        raise ValueError(f"cases must be >= 1, got {cases}.")
    if not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise ValueError(f"size must be in [{MIN_SIZE}, {MAX_SIZE}], got {size}.")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dicom and dataset in BRATS_DATASETS:
        logger.warning("--dicom is ignored for %s: DICOM series are written for the CT datasets only.", dataset)
    written = []
    offset = _slice_offset(int(seed), dataset)
    for index in range(int(cases)):
        rng = _case_rng(int(seed), dataset, index)
        if dataset in BRATS_DATASETS:
            case = _write_brats_case(dataset, out, index, int(size), rng, offset)
        else:
            uid_seed = f"phantom/{seed}/{dataset}" if dicom and index == 0 else None
            case = _write_ct_case(dataset, out, index, int(size), rng, offset, uid_seed)
        written.append(case)
        if progress is not None:
            progress(case)
    if dataset == "msd" or dataset in RECIPES:
        _write_msd_json(out, written, dataset)
    return written
