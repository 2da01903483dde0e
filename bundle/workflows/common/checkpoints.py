"""Checkpoints of the task workflows: atomic last-epoch saving, resuming, and checked weight loading.

- :class:`EpochCheckpointSaver` writes everything needed to resume (network, optimizer, scheduler, trainer
  counters) plus an ``info`` dict (prior_mode, input channel names) after every epoch, atomically.
- :class:`ResumeFromCheckpoint` restores it at ``Events.STARTED`` when the file exists, so re-running the same
  training command continues an interrupted run; given the run's settings it restores only a checkpoint written with
  the same ones (:mod:`bundle.workflows.common.run_settings`).
- :func:`load_network_weights` / :class:`CheckedCheckpointLoader` load weights for evaluation and inference and turn
  an input-channel mismatch (a model trained with SAM priors run without them, or vice versa) into an error that
  says so.

Every file is read through :func:`bundle.checkpoint_files.load_checkpoint` (``weights_only=True``, CRC-checked), so a
missing, empty, truncated, corrupt, foreign or unsafe file fails with one :class:`CheckpointError` naming it, and
every file is written only when its tensors are finite (:func:`bundle.workflows.common.guards.check_finite_state`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from bundle.atomic import atomic_path
from bundle.checkpoint_files import CheckpointError, load_checkpoint
from bundle.distributed import is_main_process
from bundle.workflows.common.guards import check_finite_state
from bundle.workflows.common.run_settings import INFO_KEY, SETTINGS_KEY, resume_flag, verify_settings

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = [
    "INFO_KEY",
    "CheckpointError",
    "save_atomic",
    "EpochCheckpointSaver",
    "ResumeFromCheckpoint",
    "load_network_weights",
    "CheckedCheckpointLoader",
]

logger = logging.getLogger(__name__)

_NETWORK_KEYS = ("network", "model")


def _unwrap(obj: Any) -> Any:
    """The module inside ``DataParallel`` / ``DistributedDataParallel`` (their state_dict keys carry ``module.``)."""
    if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        return obj.module
    return obj


class EpochCheckpointSaver:
    """Save ``save_dict`` state_dicts plus ``info`` to ``save_dir/filename`` at every ``EPOCH_COMPLETED``.

    The file is written to a temporary file in ``save_dir`` and moved over the old one with ``os.replace`` (atomic on
    POSIX and Windows), so a run killed at any moment leaves the previous complete checkpoint. Only rank 0 writes in
    distributed runs.

    Args:
        save_dir: folder of the checkpoint (created if missing).
        save_dict: objects with ``state_dict()``, e.g. ``{"network": net, "optimizer": opt, "lr_scheduler": sched,
            "trainer": trainer}``. Use the key ``network`` so :func:`load_network_weights` finds the weights.
        filename: checkpoint file name.
        info: JSON-like metadata stored under ``"info"`` (e.g. ``{"prior_mode": "concat", "input_channels": 6,
            "channel_names": [...]}``); only str / int / float / bool / None / lists / dicts, so the file loads with
            ``weights_only=True``.
        name: logger name; default the engine's logger.
        engine_key: also save the state of the engine the handler runs on (the trainer) under this key. A bundle
            config cannot put ``@train#trainer`` into a handler of that same trainer (a circular reference).
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = "checkpoint_last.pt",
        info: Mapping[str, Any] | None = None,
        name: str | None = None,
        engine_key: str | None = None,
    ) -> None:
        if not save_dict:
            raise ValueError("save_dict must name at least one object to save.")
        if INFO_KEY in save_dict or engine_key == INFO_KEY:
            raise ValueError(f"save_dict key {INFO_KEY!r} is reserved for the info dict; rename that entry.")
        if engine_key is not None and engine_key in save_dict:
            raise ValueError(f"engine_key {engine_key!r} is also a save_dict key; use one or the other.")
        missing = [k for k, v in save_dict.items() if not hasattr(v, "state_dict")]
        if missing:
            raise TypeError(f"save_dict entries {missing} have no state_dict().")
        self.save_dir = os.fspath(save_dir)
        self.save_dict = dict(save_dict)
        self.filename = filename
        self.info = dict(info) if info is not None else {}
        self.engine_key = engine_key
        self.logger = logging.getLogger(name)
        self._name = name

    @property
    def path(self) -> str:
        """Full path of the checkpoint file."""
        return os.path.join(self.save_dir, self.filename)

    def attach(self, engine: Engine) -> None:
        """Save at every ``EPOCH_COMPLETED`` of ``engine`` (the trainer)."""
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        """Write the checkpoint now."""
        if not is_main_process():
            return
        checkpoint = {k: _unwrap(obj).state_dict() for k, obj in self.save_dict.items()}
        if self.engine_key is not None and engine is not None:
            checkpoint[self.engine_key] = engine.state_dict()
        checkpoint[INFO_KEY] = self.info
        check_finite_state(checkpoint, self.path)
        save_atomic(checkpoint, self.path)
        epoch = engine.state.epoch if engine is not None else "?"
        self.logger.info(f"saved checkpoint {self.path} (epoch {epoch})")


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file next to ``path``, then ``os.replace`` it; no temporary file remains.

    The data goes through a Python file object, so a full disk surfaces as the ``OSError`` it is (torch's own file
    writer reports only ``unexpected pos``) and :func:`bundle.atomic.atomic_path` names ``path`` in its error.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


class ResumeFromCheckpoint:
    """Resume training from an :class:`EpochCheckpointSaver` file at ``Events.STARTED`` if it exists.

    Restores every object of ``load_dict`` from the entry of the same name: modules, optimizers and schedulers by
    ``load_state_dict``; ignite engines (the trainer) by ``Engine.load_state_dict``, which sets the completed epoch
    and iteration so the run continues at the next epoch. The configured ``max_epochs`` is kept (the checkpoint's is
    ignored): a run resumed with a larger ``max_epochs`` trains up to it, a run that is already complete finishes
    without another iteration. Without the file the handler does nothing (fresh start).

    A damaged file (truncated by a kill on an old version of this bundle, copied badly, not a checkpoint) stops the
    run with a :class:`CheckpointError` naming it: silently starting again would throw away the finished epochs. With
    ``settings``, a checkpoint written with other run settings (or none) stops it with a
    :class:`~bundle.errors.RunSettingsError` (:func:`~bundle.workflows.common.run_settings.verify_settings`); with
    ``resume=False`` the file is not read and the run starts from scratch (its first epoch checkpoint replaces it).

    Args:
        path: checkpoint file.
        load_dict: objects to restore, same keys as the saver's ``save_dict``.
        map_location: ``torch.load`` map_location.
        name: logger name; default the engine's logger.
        engine_key: also restore the engine the handler runs on (the trainer) from this entry, as
            :class:`EpochCheckpointSaver` ``engine_key`` saved it.
        settings: the run settings the checkpoint must have recorded (its ``info["run_settings"]``); None checks
            nothing (callers that checked them already, tests).
        resume: False starts from scratch whatever the file holds (``--resume false``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        load_dict: Mapping[str, Any],
        map_location: Any = "cpu",
        name: str | None = None,
        engine_key: str | None = None,
        settings: Mapping[str, Any] | None = None,
        resume: bool = True,
    ) -> None:
        if not load_dict:
            raise ValueError("load_dict must name at least one object to restore.")
        if engine_key is not None and engine_key in load_dict:
            raise ValueError(f"engine_key {engine_key!r} is also a load_dict key; use one or the other.")
        self.path = os.fspath(path)
        self.load_dict = dict(load_dict)
        self.engine_key = engine_key
        self.map_location = map_location
        self.logger = logging.getLogger(name)
        self._name = name
        self.settings = dict(settings) if settings is not None else None
        self.resume = resume_flag(resume)
        self.info: dict = {}

    def attach(self, engine: Engine) -> None:
        """Load at ``Events.STARTED`` of ``engine`` (the trainer)."""
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Restore the objects from the checkpoint, if there is one."""
        if not os.path.isfile(self.path):
            self.logger.info(f"no checkpoint at {self.path}: starting from scratch")
            return
        if not self.resume:
            self.logger.info(f"resume=false: starting from scratch; {self.path} is replaced after the first epoch")
            return
        checkpoint = load_checkpoint(self.path, self.map_location, what="resume checkpoint")
        if not isinstance(checkpoint, Mapping):
            raise CheckpointError(self.path, f"resume checkpoint holds a {type(checkpoint).__name__}, not a dictionary "
                                             "of states; move it away to start from scratch")
        missing = [k for k in [*self.load_dict, self.engine_key] if k is not None and k not in checkpoint]
        if missing:
            raise CheckpointError(
                self.path,
                f"resume checkpoint lacks {missing} (it has {sorted(map(str, checkpoint))}): it was written by another "
                "configuration; move it away to start from scratch",
            )
        self.info = dict(checkpoint.get(INFO_KEY) or {})
        if self.settings is not None:
            verify_settings(self.path, self.info.get(SETTINGS_KEY), self.settings)
        configured = (engine.state.max_epochs, engine.state.epoch_length)
        for key, obj in self.load_dict.items():
            if isinstance(obj, Engine):
                keep = configured if obj is engine else (None, None)
                _load_engine_state(obj, checkpoint[key], *keep)
            elif isinstance(_unwrap(obj), torch.nn.Module):
                _load_module_state(_unwrap(obj), checkpoint[key], self.path, found_names=self.info.get("channel_names"))
            else:
                obj.load_state_dict(checkpoint[key])
        if self.engine_key is not None:
            _load_engine_state(engine, checkpoint[self.engine_key], *configured)
        epoch = engine.state.epoch
        self.logger.info(f"resuming from {self.path} at epoch {epoch} (iteration {engine.state.iteration})")
        if engine.state.max_epochs is not None and epoch >= engine.state.max_epochs:
            self.logger.info(
                f"checkpoint epoch {epoch} >= max_epochs {engine.state.max_epochs}: training is already complete"
            )


def _load_engine_state(engine: Engine, state: Mapping, max_epochs: int | None, epoch_length: int | None) -> None:
    """``Engine.load_state_dict``, then restore the configured ``max_epochs`` / ``epoch_length`` if given."""
    engine.load_state_dict(state)
    if max_epochs is not None:
        # set directly: Engine's own setter refuses max_epochs below the restored epoch, which here means "done"
        engine.state.max_epochs = max_epochs
    if epoch_length is not None and epoch_length != engine.state.epoch_length:
        logging.getLogger(__name__).warning(
            f"epoch length changed from {engine.state.epoch_length} to {epoch_length} iterations; "
            "counting iterations from the start of the restored epoch"
        )
        engine.state.epoch_length = epoch_length
        # ignite starts the next epoch at iteration % epoch_length: keep it on an epoch boundary
        engine.state.iteration = engine.state.epoch * epoch_length


def _network_state(checkpoint: Any, path: str) -> tuple[Mapping[str, torch.Tensor], dict]:
    """The network state_dict and the info dict of a bare state_dict or a ``{"network"|"model": ...}`` file."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(path, f"holds a {type(checkpoint).__name__}, not a state_dict or a checkpoint dictionary")
    info = checkpoint.get(INFO_KEY) if isinstance(checkpoint.get(INFO_KEY), Mapping) else {}
    for key in _NETWORK_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key], dict(info)
    return checkpoint, dict(info)


def _first_input_weight(state: Mapping[str, torch.Tensor]) -> str | None:
    """Key of the first convolution weight ``[out, in, *kernel]``: its dim 1 is the network's input channels."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.ndim >= 3 and key.endswith("weight"):
            return key
    return None


def _fmt_names(names: Sequence[str] | None) -> str:
    return f" [{', '.join(str(n) for n in names)}]" if names else ""


def _load_module_state(
    network: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    path: str,
    expected_names: Sequence[str] | None = None,
    found_names: Sequence[str] | None = None,
    prior_mode: str | None = None,
    found_prior_mode: str | None = None,
) -> None:
    """``network.load_state_dict(state)`` with errors that name the file and what does not match."""
    own = network.state_dict()
    if state and all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in own):
        state = {k[len("module.") :]: v for k, v in state.items()}
    first = _first_input_weight(own)
    if first is not None and first in state and state[first].ndim == own[first].ndim:
        found, expected = int(state[first].shape[1]), int(own[first].shape[1])
        if found != expected:
            mode = f" (prior_mode={prior_mode})" if prior_mode else ""
            trained = f"; it was trained with prior_mode={found_prior_mode}" if found_prior_mode else ""
            raise CheckpointError(
                path,
                f"wrong architecture: trained with {found} input channels{_fmt_names(found_names)} but this "
                f"configuration builds {expected}{_fmt_names(expected_names)}{mode}. Use the prior_mode the model was "
                f"trained with{trained}: a model trained with SAM priors needs the priors at inference, and a model "
                "trained without them must run with prior_mode='none'",
            )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
        for k in own
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                more = f" ... (+{len(items) - 5} more)" if len(items) > 5 else ""
                parts.append(f"{label} ({len(items)}): {', '.join(items[:5])}{more}")
        raise CheckpointError(
            path,
            f"wrong architecture: does not match the configured network ({type(network).__name__}): "
            + "; ".join(parts)
            + ". Check network_def (architecture, channels, strides) against the one used for training",
        )
    network.load_state_dict(state, strict=True)


def load_network_weights(
    network: torch.nn.Module,
    path: str | os.PathLike,
    expected_channel_names: Sequence[str] | None = None,
    prior_mode: str | None = None,
    map_location: Any = "cpu",
) -> torch.nn.Module:
    """Load network weights from ``path`` with errors that explain a mismatch.

    Args:
        network: the configured network (``DataParallel`` / DDP are unwrapped).
        path: a bare state_dict (MONAI ``CheckpointSaver``'s ``model.pt``) or a dictionary with key ``network`` or
            ``model`` (e.g. an :class:`EpochCheckpointSaver` file, whose ``info`` gives the trained channel names).
        expected_channel_names: names of the configured network's input channels, for the error message (the
            task workflow's, e.g. SAMAug's ``prior_channel_names``).
        prior_mode: the configured prior_mode, for the error message.
        map_location: ``torch.load`` map_location.

    Returns:
        ``network``, loaded.

    Raises:
        MissingInputError: no file at ``path`` (a ``FileNotFoundError``).
        CheckpointError: the file is empty, truncated, corrupt, not a checkpoint or an unsafe pickle; or the first
            layer's input channels differ (naming both channel counts and the channel names where known), or other
            keys / shapes differ (listing the first few). A ``ValueError``; the message starts with the file.
    """
    path = os.fspath(path)
    checkpoint = load_checkpoint(path, map_location, what="network weights")
    state, info = _network_state(checkpoint, path)
    _load_module_state(
        _unwrap(network),
        state,
        path,
        expected_names=expected_channel_names,
        found_names=info.get("channel_names"),
        prior_mode=prior_mode,
        found_prior_mode=info.get("prior_mode"),
    )
    return network


class CheckedCheckpointLoader:
    """Handler: :func:`load_network_weights` at ``Events.STARTED`` (evaluation and inference configs).

    Args:
        load_path: weights file (bare state_dict or ``{"network"|"model": ...}``).
        network: the network to load into.
        expected_channel_names: the configured input channel names, for the error message.
        prior_mode: the configured prior_mode, for the error message.
        map_location: ``torch.load`` map_location.
        name: logger name; default the engine's logger.
    """

    def __init__(
        self,
        load_path: str | os.PathLike,
        network: torch.nn.Module,
        expected_channel_names: Sequence[str] | None = None,
        prior_mode: str | None = None,
        map_location: Any = "cpu",
        name: str | None = None,
    ) -> None:
        self.load_path = os.fspath(load_path)
        self.network = network
        self.expected_channel_names = expected_channel_names
        self.prior_mode = prior_mode
        self.map_location = map_location
        self.logger = logging.getLogger(name)
        self._name = name

    def attach(self, engine: Engine) -> None:
        """Load at ``Events.STARTED`` of ``engine``."""
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        """Load the weights now."""
        load_network_weights(
            self.network, self.load_path, self.expected_channel_names, self.prior_mode, self.map_location
        )
        self.logger.info(f"loaded network weights from {self.load_path}")
