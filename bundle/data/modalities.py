"""The imaging modality of a dataset: what a model card records so that a model refuses scans of another modality.

``CT`` (Hounsfield units), ``MR`` or ``other`` (not checked): from the dataset preset when it is one the bundle
describes (:mod:`bundle.data.labels`: BraTS is MR, LiTS and AbdomenCT-1K are CT), otherwise from the image channel
names, which for a Medical Segmentation Decathlon task are its ``dataset.json`` ``modality`` names (``CT``, ``MRI``,
``T2``, ``ADC``, ...). The check against an input is :mod:`bundle.inference.modality`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DATASET_MODALITY", "MODALITIES", "MODALITY_TOKENS", "modality_of"]

MODALITIES = ("CT", "MR", "other")
"""What a model's images are: CT (Hounsfield units), MR, or anything else (no modality check)."""
#: dataset preset -> modality of its images
DATASET_MODALITY = {"brats": "MR", "brats2019": "MR", "brats2020": "MR", "brats2021": "MR", "brats2023": "MR",
                    "lits": "CT", "abdomenct1k": "CT"}
#: channel names (lower case) that mean CT or MR (MSD dataset.json modality names, BraTS file tokens)
MODALITY_TOKENS = {
    "CT": ("ct",),
    "MR": ("mr", "mri", "t1", "t1w", "t1ce", "t1c", "t1gd", "t1n", "t2", "t2w", "t2f", "flair", "adc", "dwi", "pd",
           "swi", "fmri", "bold", "t2*"),
}


def modality_of(dataset: str | None, channel_names: Sequence[str]) -> str:
    """``CT``, ``MR`` or ``other``: from the dataset preset when known, else from the channel names (all CT, or
    all MR sequences)."""
    if dataset and str(dataset).lower() in DATASET_MODALITY:
        return DATASET_MODALITY[str(dataset).lower()]
    found = set()
    for name in channel_names:
        token = str(name).strip().lower()
        kinds = [m for m, tokens in MODALITY_TOKENS.items() if token in tokens]
        found.add(kinds[0] if kinds else "other")
    return found.pop() if len(found) == 1 else "other"
