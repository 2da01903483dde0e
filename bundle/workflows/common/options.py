"""Names of the task options that a trained model's card records, in one place for the tasks and the card schema.

Each task workflow reads its own (``bundle.workflows.segmentation`` the prior, inference and entropy modes and the
spatial dimensions, ``bundle.workflows.semisup`` the methods); the card schema
(:mod:`bundle.workflows.common.card_schema`) checks the same names in every card it reads. They live in ``common``
because tasks share code only through it (docs/design.md, room order).
"""

from __future__ import annotations

__all__ = ["ENTROPY_MODES", "INFER_MODES", "PRIOR_MODES", "SAM_MIX_METHODS", "SPATIAL_DIMS"]

PRIOR_MODES = ("add", "channels", "concat", "none")
"""How SAMAug feeds the priors to the segmentation network (``bundle.workflows.segmentation.inputs``)."""
INFER_MODES = ("aug_only", "raw", "entropy_select")
"""SAMAug's inference modes (``bundle.workflows.segmentation.inferer``)."""
ENTROPY_MODES = ("binary", "margin", "margin_minmax")
"""The uncertainty score of ``entropy_select`` (``bundle.workflows.segmentation.inferer``)."""
SPATIAL_DIMS = (2, 3)
"""Spatial dimensions of the segmentation networks (``bundle.workflows.segmentation.workflow``)."""
SAM_MIX_METHODS = ("sam_mix", "zero_shot", "unet")
"""SAM-Mix and its baselines (``bundle.workflows.semisup.training.METHODS``)."""
