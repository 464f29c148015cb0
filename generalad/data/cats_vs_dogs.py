"""Cats vs Dogs, one-class protocol with a seeded 80/20 split (docs/methods/generalad.md §10; qualitative in the paper).

Accepted downloads (``<root>`` may also be the folder holding ``PetImages/``)::

    Microsoft PetImages:  <root>/PetImages/Cat/*.jpg   <root>/PetImages/Dog/*.jpg
    Kaggle dogs-vs-cats:  <root>/train/cat.0.jpg … dog.12499.jpg     (test1/ is unlabelled and ignored)

Classes are "cat" (index 0) and "dog" (index 1) for both. Per class, the *sorted* file names are permuted by
``numpy.random.default_rng(split_seed)`` and the first ``train_fraction`` go to training — GeneralAD drew the
split before seeding, so it was not reproducible. train = the normal class's 80 %; test = the other 20 % of
both classes. The split is drawn over every listed file, then files that cannot be images (empty, or no
JPEG/PNG/GIF/BMP signature — PetImages ships a few) are dropped and counted in the log: that check reads 12
bytes per file, so it is cheap, and dropping after the split keeps every other file's side fixed. A file that
passes it but fails to decode raises ``InputError`` naming it when it is read (``read_image``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from generalad.data._fs import absolute, child, is_image, list_images, require_dir
from generalad.data.classfolder import NormalClass, resolve_normal_classes
from generalad.data.sample import Dataset, Sample, sort_samples
from generalad.errors import ConfigError, InputError

log = logging.getLogger(__name__)

CLASSES = ("cat", "dog")
_KAGGLE_NAME = re.compile(r"(cat|dog)\.\d+\.(jpe?g|png)", re.IGNORECASE)
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


def _pet_images(root: Path) -> Path | None:
    for folder in (child(root, "PetImages"), root):
        if all(child(folder, c).is_dir() for c in CLASSES):
            return folder
    return None


def _kaggle_train(root: Path) -> Path | None:
    folder = child(root, "train")
    if not folder.is_dir():
        return None
    # Stop at the first match: the listing is 25,000 files, detection must stay cheap.
    return folder if any(_KAGGLE_NAME.fullmatch(p.name) for p in folder.iterdir()) else None


def is_cats_vs_dogs(root: Path) -> bool:
    return _pet_images(root) is not None or _kaggle_train(root) is not None


def _files_by_class(root: Path) -> tuple[Path, dict[str, list[Path]]]:
    pets = _pet_images(root)
    if pets is not None:
        return pets, {c: list_images(child(pets, c)) for c in CLASSES}
    train = _kaggle_train(root)
    if train is None:
        raise InputError(f"Cats vs Dogs not found under {root}: expected PetImages/Cat/ or train/cat.0.jpg")
    by_class: dict[str, list[Path]] = {c: [] for c in CLASSES}
    for p in sorted(train.iterdir(), key=lambda q: q.name):
        if _KAGGLE_NAME.fullmatch(p.name) and is_image(p):
            by_class[p.name.split(".")[0].lower()].append(p)
    return train, by_class


def _looks_like_image(path: Path) -> bool:
    """Cheap pre-check (12 bytes): non-empty and starting with a JPEG, PNG, GIF or BMP signature."""
    try:
        with path.open("rb") as handle:
            head = handle.read(12)
    except OSError:
        return False
    return any(head.startswith(sig) for sig in _SIGNATURES)


def split_80_20(files: list[Path], train_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Seeded split of the sorted list: (train, test), each sorted."""
    ordered = sorted(files, key=lambda p: p.name)
    order = np.random.default_rng(seed).permutation(len(ordered))
    n_train = int(round(train_fraction * len(ordered)))
    chosen = set(order[:n_train].tolist())
    return [p for i, p in enumerate(ordered) if i in chosen], [p for i, p in enumerate(ordered) if i not in chosen]


def read_cats_vs_dogs(
    root: str | Path, normal_class: NormalClass | None, *, split_seed: int = 0, train_fraction: float = 0.8
) -> Dataset:
    """Read Cats vs Dogs (PetImages or Kaggle) with a reproducible per-class 80/20 split."""
    if not 0.0 < train_fraction < 1.0:
        raise ConfigError(f"train_fraction must be in (0, 1), got {train_fraction}")
    root = require_dir(absolute(root))
    folder, by_class = _files_by_class(root)
    normals = resolve_normal_classes(normal_class, CLASSES, str(root))
    category = "+".join(normals)
    chosen: list[tuple[Path, str, str]] = []  # (file, class, split)
    for c in CLASSES:
        if not by_class[c]:
            raise InputError(f"no {c} images found in {folder}")
        files_train, files_test = split_80_20(by_class[c], train_fraction, split_seed)
        chosen += [(p, c, "train") for p in files_train] if c in normals else []  # other class's 80 %: unused
        chosen += [(p, c, "test") for p in files_test]
    kept = [(p, c, split) for p, c, split in chosen if _looks_like_image(p)]  # only files in use are checked
    skipped = len(chosen) - len(kept)
    samples = [Sample(str(p), int(c not in normals), c, (), category, split) for p, c, split in kept]
    if skipped:
        log.warning("Cats vs Dogs: skipped %d file(s) under %s that are empty or not images", skipped, folder)
    train = sort_samples(s for s in samples if s.split == "train")
    test = sort_samples(s for s in samples if s.split == "test")
    if not train:
        raise InputError(f"no {category} training images left in {folder} (train_fraction={train_fraction})")
    return Dataset("cats_vs_dogs", category, str(folder), train, test, [], False)
