"""A preset's intensity transform as JSON and back: how model cards record the scaling a network was trained with.

Shared by the SAMAug-C model card (:mod:`bundle.workflows.classification.card`) and the WeakMedSAM classifier's card
(:mod:`bundle.workflows.weak.classifier`): the two preset transforms, ``NormalizeIntensityd`` (MRI) and
``ScaleIntensityRanged`` (CT windows), become a small dictionary that compares equal across runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["describe_intensity", "intensity_from_card"]


def describe_intensity(transform) -> dict:
    """The card entry of a preset's intensity transform (``NormalizeIntensityd`` or ``ScaleIntensityRanged``).

    Raises:
        ValueError: another transform type (the card cannot rebuild it; add it here).
    """
    name = type(transform).__name__
    if name == "NormalizeIntensityd":
        t = transform.normalizer
        args = {"nonzero": bool(t.nonzero), "channel_wise": bool(t.channel_wise)}
        if t.subtrahend is not None or t.divisor is not None:
            raise ValueError("NormalizeIntensityd with a fixed subtrahend / divisor is not supported by the model card.")
    elif name == "ScaleIntensityRanged":
        t = transform.scaler
        args = {"a_min": float(t.a_min), "a_max": float(t.a_max), "b_min": t.b_min, "b_max": t.b_max,
                "clip": bool(t.clip)}
    else:
        raise ValueError(f"the model card cannot describe the intensity transform {name}; use NormalizeIntensityd or "
                         "ScaleIntensityRanged.")
    return {"name": name, "keys": list(transform.keys), "args": args}


def intensity_from_card(card: Mapping[str, Any]):
    """The intensity transform of the card (:func:`describe_intensity`)."""
    from monai import transforms

    spec = card["intensity"]
    builder = {"NormalizeIntensityd": transforms.NormalizeIntensityd,
               "ScaleIntensityRanged": transforms.ScaleIntensityRanged}[spec["name"]]
    return builder(keys=spec["keys"], **spec["args"])
