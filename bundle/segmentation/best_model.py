"""The best-model checkpoint of the segmentation trainings: MONAI's ``CheckpointSaver`` whose best score survives a
resumed run.

``CheckpointSaver(save_key_metric=True, key_metric_filename="model.pt", save_dict={"model": network})`` writes the
bare network state_dict of the best validation epoch (what MONAI Label and ``configs/inference.json`` load). Its
best-score memory is lost when an interrupted training is resumed, so the first validation after the resume would
overwrite ``model.pt`` even when it is worse. :class:`BestModelSaver` adds ``state_dict()`` for that memory, so the
last-epoch checkpoint (:class:`bundle.segmentation.checkpoints.EpochCheckpointSaver`) can store it and
:class:`bundle.segmentation.checkpoints.ResumeFromCheckpoint` restore it (``load_state_dict`` is MONAI's).
"""

from __future__ import annotations

from collections import OrderedDict

from monai.handlers import CheckpointSaver

__all__ = ["BestModelSaver"]


class BestModelSaver(CheckpointSaver):
    """``CheckpointSaver`` that saves the best key-metric model and exposes its best-score memory.

    Takes the arguments of :class:`monai.handlers.CheckpointSaver`; ``save_key_metric`` is forced on.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs) -> None:
        kwargs["save_key_metric"] = True
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)

    def state_dict(self) -> OrderedDict:
        """The key-metric tracking list (scores and file names of the saved best models)."""
        return self._key_metric_checkpoint.state_dict()
