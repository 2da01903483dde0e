"""Fixtures of the data tests (helpers in ``phantom_datalists``)."""

from __future__ import annotations

import pytest
from phantom_datalists import PhantomDatalist, make_phantom_datalist


@pytest.fixture(scope="session")
def task_phantoms(tmp_path_factory):
    """Factory: ``task_phantoms("brats2019")`` -> :class:`PhantomDatalist`, written once per session."""
    made: dict[str, PhantomDatalist] = {}

    def make(layout: str) -> PhantomDatalist:
        if layout not in made:
            made[layout] = make_phantom_datalist(layout, tmp_path_factory.mktemp(layout))
        return made[layout]

    return make
