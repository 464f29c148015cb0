"""RGB / depth / RGBD detectors on a synthesised MVTec 3D-AD category (docs/methods/anomalyhybrid.md §4):
the depth detector reads sensor depth, RGBD standardises each map with statistics of normal validation
images only, and a depth-only run holds no generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from generalad.data import open_dataset
from generalad.errors import ConfigError, InputError
from generalad.methods import load_model
from generalad.methods.anomalyhybrid import AnomalyHybrid
from generalad.methods.anomalyhybrid.estimator import generate_from_run
from generalad.pipeline import fit_on, open_training

tifffile = pytest.importorskip("tifffile")
S = 64


def _write(folder: Path, stem: str, rng: np.random.Generator, bump: bool) -> None:
    for sub in ("rgb", "xyz", "gt"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:S, :S].astype(np.float32)
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 22**2
    z = np.where(disc, 400.0 - 10 * np.cos(xx / 9), 450.0).astype(np.float32)
    gt = np.zeros((S, S), np.uint8)
    if bump:
        cy, cx = rng.integers(22, 42, 2)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
        z[blob] -= 25.0
        gt[blob] = 255
    rgb = np.where(disc[..., None], 150 + rng.integers(0, 20, (S, S, 1)), 20).astype(np.uint8).repeat(3, 2)
    Image.fromarray(rgb).save(folder / "rgb" / f"{stem}.png")
    tifffile.imwrite(folder / "xyz" / f"{stem}.tiff", np.stack([xx, yy, z], -1), photometric="rgb")
    if bump or folder.parent.name == "test":
        Image.fromarray(gt).save(folder / "gt" / f"{stem}.png")


@pytest.fixture(scope="module")
def cookie(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mvtec3d") / "cookie"
    rng = np.random.default_rng(0)
    for i in range(10):
        _write(root / "train" / "good", f"{i:03d}", rng, False)
    for i in range(4):
        _write(root / "validation" / "good", f"{i:03d}", rng, False)
    for i in range(3):
        _write(root / "test" / "good", f"{i:03d}", rng, False)
        _write(root / "test" / "hole", f"{i:03d}", rng, True)
    return root


def _fit(cookie: Path, **options) -> AnomalyHybrid:
    model = AnomalyHybrid(preset="smoke", depth="sensor", device="cpu", **options)
    return fit_on(model, open_training(str(cookie)))


def test_rgbd_standardises_with_validation_statistics_only(cookie: Path, tmp_path: Path) -> None:
    ds = open_dataset(cookie)
    model = _fit(cookie, modality="rgbd")
    assert sorted(model.detectors_) == ["depth", "rgb"]
    assert model.calibration_files_ == [s.path for s in ds.validation]  # held-out = validation/good
    val_maps = model._maps_per_detector(model.extract(ds.validation))
    for name, (mean, std) in model.fusion_stats_.items():
        assert mean == pytest.approx(float(val_maps[name].mean()), rel=1e-5)
        assert std == pytest.approx(float(val_maps[name].std()), rel=1e-5)
    feats = model.extract(ds.test)
    per = model._maps_per_detector(feats)
    expected = sum((per[k] - m) / s for k, (m, s) in model.fusion_stats_.items()) / 2
    _, maps = model._infer_features(feats)
    assert torch.allclose(maps, expected)
    loaded = load_model(model.save(tmp_path / "run"))
    assert np.array_equal(loaded.score(ds.test), model.score(ds.test))


def test_depth_detector_reads_sensor_depth_and_has_no_generator(cookie: Path, tmp_path: Path) -> None:
    ds = open_dataset(cookie)
    model = _fit(cookie, modality="depth")
    assert list(model.detectors_) == ["depth"] and model.generator_ is None
    assert set(model.method_stats_["generated_depth"]["operators"]) <= {"bump", "dent", "depth_patch"}
    run = model.save(tmp_path / "depth_run")
    with pytest.raises(InputError, match="no generator"):
        generate_from_run(run, ds.train, 2, tmp_path / "gen")
    assert load_model(run).score(ds.test).shape == (len(ds.test),)


def test_depth_modalities_need_sensor_depth() -> None:
    with pytest.raises(ConfigError, match="sensor"):
        AnomalyHybrid(modality="rgbd")
