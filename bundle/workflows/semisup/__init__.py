"""SAM-Mix (METHODS.md §4): a slice classifier's Grad-CAM prompts a LoRA-tuned SAM, trained with N labelled slices.

``data`` (organ task, organ mask, labelled-slice draw, slice datasets) -> ``training`` (joint loss, baselines,
checkpoints) -> ``predictor`` (a model folder rebuilt from its card) -> ``evaluation`` (fair and anchor protocols)
-> ``pipeline`` (what the training configs call), ``outputs`` (the inference output folder); ``panels`` draws
TensorBoard images.
"""

from bundle.workflows.semisup.data import DEFAULT_ORGANS, OrganMaskd, draw_labelled_slices, organ_task
from bundle.workflows.semisup.evaluation import PROTOCOLS
from bundle.workflows.semisup.outputs import OutputRecords
from bundle.workflows.semisup.pipeline import SamMixWorkflow, run_name
from bundle.workflows.semisup.predictor import SamMixInferer, SamMixPredictor, read_card
from bundle.workflows.semisup.training import METHODS, TrainingRun, TrainingSettings

__all__ = [
    "DEFAULT_ORGANS",
    "METHODS",
    "PROTOCOLS",
    "OrganMaskd",
    "OutputRecords",
    "SamMixInferer",
    "SamMixPredictor",
    "SamMixWorkflow",
    "TrainingRun",
    "TrainingSettings",
    "draw_labelled_slices",
    "organ_task",
    "read_card",
    "run_name",
]
