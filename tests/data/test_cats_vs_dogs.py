"""Cats vs Dogs: PetImages and Kaggle layouts, the seeded 80/20 split on sorted names, broken files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from generalad.data import open_dataset, read_image
from generalad.errors import ConfigError, InputError
from tests.data import synth


def make_pet_images(root: Path, n: int = 10, order: int = 1) -> Path:
    """PetImages/{Cat,Dog}/<i>.jpg, created in ``order`` (1 or -1) so listing order cannot matter."""
    for c in ("Cat", "Dog"):
        for i in list(range(n))[::order]:
            synth.write_image(root / "PetImages" / c / f"{i}.jpg", synth.grey(6, 6), quality=95)
        (root / "PetImages" / c / "Thumbs.db").write_bytes(b"\0" * 8)  # shipped with the archive
    return root


def _rel(samples: list, root: Path) -> list[str]:
    return [Path(s.path).relative_to(root).as_posix() for s in samples]


def test_split_is_80_20_per_class_and_reproducible(tmp_path: Path) -> None:
    a = make_pet_images(tmp_path / "a", order=1)
    b = make_pet_images(tmp_path / "b", order=-1)
    data = open_dataset(a, normal_class="cat")
    assert (data.name, data.category) == ("cats_vs_dogs", "cat")
    assert len(data.train) == 8 and all(s.defect_type == "cat" and s.label == 0 for s in data.train)
    assert sorted((s.defect_type, s.label) for s in data.test) == [("cat", 0)] * 2 + [("dog", 1)] * 2
    assert not {s.path for s in data.train} & {s.path for s in data.test}
    again = open_dataset(b, normal_class=0)
    assert _rel(again.train, b) == _rel(data.train, a) and _rel(again.test, b) == _rel(data.test, a)
    dog = open_dataset(a, normal_class="dog")
    assert {s.path for s in dog.test} == {s.path for s in data.test}  # same test images either way
    assert [s.label for s in dog.test if s.defect_type == "cat"] == [1, 1]
    other = open_dataset(a, normal_class="cat", split_seed=1)
    assert {s.path for s in other.train} != {s.path for s in data.train}
    half = open_dataset(a, normal_class="cat", train_fraction=0.5)
    assert (len(half.train), len(half.test)) == (5, 10)


def test_kaggle_layout(tmp_path: Path) -> None:
    root = tmp_path / "kaggle"
    for c in ("cat", "dog"):
        for i in range(5):
            synth.write_image(root / "train" / f"{c}.{i}.jpg", synth.grey(6, 6))
    synth.write_image(root / "test1" / "1.jpg", synth.grey(6, 6))  # unlabelled: ignored
    data = open_dataset(root, normal_class="dog")
    assert data.name == "cats_vs_dogs" and len(data.train) == 4
    assert all(Path(s.path).name.startswith("dog.") for s in data.train)
    assert sorted(s.defect_type for s in data.test) == ["cat", "dog"]


def test_empty_and_non_image_files_skipped_truncated_fails_at_read(tmp_path: Path, caplog) -> None:
    root = make_pet_images(tmp_path / "pets", n=5)
    (root / "PetImages" / "Cat" / "666.jpg").write_bytes(b"")  # the archive's empty files
    (root / "PetImages" / "Cat" / "667.jpg").write_text("not a picture")
    with caplog.at_level(logging.WARNING, logger="generalad.data.cats_vs_dogs"):
        data = open_dataset(root, normal_class="cat")  # every cat file is in use (train or test)
    assert all(Path(s.path).name not in ("666.jpg", "667.jpg") for s in data.train + data.test)
    assert "skipped 2 file(s)" in caplog.text and len(data.train) + len(data.test) == 5 + 1  # 5 cats, 1 dog
    good = root / "PetImages" / "Cat" / "0.jpg"
    good.write_bytes(good.read_bytes()[:40])  # JPEG signature, truncated body: passes the cheap check
    data = open_dataset(root, normal_class="cat")
    broken = [s for s in data.train + data.test if s.path == str(good)]
    with pytest.raises(InputError, match=f"cannot decode image {good}"):
        read_image(broken[0])


def test_errors(tmp_path: Path) -> None:
    root = make_pet_images(tmp_path / "pets", n=3)
    with pytest.raises(ConfigError, match="unknown normal_class 'bird'"):
        open_dataset(root, normal_class="bird")
    with pytest.raises(ConfigError, match="train_fraction must be in"):
        open_dataset(root, normal_class="cat", train_fraction=1.0)
    with pytest.raises(InputError, match="no cat training images"):
        open_dataset(root, normal_class="cat", train_fraction=0.1)  # rounds to 0 of 3
    with pytest.raises(ConfigError, match="unknown open_dataset option"):
        open_dataset(root, normal_class="cat", seed=3)
    for p in (root / "PetImages" / "Dog").glob("*.jpg"):
        p.unlink()
    with pytest.raises(InputError, match="no dog images found"):
        open_dataset(root, normal_class="cat")
