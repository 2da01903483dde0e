"""A model refuses images of another modality: the rule, in one place.

Every model card records the modality of its training images (``CT``, ``MR`` or ``other``;
:func:`bundle.data.modalities.modality_of`, from the dataset: BraTS is MR, LiTS and AbdomenCT-1K are CT, an MSD task
by its ``dataset.json`` ``modality`` names, which become the card's channel names). Batch inference checks each
input against it (:func:`modality_problem`):

- DICOM: the series' ``Modality`` attribute. ``CT`` for an MR model, or ``MR`` for a CT model, is a contradiction
  (other values, e.g. ``OT`` of a secondary capture, say nothing and leave the decision to the intensities).
- Intensities (every input, after loading), robust to a few outliers (percentiles, not the extremes):

  * a **CT model** expects Hounsfield units: any CT of a body holds fat (about -100 HU) or air (-1000 HU), so an
    input whose 0.5th percentile is above **-50** has an MR-like range (MR magnitudes are non-negative; normalised MR
    rarely goes below -5) and is refused;
  * an **MR model** expects no Hounsfield air: an input with **1 %** or more of its voxels below **-500** has an
    HU-like range (air around the patient is most of a CT's field of view; MR, raw or normalised, never goes there)
    and is refused.

A refusal is that input's failure with its reason; ``allow_modality_mismatch`` (``--allow_modality_mismatch true``)
runs the input anyway and the reason is recorded in its summary record (``modality_mismatch``). Models of modality
``other`` are never checked.
"""

from __future__ import annotations

import numpy as np

from bundle.data.modalities import MODALITY_TOKENS, modality_of

__all__ = ["CT_LOW_PERCENTILE", "CT_MIN_LOW", "MODALITY_TOKENS", "MR_AIR_FRACTION", "MR_AIR_HU", "check_input_modality",
           "modality_of", "modality_problem"]

#: CT model: an input whose ``CT_LOW_PERCENTILE`` percentile is above ``CT_MIN_LOW`` has no fat or air
CT_LOW_PERCENTILE, CT_MIN_LOW = 0.5, -50.0
#: MR model: an input with at least ``MR_AIR_FRACTION`` of its voxels below ``MR_AIR_HU`` has Hounsfield air
MR_AIR_HU, MR_AIR_FRACTION = -500.0, 0.01


def modality_problem(modality: str | None, image: np.ndarray | None = None, dicom_modality: str | None = None
                     ) -> str | None:
    """Why an input contradicts a model of ``modality``, or None.

    Args:
        modality: the model card's ``modality``.
        image: the loaded intensities (any shape; None to check the DICOM header only).
        dicom_modality: the series' DICOM ``Modality`` (None or '' for other files).
    """
    if modality not in ("CT", "MR"):
        return None
    header = (dicom_modality or "").strip().upper()
    if header in ("CT", "MR") and header != modality:
        return (f"DICOM Modality is {header} but the model was trained on {modality} images; pass "
                "--allow_modality_mismatch true to run it anyway")
    if image is None:
        return None
    values = np.asarray(image, np.float32).ravel()
    if values.size == 0:
        return None
    if modality == "CT":
        low = float(np.percentile(values, CT_LOW_PERCENTILE))
        if low > CT_MIN_LOW:
            return (f"intensities look like MR, not CT: the {CT_LOW_PERCENTILE} percentile is {low:.4g}, while any CT "
                    f"in Hounsfield units holds fat or air below {CT_MIN_LOW:g}; the model was trained on CT; pass "
                    "--allow_modality_mismatch true to run it anyway")
        return None
    air = float(np.mean(values < MR_AIR_HU))
    if air >= MR_AIR_FRACTION:
        return (f"intensities look like CT, not MR: {100 * air:.1f}% of the voxels are below {MR_AIR_HU:g} "
                "(Hounsfield air); the model was trained on MR; pass --allow_modality_mismatch true to run it anyway")
    return None


def check_input_modality(modality: str | None, label: str, image=None, dicom_modality: str | None = None,
                         allow: bool = False) -> str | None:
    """Batch inference's hook: the reason an input contradicts the model's modality (:func:`modality_problem`).

    Returns:
        None when it does not; the reason when ``allow`` (to record with the input).

    Raises:
        InputError: the reason, naming ``label``, when not ``allow``.
    """
    from bundle.errors import InputError

    reason = modality_problem(modality, None if image is None else np.asarray(image), dicom_modality)
    if reason and not allow:
        raise InputError(label, reason)
    return reason
