"""Training guards: stop at the first non-finite loss, and never write non-finite weights to a checkpoint.

An input with inf voxels (or a learning rate too high) makes the loss NaN; one optimizer step later every weight is
NaN, and MONAI's best-model saver keeps the first validated model whatever its score, so a NaN ``model.pt`` used to
be saved as "best" and inference then wrote all-zero label maps with exit code 0.

- :class:`StopOnNonFiniteLoss` raises :class:`NonFiniteLossError` at ``LOSS_COMPLETED``, before the backward pass
  and the optimizer step, naming the epoch, the iteration and the batch's cases.
- :func:`check_finite_state` is called by every checkpoint writer (:mod:`bundle.workflows.common.checkpoints`,
  :mod:`bundle.workflows.common.best_model`) before it writes: the previous file stays.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys, IgniteInfo, min_version, optional_import

from bundle.data.case_ids import case_id_of
from bundle.errors import BundleError, FileError

Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = [
    "NonFiniteLossError",
    "NonFiniteStateError",
    "non_finite_tensors",
    "check_finite_state",
    "batch_case_ids",
    "StopOnNonFiniteLoss",
]


class NonFiniteLossError(BundleError, RuntimeError):
    """The training loss became NaN or infinite; the message names epoch, iteration and the batch's cases."""


class NonFiniteStateError(FileError, RuntimeError):
    """A checkpoint was not written because its tensors hold NaN or inf: ``<file>: <problem>``."""


def non_finite_tensors(state: Any, prefix: str = "") -> tuple[list[str], int]:
    """Names of the floating-point tensors in a (nested) state dict that hold NaN or inf, and the tensor count."""
    if isinstance(state, torch.Tensor):
        bad = state.is_floating_point() or state.is_complex()
        return ([prefix or "<tensor>"] if bad and not bool(torch.isfinite(state).all()) else []), 1
    items = state.items() if isinstance(state, Mapping) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    names, count = [], 0
    for key, value in items:
        sub_names, sub_count = non_finite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
        names += sub_names
        count += sub_count
    return names, count


def check_finite_state(state: Any, path: str | os.PathLike) -> None:
    """Raise before writing ``path`` when ``state`` holds a non-finite floating-point tensor.

    Raises:
        NonFiniteStateError: naming the file not written, how many tensors are bad and the first few.
    """
    names, count = non_finite_tensors(state)
    if names:
        shown = ", ".join(names[:3]) + (f" ... (+{len(names) - 3} more)" if len(names) > 3 else "")
        raise NonFiniteStateError(
            os.fspath(path),
            f"not written: {len(names)} of {count} tensors hold NaN or inf values ({shown}); the training diverged, "
            "and the previous file (if any) is kept",
        )


def batch_case_ids(batch: Any, image_key: str = CommonKeys.IMAGE, case_id_key: str = "case_id") -> list[str]:
    """The distinct case ids of a collated batch (``case_id`` list, else the images' source files), in order."""
    if not isinstance(batch, Mapping):
        return []
    ids = batch.get(case_id_key)
    if isinstance(ids, str):
        ids = [ids]
    if not ids:
        try:
            ids = [case_id_of({image_key: batch.get(image_key)}, image_key)]
        except ValueError:
            return []
    return list(dict.fromkeys(case_id_of({case_id_key: str(i)}, image_key, case_id_key) for i in ids if str(i)))


def _loss_value(output: Any) -> float | None:
    loss = output.get(CommonKeys.LOSS) if isinstance(output, Mapping) else None
    if loss is None:
        return None
    return float(loss.detach().float().mean()) if isinstance(loss, torch.Tensor) else float(loss)


class StopOnNonFiniteLoss:
    """Handler: stop training with :class:`NonFiniteLossError` as soon as the loss is NaN or infinite.

    It runs at ``IterationEvents.LOSS_COMPLETED`` (fired before the backward pass by ``SupervisedTrainer`` and by
    the task workflows' own train steps, e.g. SAMAug's ``SamAugTrainStep``), so the bad step never reaches the
    weights, and the last good checkpoint stays on disk. Reading the loss costs one device synchronisation per
    iteration, which ``StatsHandler`` pays already.

    Args:
        case_id_key: batch key of the case ids (the datalist's ``case_id``).
        image_key: batch key of the image, whose source files name the cases without ``case_id``.
    """

    def __init__(self, case_id_key: str = "case_id", image_key: str = CommonKeys.IMAGE) -> None:
        self.case_id_key = case_id_key
        self.image_key = image_key

    def attach(self, engine: Engine) -> None:
        """Run at every ``LOSS_COMPLETED`` of ``engine`` (the trainer)."""
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Raise when the loss of this step is not finite."""
        value = _loss_value(engine.state.output)
        if value is None or math.isfinite(value):
            return
        cases = batch_case_ids(engine.state.batch, self.image_key, self.case_id_key)
        epoch_length = engine.state.epoch_length or 0
        in_epoch = (engine.state.iteration - 1) % epoch_length + 1 if epoch_length else engine.state.iteration
        listed = ", ".join(cases) if cases else "unknown"
        raise NonFiniteLossError(
            f"training stopped: the loss is {value} at epoch {engine.state.epoch}, iteration {in_epoch} of "
            f"{epoch_length or '?'} (global iteration {engine.state.iteration}); batch cases: {listed}. Check those "
            "cases' images for extreme values, or lower the learning rate; no checkpoint was written for this step"
        )
