"""BraTS (2019-2021 and 2023+ releases): multi-modal brain tumour MRI.

The modality order is fixed to ``flair, t1, t1ce, t2`` for every release; the 2023+ file names ``t2f, t1n, t1c,
t2w`` map onto that same order, so a network trained on one release reads the other without re-ordering channels.
2023+ numbers the enhancing tumour 3 (2019-2021: 4): the scanner gives each folder the spec of its release.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import defaultdict
from types import MappingProxyType

from bundle.data.classification_task import GRADES, ClassificationTask, binary_task
from bundle.data.dataset_spec import DatasetSpec
from bundle.data.dataset_module import DatasetModule
from bundle.data.layout_scan import (DatasetLayoutError, DatasetScan, duplicates, natural_key, nifti_files,
                                     warn_unrecognised)

BRATS_MODALITIES = ("flair", "t1", "t1ce", "t2")
"""Channel order of every BraTS case in this bundle."""

BRATS_CHANNEL_NAMES = ("FLAIR", "T1", "T1ce", "T2")
"""The names of those channels in the workflows' configs and model cards."""

BRATS2023_MODALITY_NAMES = MappingProxyType({"t2f": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2"})
"""BraTS 2023+ file suffix -> the modality (and so the channel) it stands for."""

BRATS = DatasetSpec(
    name="brats",
    labels={
        0: "background",
        1: "necrotic and non-enhancing tumour core (NCR/NET)",
        2: "peritumoral edema (ED)",
        4: "enhancing tumour (ET)",
    },
    modalities=BRATS_MODALITIES,
    regions={"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},
    file_modalities={m: m for m in BRATS_MODALITIES},
    description="BraTS 2019-2021 brain tumour MRI (4 modalities, ET = 4)",
    channel_names=BRATS_CHANNEL_NAMES,
    weak_task="brats_wt",
)
BRATS2023 = DatasetSpec(
    name="brats2023",
    labels={
        0: "background",
        1: "necrotic tumour core (NCR)",
        2: "peritumoral edema / surrounding non-enhancing FLAIR hyperintensity (ED/SNFH)",
        3: "enhancing tumour (ET)",
    },
    modalities=BRATS_MODALITIES,
    regions={"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)},
    file_modalities=dict(BRATS2023_MODALITY_NAMES),
    description="BraTS 2023+ brain tumour MRI (t2f/t1n/t1c/t2w files, ET = 3)",
    channel_names=BRATS_CHANNEL_NAMES,
)

LAYOUTS = {
    "brats2019": "{HGG,LGG}/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz]",
    "brats2020-2021": "<case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz]",
    "brats2023": "<case>/<case>-{t2f,t1n,t1c,t2w,seg}.nii[.gz]",
}
BRATS_LEGACY = re.compile(r"^(?P<case>.+)_(?P<mod>flair|t1ce|t1|t2|seg)\.nii(?:\.gz)?$", re.IGNORECASE)
BRATS_2023 = re.compile(r"^(?P<case>.+)-(?P<mod>t2f|t1n|t1c|t2w|seg)\.nii(?:\.gz)?$", re.IGNORECASE)


def scan(root: str) -> DatasetScan:
    """The cases of a BraTS folder (2019 grade folders, 2020-2021 or 2023+ names; one release per root)."""
    files: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    styles: dict[str, set] = defaultdict(set)
    unrecognised = []
    for path in nifti_files(root):
        name = os.path.basename(path)
        match = BRATS_2023.match(name)
        style = "brats2023"
        if match is None:
            match, style = BRATS_LEGACY.match(name), "legacy"
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
        layout, spec = "brats2023", BRATS2023
    else:
        in_grade_folder = any(
            {"HGG", "LGG"} & set(os.path.relpath(p, root).split(os.sep)[:-1])
            for mods in files.values()
            for paths in mods.values()
            for p in paths
        )
        layout, spec = ("brats2019" if in_grade_folder else "brats2020-2021"), BRATS
    scan = DatasetScan("brats", root, layout, spec)
    file_token = {canonical: token for token, canonical in spec.file_modalities.items()}
    sep = "-" if layout == "brats2023" else "_"

    unrecognised = _rescue_misnamed_segs(files, unrecognised)
    warn_unrecognised(root, unrecognised, f"<case>{sep}<modality>.nii[.gz]")

    for case_id in sorted(files, key=natural_key):
        mods = files[case_id]
        folders = sorted({os.path.dirname(p) for paths in mods.values() for p in paths})
        if len(folders) > 1:
            scan.problems.append(f"duplicate case id {case_id}: files in {len(folders)} folders: " + ", ".join(folders))
            continue
        repeated = [duplicates(m, case_id, paths) for m, paths in sorted(mods.items()) if len(paths) > 1]
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


DATASET = DatasetModule(
    name="brats",
    specs=(BRATS, BRATS2023),
    layouts=LAYOUTS,
    scan=scan,
    tasks=(
        binary_task("brats_wt", "brats", "slice", (1, 2, 4), "tumour", "BraTS: whole tumour (1, 2 or 4) in the slice"),
        ClassificationTask("brats_regions", "brats", "slice", ("WT", "TC", "ET"), True, ((1, 2, 4), (1, 4), (4,)),
                           description="BraTS: whole tumour, tumour core and enhancing tumour in the slice"),
        ClassificationTask("brats_grade", "brats", "volume", GRADES, source="grade",
                           description="BraTS 2019: high-grade (HGG) vs low-grade (LGG) glioma, from the case folder"),
    ),
    aliases={"brats2019": "brats", "brats2020": "brats", "brats2021": "brats", "brats2024": "brats2023"},
    order=0,
)
