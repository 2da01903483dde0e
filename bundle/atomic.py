"""Atomic file writes: nothing a reader (or a resumed run) sees is ever half written.

Every output of the bundle (phantoms, datalists, prior NIfTIs and manifests, checkpoints, metric reports,
predictions) goes through :func:`atomic_path`: the data is written under a temporary name in the target's folder,
flushed to disk (``fsync``) and renamed into place with ``os.replace``, which is atomic on POSIX and Windows file
systems. A failure leaves the previous file, or none, and no temporary file once the writer's ``finally`` runs; the
fsync makes the same true after a power cut, where a rename can otherwise reach the disk before the data.

A write that fails in the file system (disk full, file-size limit, read-only or failing disk) raises
:class:`bundle.errors.OutputWriteError` naming the final path, whatever the writer (nibabel, ``torch.save`` to a file
object, ``json``) wrapped the ``OSError`` in.

A ``kill -9`` skips the ``finally``: its temporary file (``.<stem>.tmp-<pid>-<8 hex><suffix>``) stays behind.
:func:`remove_stale_temps` removes such leftovers on the next run.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bundle.errors import FileError, OutputWriteError, exception_chain
from bundle.hashing import file_sha256

__all__ = [
    "atomic_path",
    "atomic_content_path",
    "ContentFile",
    "temp_path_for",
    "write_text_atomic",
    "write_bytes_atomic",
    "TEMP_NAME",
    "temp_owner_pid",
    "process_start_time",
    "remove_stale_temps",
]

_DOUBLE_SUFFIXES = (".nii.gz", ".tar.gz")

TEMP_NAME = re.compile(r"^\.(?P<stem>.*)\.tmp-(?P<pid>\d+)-(?P<token>[0-9a-f]{8})(?P<suffix>(\.[^.]+)*)$")
"""Names of :func:`atomic_path` temporary files: ``.<stem>.tmp-<pid>-<8 hex digits><suffix>``."""


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (POSIX; Windows cannot open folders and needs no such step)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a folder without read permission: the rename is done, only its durability is unknown
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (network mounts) refuse fsync on folders; the rename itself succeeded
        pass
    finally:
        os.close(fd)


def _split_name(name: str) -> tuple[str, str]:
    """``(stem, extension)`` of a file name, ``.nii.gz`` and ``.tar.gz`` counting as one extension."""
    suffix = next((s for s in _DOUBLE_SUFFIXES if name.endswith(s)), Path(name).suffix)
    return (name[: len(name) - len(suffix)] if suffix else name), suffix


def temp_path_for(path: str | os.PathLike) -> Path:
    """A fresh temporary name next to ``path`` (pattern :data:`TEMP_NAME`, keeping the extension)."""
    path = Path(path)
    stem, suffix = _split_name(path.name)
    return path.with_name(f".{stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``, on any error it is removed.

    A file-system failure while writing (see :data:`_WRITE_ERRNOS`) is raised as an
    :class:`~bundle.errors.OutputWriteError` naming ``path``.

    The temporary name keeps the target's extension (``.nii.gz`` included) so that writers choosing a format by
    extension, like nibabel, write the right one. The old ``path`` stays untouched until the new file is complete.

    Args:
        path: the file to write.
        fsync: flush the written file to disk before the rename, and the folder after it (a writer may leave a
            folder at the temporary path, e.g. a DICOM series: then only the rename is flushed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        if fsync and tmp.is_file():
            _fsync_file(tmp)
        os.replace(tmp, path)
        if fsync:
            _fsync_dir(path.parent)
    except Exception as err:
        _raise_write_failure(err, path)
    finally:
        tmp.unlink(missing_ok=True)


def _raise_write_failure(err: Exception, path: Path) -> None:
    """Re-raise ``err``; a file-system write failure as an :class:`OutputWriteError` naming ``path``."""
    cause = _write_failure(err)
    if cause is None or isinstance(err, FileError):
        raise err
    raise OutputWriteError(os.fspath(path), f"cannot be written: {cause.strerror or cause}") from err


@dataclass
class ContentFile:
    """What :func:`atomic_content_path` wrote: the temporary path to write to, then the final path, size, sha256."""

    tmp: Path
    path: Path | None = None
    size: int | None = None
    sha256: str | None = None


@contextmanager
def atomic_content_path(path: str | os.PathLike, digits: int = 12, fsync: bool = True) -> Iterator[ContentFile]:
    """:func:`atomic_path` for a file named after its content: ``<stem>.<first digits of its sha256><extension>``.

    A name then always holds the same bytes, so a new version is written beside the old one instead of over it, and
    a reader that found the old name keeps reading the old bytes (the prior cache's entries, :mod:`bundle.priors.cache`).
    Two writers of the same bytes write the same name (the rename of the second replaces identical content).

    Yields:
        a :class:`ContentFile`: write to ``.tmp``; after the ``with`` block ``.path``, ``.size`` and ``.sha256`` say
        what is on disk.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    target = ContentFile(tmp=temp_path_for(path))
    try:
        yield target
        target.size, target.sha256 = target.tmp.stat().st_size, file_sha256(target.tmp)
        stem, suffix = _split_name(path.name)
        final = path.with_name(f"{stem}.{target.sha256[:digits]}{suffix}")
        if fsync:
            _fsync_file(target.tmp)
        os.replace(target.tmp, final)
        if fsync:
            _fsync_dir(final.parent)
        target.path = final
    except Exception as err:
        _raise_write_failure(err, path)
    finally:
        target.tmp.unlink(missing_ok=True)


#: errors of the file system itself while writing (not of the data): full disk or quota, file-size limit, read-only
#: or failing device
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO}


def _write_failure(error: BaseException) -> OSError | None:
    """The file-system write failure in ``error``'s chain (writers such as torch wrap it in their own error)."""
    return next((e for e in exception_chain(error) if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS), None)


def write_text_atomic(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding=encoding, newline="") as f:
            f.write(text)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(path)


# ----------------------------------------------------------------------------------------- leftovers of killed runs


def temp_owner_pid(name: str) -> int | None:
    """The process id in an :func:`atomic_path` temporary file name, or None for any other name."""
    match = TEMP_NAME.match(name)
    return int(match.group("pid")) if match else None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:  # platforms without signal 0 (Windows): assume alive, the age test alone then decides
        return True
    return True


_IMPORTED_AT = time.time()


def process_start_time() -> float:
    """When this process started (seconds since the epoch): from ``/proc`` on Linux, else when this module loaded."""
    try:
        with open("/proc/self/stat") as f:
            # field 22 (starttime, clock ticks since boot) follows the parenthesised command name, which may hold spaces
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        # uptime (10 ms resolution) rather than /proc/stat's btime, which is rounded to whole seconds
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORTED_AT


def remove_stale_temps(
    folder: str | os.PathLike, recursive: bool = False, older_than: float | None = None
) -> list[Path]:
    """Remove the temporary files that killed writers left in ``folder``; returns the paths removed.

    A file is stale when its name matches :data:`TEMP_NAME`, it was last modified before ``older_than`` (default:
    the start of this process, :func:`process_start_time`), and the process named in it is no longer running on
    this machine. A temporary file still being written keeps a fresh modification time (and a live owner), so a
    concurrent run's file is never taken.

    Args:
        folder: the folder to tidy (a missing folder is fine: nothing to do).
        recursive: also look in sub-folders (e.g. the per-case folders of the prior cache).
        older_than: a time (seconds since the epoch); files modified at or after it are kept.

    Returns:
        the removed files, sorted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    limit = process_start_time() if older_than is None else float(older_than)
    removed = []
    for path in folder.rglob(".*.tmp-*") if recursive else folder.glob(".*.tmp-*"):
        pid = temp_owner_pid(path.name)
        if pid is None or not path.is_file() or _pid_alive(pid):
            continue
        try:
            if path.stat().st_mtime >= limit:
                continue
            path.unlink()
        except FileNotFoundError:  # another process tidied it first
            continue
        removed.append(path)
    return sorted(removed)
