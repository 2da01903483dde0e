"""WeakMedSAM's public names in one place: ``from bundle.weak import random_walk``.

The code lives in the rooms of the data flow (docs/design.md): the prompt-affinity maps in ``bundle.sam``, the random
walk and pseudo-label maths in ``bundle.priors``, the parent/child classifier and sub-class exploration in
``bundle.networks``, the stages in ``bundle.workflows.weak``. This module only gathers them; nothing in the package
imports it.
"""

from bundle.networks.parent_child import ParentChildClassifier, ParentChildLoss
from bundle.networks.subclasses import SubclassResult, assign_subclasses, explore_subclasses
from bundle.priors.pseudo_labels import class_values_for_groups, gaussian_blur, pseudo_label_slice
from bundle.priors.random_walk import affinity_offsets, dense_random_walk, random_walk
from bundle.sam.prompt_affinity import PLACEMENTS, PromptAffinityMiner, pooled_embedding, prompt_placement
from bundle.workflows.weak.pipeline import STAGES, WeakPipeline

__all__ = [
    "PLACEMENTS",
    "STAGES",
    "ParentChildClassifier",
    "ParentChildLoss",
    "PromptAffinityMiner",
    "SubclassResult",
    "WeakPipeline",
    "affinity_offsets",
    "assign_subclasses",
    "class_values_for_groups",
    "dense_random_walk",
    "explore_subclasses",
    "gaussian_blur",
    "pooled_embedding",
    "prompt_placement",
    "pseudo_label_slice",
    "random_walk",
]
