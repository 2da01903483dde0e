"""Fixtures of the reliability drills: the bundle's real commands on small phantom data, and the drill counts.

Every drill runs a real command (``python -m monai.bundle run ...`` or a console script of ``pyproject.toml``) in a
process of its own: a fresh ``python`` for reference and final runs, otherwise a fork of :mod:`forkserver`, a process
that has already imported torch and MONAI, so that a command costs a fraction of a second of start-up instead of
five (and a kill lands in the work, not in the imports). The counts of what the drills did (kills survived, bad
inputs refused, files lost) are printed at the end of the session.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from drill_utils import Commands
from workflow_utils import make_phantom_set, train

#: what the drills did, filled in by the tests and printed by :func:`pytest_terminal_summary`
COUNTS = {"kills": 0, "refused": 0, "quiet": 0, "lost": 0, "ran": False}


def pytest_terminal_summary(terminalreporter):
    if COUNTS["ran"]:
        terminalreporter.write_line(f"drills: {COUNTS['kills']} kills survived, {COUNTS['refused']} bad inputs "
                                    f"refused, {COUNTS['quiet']} quiet failures caught, files lost: {COUNTS['lost']}")


@pytest.fixture
def counts():
    COUNTS["ran"] = True
    return COUNTS


@pytest.fixture(scope="session")
def commands():
    client = Commands()
    yield client
    client.close()


@pytest.fixture(scope="session")
def pristine(tmp_path_factory):
    """4 BraTS 2021 phantoms (32 x 32 slices, 2 / 1 / 1 datalist), never changed: copy it with :func:`copy_set`."""
    return make_phantom_set("brats", tmp_path_factory.mktemp("pristine"))


@pytest.fixture(scope="session")
def trained(pristine, tmp_path_factory):
    """A tiny SAMAug segmentation model of the pristine set (fallback priors, one epoch): ``<work>/models``."""
    work = tmp_path_factory.mktemp("trained")
    train(pristine, work)
    return work
