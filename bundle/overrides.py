"""Command-line overrides are checked against the merged configs before anything is built.

MONAI's runner (``python -m monai.bundle run <id> --config_file ... --key value``) adds an override whose id the
configs do not define as a new, unused key: ``--max_epoch 2`` then trains the default 50 epochs and exits 0. python-fire
hands the values over as it parses them, so ``--overwrite false`` arrives as the *text* ``"false"``, which Python treats
as true. The first expression of every config's ``initialize`` calls :func:`check_command_line`, which

- refuses an override whose id none of the merged configs defines, naming the closest ids (``max_epoch`` ->
  ``max_epochs``); a new key inside a component (a dict with ``_target_``) is a constructor argument and allowed;
- refuses a value of the wrong kind for an id whose default is a plain value (a whole number where the default is one,
  ``2.5`` for ``num_labelled``), and values outside the range of the options in :data:`RANGES` (``max_epochs 0``),
  naming the option;
- turns the usual spellings of a boolean (``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0``) into the
  boolean for ids whose default is one, and ``true``/``false`` into booleans for ids the config computes (``amp``).

Values that are config expressions or references (``$...``, ``@...``, ``%...``) are the user's own code and are not
typed. The runner does not hand ``initialize`` its parser, so the command line is read from ``sys.argv`` (only when the
process is ``python -m monai.bundle run``; a workflow built in Python is not checked) and the booleans are written into
the parser of the running :class:`monai.bundle.ConfigWorkflow`, found on the call stack. The check runs once per process:
workflows that a workflow runs inside itself (WeakMedSAM's segmentation stage) were built from checked values.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from bundle.errors import BundleError

__all__ = ["OverrideError", "RUNNER_ARGS", "RANGES", "as_flag", "parse_command_line", "check_overrides",
           "check_command_line"]

#: arguments of MONAI's ``run`` / ``create_workflow`` / ``ConfigWorkflow`` that are not config ids
RUNNER_ARGS = frozenset({"run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking",
                         "args_file", "workflow_type", "workflow_name", "properties_path"})
#: ``id: (low, high, what)`` for numeric options where a value of the right type can still be meaningless (a zero
#: epoch count divides by zero deep inside a scheduler); ``None`` is an open end, both ends are allowed values
RANGES: dict[str, tuple[float | None, float | None, str]] = {
    "max_epochs": (1, None, "at least 1"),
    "seg_max_epochs": (1, None, "at least 1"),
    "val_interval": (1, None, "at least 1"),
    "batch_size": (1, None, "at least 1"),
    "seg_batch_size": (1, None, "at least 1"),
    "slices_per_volume": (1, None, "at least 1"),
    "crops_per_volume": (1, None, "at least 1"),
    "sw_batch_size": (1, None, "at least 1"),
    "num_subclasses": (1, None, "at least 1"),
    "walk_steps": (0, None, "0 or more"),
    "lora_rank": (1, None, "at least 1"),
    "num_workers": (0, None, "0 or more"),
    "num_labelled": (0, None, "0 or more"),
    "seed": (0, None, "0 or more"),
    "cache_rate": (0.0, 1.0, "between 0 and 1"),
    "sw_overlap": (0.0, 0.99, "between 0 and 0.99"),
    "learning_rate": (1e-12, None, "above 0"),
}
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
_EXPRESSION_PREFIXES = ("$", "@", "%")
_checked = False


class OverrideError(BundleError, ValueError):
    """A command-line override names no option of the configs, or gives an option a value it cannot take."""


def _runner_main(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is ``python -m monai.bundle run ...`` (runpy puts the module's file in ``argv[0]``)."""
    head = os.path.normpath(str(argv[0])) if argv else ""
    return len(argv) > 1 and argv[1] == "run" and head.endswith(os.path.join("monai", "bundle", "__main__.py"))


def _parse_value(text: str) -> Any:
    """The value python-fire gives a command-line word (its own parser, so both agree)."""
    from fire import parser as fire_parser

    return fire_parser.DefaultParseValue(text)


def parse_command_line(words: Sequence[str]) -> tuple[str | None, dict[str, Any]]:
    """``(run_id, {name: value})`` of the words after ``run``, as python-fire reads them.

    ``--name value``, ``--name=value`` and a bare ``--name`` (true, as fire reads it) are supported; the first word that
    is not a flag or a flag's value is the run id.
    """
    run_id, flags = None, {}
    words = list(words)
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--") and len(word) > 2:
            name, eq, text = word[2:].partition("=")
            name = name.replace("-", "_") if name in {"config-file", "meta-file", "args-file", "run-id"} else name
            if eq:
                flags[name] = _parse_value(text)
            elif i + 1 < len(words) and not words[i + 1].startswith("--"):
                flags[name] = _parse_value(words[i + 1])
                i += 1
            else:
                flags[name] = True
        elif run_id is None:
            run_id = word
        i += 1
    return run_id, flags


def _ids(config: Any, prefix: str = "") -> Iterator[str]:
    """Every id of a config, nested ones joined by ``#`` (``train#handlers#0``)."""
    items = config.items() if isinstance(config, Mapping) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        yield name
        yield from _ids(value, f"{name}#")


def _lookup(config: Any, path: Sequence[str]) -> tuple[bool, Any]:
    """``(found, value)`` of the id ``path`` in a plain config."""
    node = config
    for part in path:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _unknown(name: str, config: Mapping, files: Sequence[str]) -> str | None:
    """Why ``name`` is no id of ``config`` (None when it is one, or a new argument of a component)."""
    path = name.replace("::", "#").split("#")
    found, _ = _lookup(config, path)
    if found:
        return None
    parent_found, parent = _lookup(config, path[:-1])
    if parent_found and isinstance(parent, Mapping) and "_target_" in parent and len(path) > 1:
        return None  # a constructor argument of a component, which the constructor itself checks
    prefix = "#".join(path[:-1])
    pool = [i for i in _ids(config) if i.rsplit("#", 1)[0] == prefix] if prefix else list(config)
    pool = [p for p in pool if not p.startswith("_")] + sorted(RUNNER_ARGS)
    # the same name one block deeper first (a setting that moved into a block: sam_model_type -> priors#sam_model_type)
    moved = [i for i in _ids(config) if i.startswith(f"{prefix}#" if prefix else "") and i.count("#") == len(path)
             and i.rsplit("#", 1)[1] == path[-1] and not i.split("#")[-2].isdigit()]
    close = (moved + [c for c in difflib.get_close_matches(name, pool, n=3, cutoff=0.6) if c not in moved])[:3]
    hint = f"; did you mean {' or '.join('--' + c for c in close)}?" if close else "; see the ids of those files"
    shown = ", ".join(os.path.basename(str(f)) for f in files)
    return f"--{name}: no option of that name in {shown}{hint}"


def _kind_problem(name: str, value: Any, default: Any) -> str | None:
    """Why ``value`` cannot replace the plain default ``default`` of option ``name`` (None when it can)."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else f"--{name}: {value!r} is not true or false"
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            return f"--{name}: {value!r} is not a whole number (the default is {default})"
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"--{name}: {value!r} is not a number (the default is {default})"
    elif isinstance(default, list):
        if not isinstance(value, (list, tuple)):
            return f"--{name}: {value!r} is not a list (the default is {json.dumps(default)})"
    elif isinstance(default, str):
        if not isinstance(value, str):
            return f"--{name}: {value!r} is not a text value (the default is {default!r})"
    return None


def _range_problem(name: str, value: Any) -> str | None:
    if name not in RANGES or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    low, high, what = RANGES[name]
    if (isinstance(value, float) and not math.isfinite(value)) or (low is not None and value < low) or (
            high is not None and value > high):
        return f"--{name}: {value!r} is out of range: it must be {what}"
    return None


def as_flag(value: Any, name: str = "value") -> bool:
    """A boolean from a boolean or one of its usual spellings (``true``/``false``, ``yes``/``no``, ``on``/``off``,
    ``1``/``0``, any case): the one reader of text booleans for the command line, the console scripts and the
    MONAI Label app's parameters.

    Raises:
        ValueError: anything else, naming ``name``.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError(f"{name}: expected true or false, got {value!r}")


def _as_bool(value: Any) -> Any:
    """``value`` as a boolean when it spells one, else unchanged (the kind check then names it)."""
    try:
        return as_flag(value)
    except ValueError:
        return value


def check_overrides(config_files: Sequence[str] | str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``overrides`` against the merged ``config_files``; returns the overrides whose value it normalised.

    Args:
        config_files: the config files, merged in order as the runner merges them.
        overrides: ``{id: value}`` as the runner applies them (runner arguments such as ``config_file`` are skipped).

    Returns:
        ``{id: bool}`` for text booleans given to boolean options (``--overwrite false`` -> ``False``).

    Raises:
        OverrideError: the first override that names no option, has a value of the wrong kind or out of range.
    """
    from monai.bundle import ConfigParser

    files = [config_files] if isinstance(config_files, (str, os.PathLike)) else list(config_files)
    parser = ConfigParser()
    parser.read_config(files)
    config = parser.get()
    normalised = {}
    for name, value in overrides.items():
        if name in RUNNER_ARGS:
            continue
        problem = _unknown(name, config, files)
        if problem:
            raise OverrideError(problem)
        if isinstance(value, str) and value.startswith(_EXPRESSION_PREFIXES):
            continue  # the user's own expression or reference, typed by what it evaluates to
        _, default = _lookup(config, name.replace("::", "#").split("#"))
        computed = isinstance(default, str) and default.startswith(_EXPRESSION_PREFIXES)
        # a boolean option, or one the config computes (``amp``): "false" would be a true-valued text there
        if isinstance(default, bool) or (computed and str(value).lower() in ("true", "false")):
            as_bool = _as_bool(value)
            if as_bool is not value:
                normalised[name] = value = as_bool
        if computed:
            default = None  # any value the expression could give
        problem = _kind_problem(name, value, default) or _range_problem(name.rsplit("#", 1)[-1], value)
        if problem:
            raise OverrideError(problem)
    return normalised


def _running_parser():
    """The parser of the :class:`monai.bundle.ConfigWorkflow` whose ``initialize`` is calling (None outside one)."""
    from monai.bundle import ConfigWorkflow

    frame = inspect.currentframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, ConfigWorkflow):
            return owner.parser
        frame = frame.f_back
    return None


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Check the overrides of this ``python -m monai.bundle run`` command (see the module docstring); once a process.

    Raises:
        OverrideError: an override names no option, or its value is of the wrong kind or out of range.
    """
    global _checked
    argv = sys.argv if argv is None else argv
    if _checked or not _runner_main(argv):
        return
    _, flags = parse_command_line(argv[2:])
    args_file = flags.get("args_file")
    if args_file:
        from monai.bundle import ConfigParser

        flags = {**ConfigParser.load_config_file(str(args_file)), **flags}
    config_files = flags.get("config_file")
    if not config_files:
        return  # the runner itself refuses a command without configs
    normalised = check_overrides(config_files, flags)
    if normalised:
        parser = _running_parser()
        if parser is None:
            name = next(iter(normalised))
            raise OverrideError(f"--{name}: write True or False (the text {flags[name]!r} is not a boolean here)")
        for name, value in normalised.items():
            parser[name] = value
    _checked = True
