"""A small real results folder: PatchCore (Lite0, 64 px) fitted on 6 magnetic-tile training tiles, tested on
6 good + 10 defective test tiles (every defect type, with masks) through ``generalad.evaluate``."""

from __future__ import annotations

import pytest

from generalad.data import open_dataset
from generalad.evaluate import evaluate
from generalad.methods.patchcore import PatchCore


@pytest.fixture(scope="package")
def tile(magnetic_tile_dir):
    return open_dataset(magnetic_tile_dir)


@pytest.fixture(scope="package")
def tile_model(tile):
    model = PatchCore(backbone="efficientnet_lite0", image_size=64, device="cpu", precision="fp32", calibration_min=2)
    return model.fit(tile.train[:6])


@pytest.fixture(scope="package")
def tile_test(tile):
    good = [s for s in tile.test if s.label == 0][:6]
    defects = [s for kind in sorted({s.defect_type for s in tile.test if s.label == 1})
               for s in [x for x in tile.test if x.defect_type == kind][:2]]
    return good + defects


@pytest.fixture(scope="package")
def tile_res(tile_model, tile_test, tmp_path_factory):
    """(results folder, metrics) with masks: pixel metrics, PRO curve, gallery."""
    out = tmp_path_factory.mktemp("res") / "tile"
    extra = {"dataset": "mvtec", "category": "magnetic_tile"}
    metrics = evaluate(tile_model, tile_test, out_dir=out, has_masks=True, extra=extra, gallery=4)
    return out, metrics
