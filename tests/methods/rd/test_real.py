"""RD / ARD on the real data in ../shared/data (EfficientNet-Lite0 teacher, bundled ImageNet weights).

Small budgets (seconds): these check the real-data paths work and learn, not the benchmark numbers
(docs/RESULTS.md, "RD and ARD").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from generalad.data import image_hw, open_dataset, read_mask
from generalad.data.synthetic import pasted_defects
from generalad.methods.rd import ARD, ReverseDistillation
from generalad.metrics import image_auroc


def test_one_class_mnist_digit_1_short_fit(mnist_dir: Path) -> None:
    """cpu_novelty preset (32 px) for 15 epochs on 270 ones (30 calibrate); 100 ones vs 100 other digits of the test set."""
    ds = open_dataset(mnist_dir, normal_class="1")
    normal = [s for s in ds.test if s.label == 0][:100]
    other = [s for s in ds.test if s.label == 1][::9][:100]
    model = ReverseDistillation(preset="cpu_novelty", epochs=15, device="cpu").fit(ds.train)
    assert model.working_size == 32 and model.fit_info_["n_train"] == 270
    auroc = image_auroc(model.score(normal + other), np.array([0] * len(normal) + [1] * len(other)))
    assert auroc > 0.9, auroc


def test_monitor_on_magnetic_tile_images_of_different_sizes(magnetic_tile_dir: Path, tmp_path: Path) -> None:
    """Pasted defects on real tiles keep each image's own size; the monitor resizes each mask on its own."""
    ds = open_dataset(magnetic_tile_dir)
    train = ds.train[:40]
    held = ds.train[40:48]
    assert len({image_hw(s) for s in held}) > 1  # the real tiles differ in size: the case that must work
    defective = pasted_defects(held, tmp_path, seed=0)
    assert all(read_mask(d).shape == image_hw(s) and read_mask(d).any() for d, s in zip(defective, held))
    model = ARD(image_size=64, epochs=10, device="cpu").fit(train, monitor=held + defective)
    check = model.history_[9]["monitor"]
    assert set(check) == {"image_auroc", "pixel_auroc"} and 0 <= check["pixel_auroc"] <= 1
    assert model.selection_ == "last epoch (10)"
