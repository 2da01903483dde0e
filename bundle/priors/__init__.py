"""SAM prior maps: SAMAug segmentation/boundary priors and SAMAug-C prior maps from mask records."""

from .maps import (
    COMBINE_MODES,
    SCORE_KEYS,
    samaug_prior_maps,
    samaugc_prior_map,
    stack_segmentations,
    thick_boundary,
)

__all__ = [
    "COMBINE_MODES",
    "SCORE_KEYS",
    "samaug_prior_maps",
    "samaugc_prior_map",
    "stack_segmentations",
    "thick_boundary",
]
