"""A small real export shared by the deploy tests, of the shared ``small_run`` (tests/conftest.py)."""

from __future__ import annotations

import pytest

from generalad.export import export_model


@pytest.fixture(scope="package")
def small_export(small_run, tmp_path_factory):
    model, run = small_run
    return export_model(model, tmp_path_factory.mktemp("export") / "onnx", fmt="onnx", source_run=str(run))
