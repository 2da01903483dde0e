"""SAM prior maps: SAMAug segmentation/boundary priors and SAMAug-C prior maps from mask records; WeakMedSAM's
random walk and pseudo-label maths."""

from .maps import (
    COMBINE_MODES,
    SCORE_KEYS,
    samaug_prior_maps,
    samaugc_prior_map,
    stack_segmentations,
    thick_boundary,
)
from .pseudo_labels import class_map_to_label, class_values_for_groups, gaussian_blur, pseudo_label_slice
from .random_walk import affinity_offsets, dense_random_walk, random_walk

__all__ = [
    "COMBINE_MODES",
    "SCORE_KEYS",
    "affinity_offsets",
    "class_map_to_label",
    "class_values_for_groups",
    "dense_random_walk",
    "gaussian_blur",
    "pseudo_label_slice",
    "random_walk",
    "samaug_prior_maps",
    "samaugc_prior_map",
    "stack_segmentations",
    "thick_boundary",
]
