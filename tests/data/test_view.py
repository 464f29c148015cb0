"""View (Intel Image Classification): seg_train/seg_test, with and without the Kaggle archive's extra level."""

from __future__ import annotations

from pathlib import Path

import pytest

from generalad.data import open_dataset
from generalad.errors import ConfigError, InputError
from tests.data import synth

CLASSES = ("buildings", "forest", "glacier", "mountain", "sea", "street")


def make_view(root: Path, *, nested: bool, n_train: int = 3, n_test: int = 2) -> Path:
    for split, n in (("seg_train", n_train), ("seg_test", n_test)):
        base = root / split / split if nested else root / split
        for c in CLASSES:
            for i in (10, 2, 1)[:n]:  # created out of order; names sort as 1, 10, 2
                synth.write_image(base / c / f"{i}.jpg", synth.grey(6, 6), quality=95)
    synth.write_image(root / "seg_pred" / "seg_pred" / "5.jpg", synth.grey(6, 6))  # unlabelled: ignored
    return root


@pytest.mark.parametrize("nested", [False, True])
def test_view_one_class_protocol(tmp_path: Path, nested: bool) -> None:
    root = make_view(tmp_path / "intel", nested=nested)
    data = open_dataset(root, normal_class="glacier")
    assert (data.name, data.category, data.has_masks) == ("view", "glacier", False)
    assert [Path(s.path).name for s in data.train] == ["1.jpg", "10.jpg", "2.jpg"]
    assert all(s.defect_type == "glacier" and s.label == 0 and s.split == "train" for s in data.train)
    assert len(data.test) == 2 * len(CLASSES) and data.test == sorted(data.test, key=lambda s: s.path)
    assert {s.defect_type for s in data.test if s.label == 0} == {"glacier"}
    assert sum(s.label for s in data.test) == 2 * (len(CLASSES) - 1)
    assert not any("seg_pred" in s.path for s in data.train + data.test)
    assert open_dataset(root, normal_class=2).category == "glacier"  # index into sorted class names


def test_view_errors_name_the_folder(tmp_path: Path) -> None:
    root = make_view(tmp_path / "intel", nested=False)
    with pytest.raises(ConfigError, match="buildings, forest"):
        open_dataset(root, normal_class="desert")
    with pytest.raises(ConfigError, match="one-class dataset"):
        open_dataset(root)
    for p in (root / "seg_train" / "sea").iterdir():
        p.unlink()
    with pytest.raises(InputError, match=f"no images found in {root / 'seg_train' / 'sea'}"):
        open_dataset(root, layout="view", normal_class="sea")
