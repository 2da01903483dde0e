"""The best-model checkpoint of the task trainings: MONAI's ``CheckpointSaver`` whose best score survives a
resumed run, and a final validation so that a run always ends with a validated (and saved) model.

``CheckpointSaver(save_key_metric=True, key_metric_filename="model.pt", save_dict={"model": network})`` writes the
bare network state_dict of the best validation epoch (what MONAI Label and ``configs/inference.json`` load). Its
best-score memory is lost when an interrupted training is resumed, so the first validation after the resume would
overwrite ``model.pt`` even when it is worse. :class:`BestModelSaver` adds ``state_dict()`` for that memory, so the
last-epoch checkpoint (:class:`bundle.workflows.common.checkpoints.EpochCheckpointSaver`) can store it and
:class:`bundle.workflows.common.checkpoints.ResumeFromCheckpoint` restore it (``load_state_dict`` is MONAI's).

MONAI's saver writes in place (ignite ``DiskSaver(atomic=False)``) after deleting the old file, so a kill or a
full disk during the write left no ``model.pt`` or an unloadable one. :class:`AtomicSaveHandler` replaces its disk
writer: the new file is written next to the old one and renamed over it (:mod:`bundle.atomic`), an old file is
deleted only after its successor is complete, and weights holding NaN or inf are refused
(:func:`bundle.workflows.common.guards.check_finite_state`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping

from monai.handlers import CheckpointSaver
from monai.utils import IgniteInfo, min_version, optional_import

from bundle.distributed import is_main_process
from bundle.workflows.common.checkpoints import save_atomic
from bundle.workflows.common.guards import check_finite_state

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
BaseSaveHandler, _ = optional_import(
    "ignite.handlers.checkpoint", IgniteInfo.OPT_IMPORT_VERSION, min_version, "BaseSaveHandler"
)

__all__ = ["AtomicSaveHandler", "BestModelSaver", "FinalValidation"]


class AtomicSaveHandler(BaseSaveHandler):
    """Ignite save handler writing each checkpoint atomically, refusing non-finite weights, removing old files late.

    Ignite's ``Checkpoint`` calls ``remove(old)`` *before* saving the new file; here the removal waits until the next
    save has completed, and never touches the file just written (a fixed name like ``model.pt`` is replaced by the
    rename instead). Only the main process writes.

    Args:
        dirname: the folder of the checkpoints.
        filename: a fixed file name (``model.pt``) used instead of ignite's score-based names; None keeps those.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        self.dirname = os.fspath(dirname)
        self.filename = filename
        self._pending: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Write ``checkpoint`` under ``filename`` (or the fixed name), then delete the files replaced by it."""
        if not is_main_process():
            return
        name = self.filename or filename
        path = os.path.join(self.dirname, name)
        check_finite_state(checkpoint, path)
        save_atomic(checkpoint, path)
        for old in self._pending:
            if old != name:
                try:
                    os.remove(os.path.join(self.dirname, old))
                except FileNotFoundError:  # already gone: nothing to tidy
                    pass
        self._pending = []

    def remove(self, filename: str) -> None:
        """Remember ``filename`` for deletion after the next successful save."""
        self._pending.append(self.filename or filename)


class BestModelSaver(CheckpointSaver):
    """``CheckpointSaver`` that saves the best key-metric model atomically and exposes its best-score memory.

    Takes the arguments of :class:`monai.handlers.CheckpointSaver`; ``save_key_metric`` is forced on. Every file it
    writes (best, final and interval checkpoints) goes through :class:`AtomicSaveHandler`.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs) -> None:
        kwargs["save_key_metric"] = True
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)
        for checkpoint in (self._key_metric_checkpoint, self._final_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                fixed = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = AtomicSaveHandler(save_dir, fixed)

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
