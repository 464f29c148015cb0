"""A small real PatchCore (4 bottle training images, 64 px), fitted once for the engine tests."""

from __future__ import annotations

import pytest

from generalad import PatchCore, open_dataset


@pytest.fixture(scope="session")
def small_pc(bottle_dir, tmp_path_factory):
    """(run directory, fitted model, bottle dataset)."""
    ds = open_dataset(bottle_dir)
    model = PatchCore(backbone="efficientnet_lite0", image_size=64, calibration_min=2).fit(ds.train[:4])
    run = tmp_path_factory.mktemp("pc") / "run"
    model.save(run)
    return run, model, ds
