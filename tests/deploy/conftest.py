"""A small real export shared by the deploy tests: PatchCore on Lite0 at 64 px, fitted on 4 bottle images."""

from __future__ import annotations

import pytest

from generalad.data import open_dataset
from generalad.export import export_model
from generalad.methods.patchcore import PatchCore


@pytest.fixture(scope="package")
def bottle(bottle_dir):
    return open_dataset(bottle_dir)


@pytest.fixture(scope="package")
def small_run(bottle, tmp_path_factory):
    model = PatchCore(backbone="efficientnet_lite0", image_size=64, device="cpu", precision="fp32", calibration_min=2)
    model.fit(bottle.train[:4])
    run = model.save(tmp_path_factory.mktemp("run") / "model")
    return model, run


@pytest.fixture(scope="package")
def small_export(small_run, tmp_path_factory):
    model, run = small_run
    return export_model(model, tmp_path_factory.mktemp("export") / "onnx", fmt="onnx", source_run=str(run))
