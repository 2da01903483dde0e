"""Output folders checked at start-up: writable, with room for what the run will write, and tidy.

A read-only or full ``ckpt_dir`` used to fail only when the first checkpoint was written, after a whole epoch, with
``enforce fail ... Permission denied`` or ``unexpected pos``. :func:`prepare_output_folders` runs before any data
is loaded or any network trained (the configs' ``initialize`` step) and fails at once with the folder and the
reason; it also removes the temporary files that killed writers left there (:func:`bundle.atomic.remove_stale_temps`).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from bundle.atomic import remove_stale_temps, temp_path_for
from bundle.distributed import is_main_process
from bundle.errors import FileError

__all__ = ["CONFIGS_DIR", "OutputFolderError", "check_writable_folder", "checkpoint_bytes", "prepare_output_folders",
           "format_bytes"]

logger = logging.getLogger(__name__)

#: the bundle's own ``configs/`` folder; a config that runs other configs (``configs/train_weak.json``) finds them here,
#: whatever ``bundle_root`` (the folder of data, runs and models) is
CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"

#: room kept free beyond what the run itself writes (logs, TensorBoard events, reports)
DEFAULT_MARGIN = 64 << 20


class OutputFolderError(FileError, OSError):
    """An output folder cannot be created or written, or lacks space: ``<folder>: <problem>``."""

    def __str__(self) -> str:  # OSError would print "[Errno ...]" otherwise
        return f"{self.path}: {self.problem}"


def format_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def checkpoint_bytes(network: torch.nn.Module | None = None, copies: int = 4) -> int:
    """Disk space a training run's checkpoints need: ``copies`` times the network's parameters and buffers.

    The default 4 covers ``model.pt`` and ``checkpoint_last.pt`` (weights plus Adam's two moments), each briefly
    twice while its new version is written next to the old one.
    """
    if network is None:
        return 0
    module = network.module if hasattr(network, "module") else network
    tensors = list(module.parameters()) + list(module.buffers())
    return int(copies) * sum(t.numel() * t.element_size() for t in tensors)


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself, or its nearest existing parent (the folder that will hold it once created)."""
    current = path.absolute()
    while not current.exists() and current.parent != current:
        current = current.parent
    return current


def check_writable_folder(folder: str | os.PathLike, required_bytes: int = 0, what: str = "output folder") -> Path:
    """Check that ``folder`` can be written and has room, without creating it.

    A folder that does not exist yet is judged by its nearest existing parent (where the run will create it), so a
    run that fails at start-up leaves no empty folders behind. A probe file (named like the temporary files of
    :mod:`bundle.atomic`, removed at once) proves the write permission, which the mode bits alone do not (ACLs,
    read-only mounts).

    Args:
        folder: the folder.
        required_bytes: free space it must have.
        what: how the message calls it (``"ckpt_dir"``).

    Returns:
        the folder as a ``Path``.

    Raises:
        OutputFolderError: it (or the parent that would hold it) is a file, cannot be written, or has less free
            space than ``required_bytes``.
    """
    path = Path(folder)
    base = _existing_ancestor(path)
    if not base.is_dir():
        where = "is a file, not a folder" if base == path.absolute() else f"cannot be created: {base} is a file"
        raise OutputFolderError(os.fspath(path), f"{what} {where}")
    # the temporary-name pattern of real writes: a probe left by a kill is tidied like their leftovers
    probe = temp_path_for(base / "write_probe")
    try:
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as err:
        inside = "" if base == path.absolute() else f" (checked in {base}, where it would be created)"
        raise OutputFolderError(os.fspath(path), f"{what} is not writable{inside}: {err.strerror or err}") from err
    if required_bytes > 0:
        free = shutil.disk_usage(base).free
        if free < required_bytes:
            raise OutputFolderError(
                os.fspath(path),
                f"{what} has {format_bytes(free)} free, but this run needs at least {format_bytes(required_bytes)}; "
                "free some space or point it elsewhere",
            )
    return path


def prepare_output_folders(
    folders: Mapping[str, str | os.PathLike] | Iterable[str | os.PathLike],
    required_bytes: int = 0,
    margin_bytes: int = DEFAULT_MARGIN,
    tidy: bool = True,
) -> dict[str, list[Path]]:
    """Check every output folder of a run before it starts, and remove stale temporary files from them.

    Each folder must be writable and have ``required_bytes + margin_bytes`` free.

    Args:
        folders: ``{config key: folder}`` (the key names the folder in messages), or a list of folders.
        required_bytes: what the run will write in total (e.g. :func:`checkpoint_bytes`).
        margin_bytes: room kept beyond that (logs, reports).
        tidy: remove stale temporary files of earlier, killed runs (main process only).

    Returns:
        ``{key: removed temporary files}``.

    Raises:
        OutputFolderError: naming the first folder at fault.
    """
    named = dict(folders) if isinstance(folders, Mapping) else {os.fspath(f): f for f in folders}
    named = {k: v for k, v in named.items() if v is not None}
    need = int(required_bytes) + int(margin_bytes)
    removed: dict[str, list[Path]] = {}
    for key, folder in named.items():
        check_writable_folder(folder, need, what=key)
        if tidy and is_main_process():
            removed[key] = remove_stale_temps(folder)
            if removed[key]:
                logger.info("%s: removed %d temporary file(s) left by an interrupted run", folder, len(removed[key]))
    return removed
