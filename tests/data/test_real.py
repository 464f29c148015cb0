"""Readers on the real data in ../shared (MVTec bottle subset, magnetic tile, MNIST class folders)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from generalad.data import contaminate, image_hw, open_dataset, read_image, read_mask, sample_shots, split_holdout
from generalad.errors import ConfigError


def _is_sorted(samples: list) -> bool:
    return [s.path for s in samples] == sorted(s.path for s in samples)


def test_bottle_counts(bottle_dir: Path) -> None:
    data = open_dataset(bottle_dir)
    assert (data.name, data.category, data.has_masks) == ("mvtec", "bottle", False)
    assert len(data.train) == 50 and len(data.test) == 83 and data.validation == []
    assert Counter(s.defect_type for s in data.test) == {
        "good": 20, "broken_large": 20, "broken_small": 22, "contamination": 21,
    }  # fmt: skip
    assert all((s.label == 0) == (s.defect_type == "good") for s in data.test)
    assert all(s.mask_paths == () for s in data.test)  # no ground_truth folder: image-level only
    assert all(s.split == "train" and s.label == 0 for s in data.train)
    assert _is_sorted(data.train) and _is_sorted(data.test)


def test_bottle_via_parent_and_category(bottle_dir: Path) -> None:
    via_parent = open_dataset(bottle_dir.parent, category="bottle")
    assert via_parent == open_dataset(bottle_dir)


def test_bottle_protocols_are_reproducible(bottle_dir: Path) -> None:
    data = open_dataset(bottle_dir)
    kept, held = split_holdout(data.train, seed=0)
    assert (len(kept), len(held)) == (45, 5) and (kept, held) == split_holdout(data.train, seed=0)
    shots = sample_shots(data.train, 4, seed=10, mode="window")
    assert [Path(s.path).name for s in shots] == ["010.png", "011.png", "012.png", "013.png"]
    new, moved = contaminate(data, 10, seed=0)
    assert len(new.test) == 73 and not {s.path for s in moved} & {s.path for s in new.test}


def test_magnetic_tile_counts_and_masks(magnetic_tile_dir: Path) -> None:
    data = open_dataset(magnetic_tile_dir)
    assert data.has_masks and len(data.train) == 700 and len(data.test) == 644
    anomalies = [s for s in data.test if s.label == 1]
    assert len(anomalies) == 392 and all(len(s.mask_paths) == 1 for s in anomalies)
    assert all(s.mask_paths == () for s in data.test if s.label == 0)
    for sample in anomalies[::80]:  # a few, spread over the defect types
        hw = image_hw(sample)
        image = read_image(sample)
        assert image.shape[:2] == hw
        mask = read_mask(sample, hw)
        assert mask.shape == hw and mask.any() and not mask.all()


def test_magnetic_tile_grey_jpeg_has_identical_channels(magnetic_tile_dir: Path) -> None:
    sample = open_dataset(magnetic_tile_dir).train[0]
    image = read_image(sample)
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] == 3
    assert np.array_equal(image[:, :, 0], image[:, :, 1]) and np.array_equal(image[:, :, 1], image[:, :, 2])
    assert 0.0 <= image.min() < image.max() <= 1.0


@pytest.mark.parametrize("normal_class", ["3", 3, [3]])
def test_mnist_one_class(mnist_dir: Path, normal_class: object) -> None:
    data = open_dataset(mnist_dir, normal_class=normal_class)
    assert (data.name, data.category) == ("classfolder", "3")
    assert len(data.train) == 300 and all(s.defect_type == "3" and s.label == 0 for s in data.train)
    assert len(data.test) == 1000 and sum(s.label == 0 for s in data.test) == 100
    assert all((s.label == 0) == (s.defect_type == "3") for s in data.test)
    assert read_image(data.test[0]).shape == (28, 28, 3)


def test_mnist_several_normal_classes(mnist_dir: Path) -> None:
    data = open_dataset(mnist_dir, normal_class=["7", 1])
    assert data.category == "1+7" and len(data.train) == 600 and sum(s.label == 0 for s in data.test) == 200


@pytest.mark.parametrize("normal_class", [None, "cat", 10])
def test_mnist_bad_normal_class_lists_classes(mnist_dir: Path, normal_class: object) -> None:
    with pytest.raises(ConfigError, match="0, 1, 2, 3, 4, 5, 6, 7, 8, 9"):
        open_dataset(mnist_dir, normal_class=normal_class)
