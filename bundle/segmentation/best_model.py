"""The best-model checkpoint of the segmentation trainings: MONAI's ``CheckpointSaver`` whose best score survives a
resumed run, and a final validation so that a run always ends with a validated (and saved) model.

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
from monai.utils import IgniteInfo, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["BestModelSaver", "FinalValidation"]


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


class FinalValidation:
    """Run the validator once more when training ends on an epoch that ``ValidationHandler`` skipped.

    ``ValidationHandler(interval=k)`` validates after epochs k, 2k, ...; a run whose ``max_epochs`` is not a multiple
    of k (or is below k) would end without validating its last epochs and, below k, without any ``model.pt``.

    Args:
        validator: the evaluator (``validate#evaluator``).
        interval: the ``ValidationHandler`` interval in epochs.
    """

    def __init__(self, validator, interval: int) -> None:
        if int(interval) < 1:
            raise ValueError(f"interval must be >= 1, got {interval}.")
        self.validator = validator
        self.interval = int(interval)

    def attach(self, engine: Engine) -> None:
        """Run at ``COMPLETED`` of ``engine`` (the trainer)."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Validate unless the last epoch was validated already (or no epoch ran)."""
        epoch = engine.state.epoch
        if epoch > 0 and epoch % self.interval != 0:
            self.validator.run(epoch)
