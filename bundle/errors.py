"""The project's own errors, and the one line a failing bundle command ends with.

Every fault a user can cause (an unreadable or inconsistent input file, a broken checkpoint or datalist, a full or
read-only output folder, a diverged training) raises a :class:`BundleError` whose message is complete on its own;
:class:`InputError` adds the file at fault (``path``) and what is wrong with it (``problem``).

``python -m monai.bundle run ...`` buries such an error under MONAI's ``Failed to evaluate ConfigExpression`` and a
long traceback. :func:`install_excepthook` (run when the package is imported, which every config does) keeps that
traceback for developers and then prints one last line, ``ERROR: <file>: <problem>``, found by walking the
exception chain (``__cause__`` / ``__context__``) down to the project's own error.

A failure while MONAI's ``CacheDataset`` fills its cache leaves the other workers of its thread pool running (the
pool is terminated, but thread workers are never joined). At interpreter shutdown those daemon threads are stopped
inside torch's C++ code and the process dies with ``terminate called without an active exception`` (SIGABRT, exit
134) after the error line. The hook therefore ends such a process itself, with exit status 1 (130 for Ctrl-C),
once streams and log handlers are flushed.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator

__all__ = [
    "BundleError",
    "FileError",
    "InputError",
    "MissingInputError",
    "OutputWriteError",
    "RunSettingsError",
    "exception_chain",
    "error_line",
    "install_excepthook",
    "busy_pool_workers",
]


class BundleError(Exception):
    """Base of the project's own errors: the message says what is wrong and, where there is one, names the file."""


class FileError(BundleError):
    """A file or folder is at fault. The message always starts with the path, then the problem.

    Attributes:
        path: the file (or a description of an in-memory array) at fault.
        problem: what is wrong with it.
    """

    def __init__(self, path, problem: str = ""):
        self.path = os.fspath(path) if isinstance(path, os.PathLike) else path
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if problem else str(self.path))

    def __reduce__(self):  # keep (path, problem) through pickling, e.g. out of DataLoader worker processes
        return type(self), (self.path, self.problem)


class InputError(FileError, ValueError):
    """An input file (image, label, datalist, checkpoint) or folder cannot be used.

    ``/data/x_seg.nii.gz: label values [7] are not in the label set [0, 1, 2, 4]``.
    """


class MissingInputError(InputError, FileNotFoundError):
    """An input file or folder does not exist (also a ``FileNotFoundError``, with ``filename`` set)."""

    def __init__(self, path, problem: str = "does not exist"):
        super().__init__(path, problem)
        self.filename = self.path

    def __str__(self) -> str:  # OSError would print "[Errno None] ..." otherwise
        return f"{self.path}: {self.problem}" if self.problem else str(self.path)


class OutputWriteError(FileError, OSError):
    """An output file could not be written (disk full, file-size limit, read-only or failing disk): ``<file>: cannot
    be written: <reason>``. Raised by :func:`bundle.atomic.atomic_path`, which leaves nothing under the file's name."""

    def __str__(self) -> str:  # OSError would print "[Errno ...]" otherwise
        return f"{self.path}: {self.problem}"


class RunSettingsError(FileError, ValueError):
    """A run folder holds a training made with other settings (or by a version that recorded none): resuming it,
    keeping it as this run's result or silently replacing it would all be wrong. ``<checkpoint>: <the first differing
    setting, old -> new>; <how to start afresh>``."""


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """``error``, then its cause (or, unless suppressed, its context), and so on; each exception once."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Original Traceback" in lines[1]:
        # torch's DataLoader re-raises a worker's exception with its formatted traceback as the only argument: the
        # last line is the original "package.SomeError: message"
        return re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1])
    return lines[0] if lines else ""


_FILE_PREFIX = re.compile(r"^(?P<path>[^\s:]*[/\\][^:]*|[\w.-]+\.[A-Za-z][A-Za-z0-9]*): \S")
"""A message that starts with a path (``/d/x.nii.gz: ...``, ``data/x.json: ...``) or a file name with an
extension (``entry.json: ...``) and then says something."""


def _names_file(message: str) -> bool:
    return bool(_FILE_PREFIX.match(message))


def error_line(error: BaseException) -> str:
    """The one-line summary of a failure: ``ERROR: <file>: <problem>``.

    The outermost project error of the chain wins (it carries the most context); without one, the outermost error
    that names a file: a file-system error's file (``ERROR: /models: [Errno 13] Permission denied``) or a message
    that starts with a path (``ERROR: /c/x.nii.gz: cannot be read (EOFError: ...)``); anything else gives the
    innermost cause as ``ERROR: <type>: <first line of its message>``.
    """
    chain = list(exception_chain(error))
    for exc in chain:
        if isinstance(exc, FileError):
            return f"ERROR: {exc.path}: {_first_line(exc.problem)}" if exc.problem else f"ERROR: {_first_line(exc.path)}"
        if isinstance(exc, BundleError):
            return f"ERROR: {_first_line(str(exc))}"
    for exc in chain:
        if isinstance(exc, OSError) and exc.filename:
            return f"ERROR: {exc.filename}: {exc.strerror or _first_line(str(exc))}"
        # a library's or plain error that starts with the file it is about (``<file>: ...``) says more than the
        # bare cause under it (``EOFError: Compressed file ended ...`` of a truncated NIfTI names no file)
        message = _first_line(str(exc))
        if _names_file(message):
            return f"ERROR: {message}"
    root = chain[-1]
    message = _first_line(str(root))
    return f"ERROR: {type(root).__name__}: {message}" if message else f"ERROR: {type(root).__name__}"


def busy_pool_workers(grace_s: float = 1.0) -> list[threading.Thread]:
    """Thread-pool workers (``multiprocessing.pool.ThreadPool``) still running after ``grace_s`` seconds.

    Idle workers of a terminated pool exit at once; the ones returned are inside a task.
    """
    from multiprocessing.dummy import DummyProcess

    deadline = time.monotonic() + grace_s
    workers = [t for t in threading.enumerate() if isinstance(t, DummyProcess) and t.is_alive()]
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    return [w for w in workers if w.is_alive()]


def _exit_before_busy_workers_abort(exc) -> None:
    if hasattr(sys, "ps1") or sys.flags.interactive:  # an interactive session survives its exceptions
        return
    busy = busy_pool_workers()
    if not busy:
        return
    print(f"({len(busy)} thread-pool worker(s) still busy; exiting without waiting for them)", file=sys.stderr)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(130 if isinstance(exc, KeyboardInterrupt) else 1)


def install_excepthook() -> None:
    """Make an uncaught exception end with :func:`error_line` after the usual traceback (idempotent).

    The previous hook still prints the traceback; ``KeyboardInterrupt`` gets no extra line. When thread-pool workers
    are still busy, the process exits right after (see the module docstring).
    """
    if getattr(sys.excepthook, "_bundle_error_line", False):
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        if exc is not None and not isinstance(exc, KeyboardInterrupt):
            try:
                line = error_line(exc)
            except Exception:  # noqa: BLE001 - a broken summary must never hide the traceback printed above
                line = None
            if line:
                print(line, file=sys.stderr, flush=True)
        _exit_before_busy_workers_abort(exc)

    hook._bundle_error_line = True  # type: ignore[attr-defined]
    sys.excepthook = hook
