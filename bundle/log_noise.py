"""Known, harmless console messages that MONAI repeats: let each through once per process.

On a machine without nvImageCodec / CUDA, every ``monai.transforms.LoadImage`` (each ``LoadImaged`` of a config,
each reader check of :mod:`bundle.data.checks`) builds an ``NvImgCodecPydicomReader``, whose registration attempt
logs ``nvImageCodec is not available; skipping pydicom decoder plugin registration.`` (logger
``monai.data.nvimgcodec_pydicom_plugin``) and warns ``NvImgCodecPydicomReader: nvImageCodec decoder plugin did not
register successfully. ...`` (``UserWarning``). A bundle command printed the log line about ten times. The
message is still worth seeing once (it says DICOM decoding runs on the CPU), so it is not silenced.

:func:`quiet_known_repeats` (run when the package is imported, which every config does) installs a
:class:`OncePerProcess` filter on each listed logger itself, not on a handler, so it works whatever handlers
MONAI's ``logging.conf`` installs, and a warnings ``"once"`` filter for each listed warning text.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from collections.abc import Iterable

__all__ = ["REPEATED_LOG_MESSAGES", "REPEATED_WARNINGS", "OncePerProcess", "quiet_known_repeats"]

#: ``(logger name, message prefix)`` of log records shown once per process
REPEATED_LOG_MESSAGES: tuple[tuple[str, str], ...] = (
    ("monai.data.nvimgcodec_pydicom_plugin", "nvImageCodec is not available; skipping pydicom decoder plugin"),
)
#: ``(category, message prefix)`` of warnings shown once per process
REPEATED_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (UserWarning, "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully"),
)


class OncePerProcess(logging.Filter):
    """Logging filter: a record whose message starts with one of ``prefixes`` passes the first time only.

    Each prefix is counted on its own; records matching no prefix always pass.

    Args:
        prefixes: message prefixes (of ``record.getMessage()``, i.e. after ``%`` formatting).
    """

    def __init__(self, prefixes: Iterable[str] = ()) -> None:
        super().__init__()
        self.prefixes: list[str] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()  # loaders may log from several threads (CacheDataset's pool)
        self.add(prefixes)

    def add(self, prefixes: Iterable[str]) -> None:
        """Also let ``prefixes`` through once (a prefix given twice is kept once)."""
        for prefix in prefixes:
            if prefix not in self.prefixes:
                self.prefixes.append(prefix)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for prefix in self.prefixes:
            if message.startswith(prefix):
                with self._lock:
                    if prefix in self._seen:
                        return False
                    self._seen.add(prefix)
                return True
        return True


def _once_filter(logger: logging.Logger) -> OncePerProcess:
    """The :class:`OncePerProcess` filter of ``logger``, added if it has none."""
    for existing in logger.filters:
        if isinstance(existing, OncePerProcess):
            return existing
    once = OncePerProcess()
    logger.addFilter(once)
    return once


def quiet_known_repeats(
    log_messages: Iterable[tuple[str, str]] = REPEATED_LOG_MESSAGES,
    warning_messages: Iterable[tuple[type[Warning], str]] = REPEATED_WARNINGS,
) -> None:
    """Show each listed log message and warning once per process; calling it again adds nothing twice.

    Args:
        log_messages: ``(logger name, message prefix)`` pairs; the filter sits on the named logger, so records
            of its child loggers are not affected.
        warning_messages: ``(category, message prefix)`` pairs for a warnings ``"once"`` filter.
    """
    for name, prefix in log_messages:
        _once_filter(logging.getLogger(name)).add([prefix])
    for category, prefix in warning_messages:
        # filterwarnings moves an identical filter to the front instead of adding a second one
        warnings.filterwarnings("once", message=re.escape(prefix), category=category)
