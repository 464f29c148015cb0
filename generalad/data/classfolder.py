"""One-class protocol on class-labelled data (docs/methods/generalad.md §10, semantic one-vs-rest).

Folder layout::

    <root>/train/<class>/*      <root>/test/<class>/*

train = the normal class(es)' train images (label 0); test = every test image, label 0 when its class is
normal, else 1. ``defect_type`` is the class name (normal ones included) so results can be broken down
per class. ``normal_class`` is a folder name or an index into the sorted class list, or a list of those.
The CIFAR and MNIST readers (cifar.py, idx.py) reuse the helpers below.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from generalad.data._fs import absolute, list_images, require_dir, require_images, subdirs
from generalad.data.sample import Dataset, Sample, sort_samples
from generalad.errors import ConfigError, InputError

NormalClass = str | int | Sequence[str | int]


def _one(item: object, classes: Sequence[str], where: str) -> str:
    available = ", ".join(classes)
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        if 0 <= int(item) < len(classes):
            return classes[int(item)]
        raise ConfigError(f"normal_class index {item} out of range for {where}: {len(classes)} classes ({available})")
    if isinstance(item, str):
        if item in classes:
            return item
        # A digit string that is not a class name is an index (command lines pass strings).
        if item.isdigit() and int(item) < len(classes):
            return classes[int(item)]
    raise ConfigError(f"unknown normal_class {item!r} for {where}: available classes are {available}")


def resolve_normal_classes(normal_class: NormalClass | None, classes: Sequence[str], where: str) -> list[str]:
    """Normal class names (in class order) from a name, an index or a list of them; ConfigError otherwise."""
    if normal_class is None:
        raise ConfigError(f"{where} is a one-class dataset: set normal_class to one of {', '.join(classes)}")
    items = [normal_class] if isinstance(normal_class, (str, int, np.integer)) else list(normal_class)
    if not items:
        raise ConfigError(f"normal_class for {where} is an empty list")
    chosen = {_one(item, classes, where) for item in items}
    return [c for c in classes if c in chosen]


def array_samples(
    source: Path,
    images: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    normals: Sequence[str],
    split: str,
) -> list[Sample]:
    """Samples for in-memory images (``path = "<source>#<row>"``); train keeps only normal rows."""
    normal_ids = {classes.index(c) for c in normals}
    category = "+".join(normals)
    rows = range(len(labels)) if split == "test" else np.flatnonzero(np.isin(labels, list(normal_ids)))
    return [
        Sample(
            path=f"{source}#{int(i)}",
            label=int(int(labels[i]) not in normal_ids),
            defect_type=classes[int(labels[i])],
            category=category,
            split=split,
            array=images[i],
        )
        for i in rows
    ]


def read_class_dirs(
    root: Path,
    train_dir: Path,
    test_dir: Path,
    normal_class: NormalClass | None,
    *,
    name: str = "classfolder",
    classes: Sequence[str] | None = None,
) -> Dataset:
    """One-class dataset from ``train_dir/<class>`` and ``test_dir/<class>``.

    ``classes`` fixes the class order that indices refer to (default: sorted folder names); shared by the
    class-folder, View and Stanford-Cars-export readers so they cannot drift apart.
    """
    require_dir(train_dir)
    require_dir(test_dir)
    classes = list(classes) if classes is not None else [d.name for d in subdirs(train_dir)]
    if not classes:
        raise InputError(f"no class folders found in {train_dir}")
    normals = resolve_normal_classes(normal_class, classes, str(root))
    category = "+".join(normals)
    train = [Sample(str(p), 0, c, (), category, "train") for c in normals for p in require_images(train_dir / c)]
    test = [
        Sample(str(p), int(d.name not in normals), d.name, (), category, "test")
        for d in subdirs(test_dir)
        for p in list_images(d)
    ]
    if not test:
        raise InputError(f"no images found in {test_dir}")
    return Dataset(name, category, str(root), sort_samples(train), sort_samples(test), [], False)


def read_classfolder(root: str | Path, normal_class: NormalClass | None) -> Dataset:
    """Read ``train/<class>`` / ``test/<class>`` folders under the one-class protocol."""
    root = require_dir(absolute(root))
    return read_class_dirs(root, root / "train", root / "test", normal_class)
