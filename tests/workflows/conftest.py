"""Fixtures of the workflow smoke tests (helpers and tiny settings live in ``workflow_utils``)."""

from __future__ import annotations

import pytest
from workflow_utils import PhantomSet, make_phantom_set


@pytest.fixture(scope="session")
def phantom_set(tmp_path_factory):
    """Factory: ``phantom_set("lits")`` -> :class:`PhantomSet` (4 cases, size 32), written once per session."""
    made: dict[str, PhantomSet] = {}

    def make(preset: str) -> PhantomSet:
        if preset not in made:
            made[preset] = make_phantom_set(preset, tmp_path_factory.mktemp(preset))
        return made[preset]

    return make
