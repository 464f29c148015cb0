"""AnomalyHybrid on real data (../shared/data): the object mask finds the bottle and treats magnetic tile as a
texture, and a smoke-preset fit on bottle generates anomalies whose masks sit on the object and writes an
MVTec-style folder that the generated-validation reader turns into labelled samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from generalad.backbones.base import preprocess
from generalad.data import open_dataset, read_image
from generalad.methods.anomalyhybrid import AnomalyHybrid
from generalad.methods.anomalyhybrid.estimator import generated_validation
from generalad.methods.anomalyhybrid.manipulate import foreground


def _images(root: Path, n: int = 4) -> np.ndarray:
    ds = open_dataset(root)
    return preprocess([read_image(s) for s in ds.train[:n]], 128, (0, 0, 0), (1, 1, 1)).numpy()


def test_foreground_on_bottle_and_magnetic_tile(bottle_dir: Path, magnetic_tile_dir: Path) -> None:
    for img in _images(bottle_dir):
        fg = foreground(img.transpose(1, 2, 0))
        assert fg[64, 64] and not fg[2, 2] and 0.4 < fg.mean() < 0.8  # the bottle, not the white background
    assert all(foreground(img.transpose(1, 2, 0)).all() for img in _images(magnetic_tile_dir))


def test_smoke_fit_on_bottle_generates_anomalies_on_the_object(bottle_dir: Path, tmp_path: Path) -> None:
    ds = open_dataset(bottle_dir)
    model = AnomalyHybrid(preset="smoke", device="cpu").fit(ds.train)
    masks = model.generated_.masks.numpy()
    assert masks.any(axis=(1, 2)).all()
    fg = [foreground(model.extract([ds.train[i]]).maps[0][0].numpy().transpose(1, 2, 0)) for i in model.generated_.bases]
    on_object = np.mean([(m & f).sum() / m.sum() for m, f in zip(masks, fg)])
    assert on_object > 0.5, on_object
    scores = model.score(ds.test[:8])
    assert scores.shape == (8,) and np.isfinite(scores).all()
    run = model.save(tmp_path / "run")
    samples = generated_validation(run, ds.train[:3], tmp_path / "val", n=6)
    assert [s.label for s in samples] == [0, 0, 0] + [1] * 6 and all(s.mask_paths for s in samples[3:])
