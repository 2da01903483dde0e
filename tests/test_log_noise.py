"""Tests of bundle.log_noise: MONAI's repeated nvImageCodec notice is shown once per process, other messages pass."""

from __future__ import annotations

import logging
import re
import warnings

import pytest
from monai.data import nvimgcodec_pydicom_plugin
from monai.transforms import LoadImage

from bundle.log_noise import REPEATED_LOG_MESSAGES, REPEATED_WARNINGS, OncePerProcess, quiet_known_repeats

PLUGIN_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"
NOTICE = "nvImageCodec is not available"
WARNING_TEXT = "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully"

notice_printed = pytest.mark.skipif(
    nvimgcodec_pydicom_plugin.is_nvimgcodec_available(), reason="nvImageCodec is available: MONAI prints no notice"
)


@pytest.fixture
def fresh_filters(monkeypatch):
    """The plugin logger without the filter the package import installed, and an empty warnings once-registry,
    both restored afterwards (earlier tests of the session may have shown the message already)."""
    logger = logging.getLogger(PLUGIN_LOGGER)
    monkeypatch.setattr(logger, "filters", [])
    monkeypatch.setattr(logger, "disabled", False)
    saved = dict(warnings.onceregistry)
    warnings.onceregistry.clear()
    try:
        yield logger
    finally:
        warnings.onceregistry.clear()
        warnings.onceregistry.update(saved)


def _notices(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == PLUGIN_LOGGER and r.getMessage().startswith(NOTICE)]


@notice_printed
def test_load_image_notice_is_logged_once(fresh_filters, caplog):
    caplog.set_level(logging.WARNING, logger=PLUGIN_LOGGER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        LoadImage(), LoadImage()
        assert len(_notices(caplog)) == 2, "MONAI no longer repeats the notice: bundle.log_noise may be obsolete"
        caplog.clear()
        quiet_known_repeats()
        for _ in range(3):
            LoadImage()
        nvimgcodec_pydicom_plugin.register_as_decoder_plugin()
    assert len(_notices(caplog)) == 1


def test_other_messages_of_the_logger_still_pass(fresh_filters, caplog):
    caplog.set_level(logging.INFO, logger=PLUGIN_LOGGER)
    quiet_known_repeats()
    for _ in range(2):
        fresh_filters.warning("nvImageCodec is not available; skipping pydicom decoder plugin registration.")
        fresh_filters.warning("decoder %s failed", "jpeg2000")
        fresh_filters.info("registered")
    messages = [r.getMessage() for r in caplog.records if r.name == PLUGIN_LOGGER]
    assert messages.count("decoder jpeg2000 failed") == 2 and messages.count("registered") == 2
    assert len(_notices(caplog)) == 1


def test_install_is_idempotent(fresh_filters):
    quiet_known_repeats()
    quiet_known_repeats()
    (once,) = [f for f in fresh_filters.filters if isinstance(f, OncePerProcess)]
    assert once.prefixes == [prefix for name, prefix in REPEATED_LOG_MESSAGES if name == PLUGIN_LOGGER]
    with warnings.catch_warnings():
        quiet_known_repeats()
        quiet_known_repeats()
        patterns = [re.escape(prefix) for _, prefix in REPEATED_WARNINGS]
        once = [f for f in warnings.filters if f[0] == "once" and f[1] is not None and f[1].pattern in patterns]
        assert len(once) == len(patterns)


@notice_printed
def test_reader_warning_is_shown_once(fresh_filters):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # what `python -W always` or a test runner may set
        quiet_known_repeats()
        for _ in range(3):
            LoadImage()
    assert sum(WARNING_TEXT in str(w.message) for w in caught) == 1


@pytest.mark.parametrize("message, passes", [("abc and more", [True, False]), ("xyz", [True, True])])
def test_once_filter_counts_each_prefix(message, passes):
    once = OncePerProcess(["abc"])
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, message, None, None)
    assert [once.filter(record) for _ in passes] == passes
