"""What defines a training run, recorded with its checkpoints: a training resumes (or keeps) only what it would train
again.

Every training of the bundle (SAMAug, SAMAug-C, WeakMedSAM's classifier and segmentation, SAM-Mix) writes its *run
settings* into its resume checkpoint (``info["run_settings"]``) and, where its finished model is reused without
training (WeakMedSAM's classifier, SAM-Mix), into that model file too. They are plain JSON values: the digest of the
datalist entries the run trains and validates on (:func:`datalist_digest`), the task, regions or classes, the
network, the SAM prior signature (what names the prior-cache partition, :func:`prior_signature`), the
hyper-parameters, and where the model is written. ``max_epochs`` is not one of them: running the same command with a
larger ``max_epochs`` resumes the run and trains on.

Before a training builds its data (and computes priors), :func:`check_resume` compares them with the folder's
checkpoint:

- no checkpoint: a new run;
- the same settings: the run resumes (an already complete run trains nothing and says so, see :func:`check_run`);
- other settings: :class:`~bundle.errors.RunSettingsError` naming the checkpoint, the first differing setting
  (``old -> new``) and how to start afresh (:data:`HOW_TO_START_AFRESH`);
- a checkpoint without settings (written by an older version of the bundle): refused the same way;
- ``resume=False`` (``--resume false``): a new run, which replaces the old one (logged).

Settings are data: they are compared and printed, never evaluated.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bundle.checkpoint_files import CheckpointError, load_checkpoint
from bundle.data.case_check import RECORD_KEY
from bundle.data.datalist_io import read_datalist
from bundle.data.summaries import SUMMARY_KEY
from bundle.errors import InputError, RunSettingsError
from bundle.hashing import canonical_json, json_sha256

__all__ = ["HOW_TO_START_AFRESH", "INFO_KEY", "SETTINGS_KEY", "check_config_trainer", "check_finished",
           "check_resume", "check_run",
           "checkpoint_epoch", "datalist_digest", "first_difference", "optimizer_settings", "plan_training",
           "prior_signature", "resume_flag", "verify_settings", "without_max_epochs"]

logger = logging.getLogger(__name__)

INFO_KEY = "info"
"""Key of the metadata dictionary in an epoch checkpoint (:class:`~bundle.workflows.common.checkpoints.
EpochCheckpointSaver`)."""
SETTINGS_KEY = "run_settings"
"""Key of the run settings, in a checkpoint's ``info`` and in a finished model file."""
HOW_TO_START_AFRESH = ("to start afresh, run with --resume false (replaces this run) or with another --run_name or "
                       "--output_dir (keeps it)")
_NOT_RECORDED = "(not recorded)"
_SHOWN = 120  # characters of a list or dictionary shown in a message


def resume_flag(value: Any) -> bool:
    """``resume`` as a boolean. ``--resume false`` reaches the config as a boolean once the command line is checked
    (:mod:`bundle.overrides`); any other value (the text ``"false"``, which Python would take as true) is refused.

    Raises:
        ValueError: not a boolean, naming the option.
    """
    if isinstance(value, bool):
        return value
    raise ValueError(f"resume: {value!r} is not a boolean: give --resume true or --resume false")


_RECORDS = (RECORD_KEY, SUMMARY_KEY)  # what the checks found (sizes, modification times), not what the case is


def datalist_digest(datalist: str | os.PathLike, sections: Sequence[str] = ("training", "validation")) -> str:
    """sha256 of the entries of ``sections`` (the cases a training trains and validates on), not of the file: another
    test split, a description, the file's place or time, or the check records of an entry (which hold the files'
    modification times) do not change it; an added, removed or edited case does (its files, labels, slice labels)."""
    data = read_datalist(datalist)

    def case(entry: Any) -> Any:
        return {k: v for k, v in entry.items() if k not in _RECORDS} if isinstance(entry, Mapping) else entry

    return json_sha256({section: [case(e) for e in data.get(section) or []] for section in sections})


def prior_signature(use_priors: bool, prior: Any = None) -> dict | None:
    """The SAM prior transform's signature (what names its prior-cache partition), or None without priors. Computing
    it never builds SAM."""
    return prior.signature() if use_priors and prior is not None else None


_OPTIMIZER_FIELDS = ("lr", "weight_decay", "betas", "momentum", "dampening", "nesterov", "eps", "amsgrad")


def optimizer_settings(optimizer: Any) -> dict:
    """A torch optimizer as run settings: its class and hyper-parameters (learning rate, weight decay, betas, ...)."""
    defaults = getattr(optimizer, "defaults", {})
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items() if k in _OPTIMIZER_FIELDS}
    return {"name": type(optimizer).__name__, **fields}


def without_max_epochs(settings: Mapping) -> dict:
    """``settings`` without ``max_epochs`` at any depth: it is not part of what a run is."""
    return {k: without_max_epochs(v) if isinstance(v, Mapping) else v
            for k, v in settings.items() if k != "max_epochs"}


def _show(value: Any) -> str:
    if value is _NOT_RECORDED:
        return value
    try:
        text = canonical_json(value)
    except TypeError:
        text = repr(value)
    if isinstance(value, str) or len(text) <= _SHOWN:  # a path or name is shown whole
        return text
    return text[: _SHOWN - 3] + "..."


def first_difference(old: Any, new: Any, prefix: str = "") -> tuple[str, str, str] | None:
    """``(dotted key, old value, new value)`` of the first setting that differs, in the order of ``new``'s keys (then
    the keys only ``old`` has); None when equal. Values are shown as compact JSON, lists and dictionaries
    shortened."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in [*new, *(k for k in old if k not in new)]:
            found = first_difference(old.get(key, _NOT_RECORDED), new.get(key, _NOT_RECORDED),
                                     f"{prefix}.{key}" if prefix else str(key))
            if found is not None:
                return found
        return None
    if old is _NOT_RECORDED or new is _NOT_RECORDED or _plain(old) != _plain(new):
        return prefix or "settings", _show(old), _show(new)
    return None


def _plain(value: Any) -> Any:
    """Tuples as lists and ints as floats where equal, so a value that went through JSON or torch.save compares equal
    to the configured one."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value


def verify_settings(path: str | os.PathLike, stored: Any, settings: Mapping, what: str = "resume checkpoint") -> None:
    """Raise :class:`~bundle.errors.RunSettingsError` unless ``stored`` (the settings a file recorded) equals
    ``settings``.

    Args:
        path: the checkpoint or model file, named in the error with its folder.
        stored: what the file recorded (None: nothing, an older version of the bundle wrote it).
        settings: this run's settings.
        what: what the file is, for the message.
    """
    path = os.fspath(path)
    if not isinstance(stored, Mapping):
        raise RunSettingsError(path, f"{what} written by an older version of the bundle, which recorded no run "
                                     "settings: this training cannot tell whether it would continue it; "
                                     f"{HOW_TO_START_AFRESH}")
    found = first_difference(dict(stored), dict(settings))
    if found is not None:
        key, old, new = found
        raise RunSettingsError(path, f"{what} of the run in {os.path.dirname(os.path.abspath(path))} was made with "
                                     f"other settings: {key} {old} -> {new}; {HOW_TO_START_AFRESH}")


def _read(path: str, what: str) -> Mapping:
    stored = load_checkpoint(path, what=what)
    if not isinstance(stored, Mapping):
        raise CheckpointError(path, f"{what} holds a {type(stored).__name__}, not a dictionary; "
                                    "move it away to start from scratch")
    return stored


def checkpoint_epoch(checkpoint: Mapping, engine_key: str = "trainer") -> int | None:
    """The epochs an epoch checkpoint had completed (its trainer state), or None when it holds none."""
    state = checkpoint.get(engine_key)
    if isinstance(state, Mapping) and isinstance(state.get("epoch"), int):
        return int(state["epoch"])
    if isinstance(state, Mapping) and state.get("epoch_length"):
        return int(state.get("iteration", 0)) // int(state["epoch_length"])
    return None


def _resume_checkpoint(path: str, settings: Mapping, resume: bool, what: str) -> Mapping | None:
    if not resume_flag(resume) and os.path.isfile(path):
        logger.warning("%s: resume=false: a new run starts and replaces the run of %s", what, path)
        return None
    if not os.path.isfile(path):
        return None
    checkpoint = _read(path, "resume checkpoint")
    info = checkpoint.get(INFO_KEY)
    verify_settings(path, info.get(SETTINGS_KEY) if isinstance(info, Mapping) else None, settings)
    return checkpoint


def check_resume(path: str | os.PathLike, settings: Mapping, resume: bool = True, what: str = "training") -> bool:
    """Whether the run resumes from the epoch checkpoint at ``path`` (see the module docstring).

    Returns:
        True: the checkpoint exists and was written with these settings; False: there is none, or ``resume`` is
        False (the new run replaces it, which is logged).

    Raises:
        RunSettingsError: the checkpoint was written with other settings, or with none recorded.
        CheckpointError: the checkpoint cannot be read.
    """
    return _resume_checkpoint(os.fspath(path), settings, resume, what) is not None


def check_run(checkpoint: str | os.PathLike, settings: Mapping, resume: bool = True, max_epochs: int | None = None,
              model_files: Sequence[str | os.PathLike] = (), what: str = "training",
              verify_model: Callable[[], Any] | None = None) -> bool:
    """:func:`check_resume` for the config trainings (SAMAug, SAMAug-C, run from their ``initialize`` before any data
    is built), plus: a run that is already complete (``max_epochs`` reached) must still have its model.

    Args:
        verify_model: called when the run is complete and its ``model_files`` exist; an :class:`InputError` from it
            (e.g. :func:`bundle.workflows.common.model_card.verify_model_folder`) means the model cannot be used.

    Returns:
        whether the run resumes.

    Raises:
        RunSettingsError: other settings, none recorded, or a complete run whose ``model_files`` (``model.pt``,
            ``model_card.json`` in ``ckpt_dir``) are missing or do not belong together (a kill between their writes):
            nothing would be trained and no usable model would be there.
    """
    path = os.fspath(checkpoint)
    stored = _resume_checkpoint(path, settings, resume, what)
    if stored is None:
        return False
    epoch = checkpoint_epoch(stored)
    if max_epochs is not None and epoch is not None and epoch >= int(max_epochs):
        missing = [os.fspath(f) for f in model_files if not os.path.isfile(f)]
        if missing:
            raise RunSettingsError(path, f"this run is already complete (epoch {epoch}, max_epochs {max_epochs}) but "
                                         f"its model {', '.join(missing)} is missing, so nothing would be trained or "
                                         "written; train it again with --resume false, or restore those files")
        try:  # a kill between the writes of model.pt and its card leaves a pair that does not load
            if verify_model is not None:
                verify_model()
        except InputError as err:
            raise RunSettingsError(path, f"this run is already complete (epoch {epoch}, max_epochs {max_epochs}) "
                                         f"but its model cannot be used ({err}); train it again with --resume "
                                         "false") from err
        logger.info("%s: %s with these settings is already complete (epoch %d >= max_epochs %s): nothing to train; "
                    "the model is %s", what, path, epoch, max_epochs, ", ".join(map(os.fspath, model_files)))
    return True


def check_finished(path: str | os.PathLike, settings: Mapping, resume: bool = True, what: str = "model"
                   ) -> Mapping | None:
    """The finished model file at ``path`` when it was trained with these settings (to be reused), else None.

    Returns:
        the stored file (``{"network"..., "card": ..., "run_settings": ..., "epochs": ...}``) when it matches; None
        when there is no file, when ``resume`` is False (it is replaced, which is logged), or when the file is
        damaged (logged: it is trained again rather than trusted).

    Raises:
        RunSettingsError: the model was trained with other settings, or records none.
    """
    path = os.fspath(path)
    if not resume_flag(resume) and os.path.isfile(path):
        logger.warning("%s: resume=false: %s is trained again and replaced", what, path)
        return None
    if not os.path.isfile(path):
        return None
    try:
        stored = _read(path, what)
    except CheckpointError as err:
        logger.warning("%s: %s; training it again", what, err)
        return None
    verify_settings(path, stored.get(SETTINGS_KEY), settings, what=f"finished {what}")
    return stored


def plan_training(model_path: str | os.PathLike, checkpoint: str | os.PathLike, settings: Mapping, resume: bool,
                  max_epochs: int, what: str = "training", model_files: Sequence[str | os.PathLike] = ()
                  ) -> tuple[str, Mapping | None]:
    """What a training whose finished model is reused without training (WeakMedSAM's classifier, SAM-Mix) does.

    Args:
        model_path: the finished model (``{..., "run_settings": ..., "epochs": ...}``).
        checkpoint: its epoch checkpoint (resume file).
        settings: this run's settings (without ``max_epochs``).
        resume: False trains afresh and replaces both (logged).
        max_epochs: the epochs asked for: a finished model trained for at least as many is reused; one trained
            for fewer is trained on from its checkpoint.
        what: the stage, for the messages.
        model_files: other files the finished model needs (SAM-Mix's ``adapter.pt``).

    Returns:
        ``("reuse", the stored model file)``, ``("resume", None)`` or ``("fresh", None)``.

    Raises:
        RunSettingsError: the model or the checkpoint was made with other settings, or records none.
    """
    stored = check_finished(model_path, settings, resume, what)
    complete = all(os.path.isfile(f) for f in model_files)
    if stored is not None and complete:
        epochs = stored.get("epochs")
        if isinstance(epochs, int) and epochs >= int(max_epochs):
            logger.info("%s: %s was trained with these settings for %d epochs (max_epochs %d): reusing it", what,
                        model_path, epochs, int(max_epochs))
            return "reuse", stored
    if check_resume(checkpoint, settings, resume, what):
        return "resume", None
    if stored is not None:
        reason = (f"trained for {stored.get('epochs')} epochs, max_epochs {max_epochs}" if complete
                  else f"{', '.join(map(os.fspath, model_files))} missing")
        logger.warning("%s: %s was trained with these settings (%s) and has no resume checkpoint: training it again "
                       "from scratch", what, model_path, reason)
    return "fresh", None


#: trainer attributes by the config key that sets them, where the two differ
_TRAINER_KEYS = {"_process_function": "iteration_update"}


def check_config_trainer(trainer, parts: Mapping[str, object], max_epochs: int, train_data, dataset=None,
                         built_by: str = "the run object") -> None:
    """A trainer a config built (``train#trainer``) from a run object's ``parts`` (trainer attribute -> the run's
    object; ``built_by`` names the run object in messages) trains what the card says: each part is the run's, its ``max_epochs`` is the card's, and ``dataset``
    (the config's ``train#dataset``, when given) is the run's ``train_data``. An override of one ``train#...`` id alone
    would otherwise train something the card does not say, or be ignored.

    Raises:
        ValueError: one line naming the id and what to set instead.
    """
    if dataset is not None and dataset is not train_data:
        raise ValueError(f"train#dataset: {type(dataset).__name__} is not what the trainer reads (the slices of "
                         f"{built_by}): set datalist / dataset_dir instead")
    other = [_TRAINER_KEYS.get(name, name) for name, part in parts.items() if getattr(trainer, name, None) is not part]
    if other:
        raise ValueError(f"train#trainer: its {', '.join(other)} is not that of {built_by}, which the config builds "
                         "the trainer from")
    if int(trainer.state.max_epochs) != int(max_epochs):
        raise ValueError(f"train#trainer#max_epochs {trainer.state.max_epochs} differs from max_epochs {max_epochs}, "
                         "which the card records: set max_epochs instead")
