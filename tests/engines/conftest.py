"""The engine tests' model: the suite's shared small PatchCore (tests/conftest.py ``small_run``)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_pc(small_run, bottle):
    """(run directory, fitted model, bottle dataset)."""
    model, run = small_run
    return run, model, bottle
