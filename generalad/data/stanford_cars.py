"""Stanford Cars, one-class protocol (docs/methods/generalad.md §10): train = class c's train images, test = ALL test images.

``<root>`` is torchvision's root (holding ``stanford_cars/``) or that folder::

    devkit/cars_meta.mat             class_names: 196 names; class index = position (0-based, as torchvision)
    devkit/cars_train_annos.mat      annotations: struct array with fields bbox_*, class (1-based), fname
    cars_test_annos_withlabels.mat   same fields for the test split (also accepted inside devkit/)
    cars_train/<fname>  cars_test/<fname>   (an extra cars_train/cars_train level is accepted)

A class-folder export (``train/<class>``, ``test/<class>``, optionally under ``car_data/car_data/``) is read
too; its ``names.csv`` (one official name a line, "/" written as "-" in folder names) fixes the class order,
otherwise indices follow the sorted folder names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from generalad.data._fs import absolute, require_dir, subdirs
from generalad.data.classfolder import NormalClass, read_class_dirs, resolve_normal_classes
from generalad.data.sample import Dataset, Sample, sort_samples
from generalad.errors import InputError

BASE_DIR = "stanford_cars"
META = Path("devkit") / "cars_meta.mat"
TRAIN_ANNOS = Path("devkit") / "cars_train_annos.mat"
TEST_ANNOS = "cars_test_annos_withlabels.mat"


def find_base(root: Path) -> Path | None:
    """The folder holding ``devkit/cars_meta.mat``: ``root`` or ``root/stanford_cars``."""
    for folder in (root, root / BASE_DIR):
        if (folder / META).is_file():
            return folder
    return None


def find_export(root: Path) -> Path | None:
    """The folder holding ``train/<class>`` and ``test/<class>`` of a class-folder export, if any."""
    for folder in (root, root / "car_data", root / "car_data" / "car_data"):
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return folder
    return None


def _loadmat(path: Path, key: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"Stanford Cars file not found: {path}")
    try:
        content: dict[str, Any] = scipy.io.loadmat(str(path), squeeze_me=True)
    except (OSError, ValueError, TypeError, NotImplementedError) as err:
        raise InputError(f"cannot read Stanford Cars file {path}: {' '.join(str(err).split())}") from err
    if key not in content:
        raise InputError(f"Stanford Cars file {path} has no {key!r} entry")
    return np.atleast_1d(content[key])  # squeeze_me turns a single entry into a 0-d array


def _annotations(path: Path, images: Path, n_classes: int) -> list[tuple[Path, int]]:
    """(image path, 0-based class) per annotation row."""
    rows = []
    try:
        for a in _loadmat(path, "annotations"):
            rows.append((images / str(a["fname"]), int(a["class"]) - 1))
    except (ValueError, IndexError, KeyError) as err:
        raise InputError(f"Stanford Cars file {path}: annotations need 'fname' and 'class' fields ({err})") from err
    if any(not 0 <= k < n_classes for _, k in rows):
        raise InputError(f"Stanford Cars file {path} has classes outside 1..{n_classes}")
    return rows


def _images_dir(base: Path, name: str) -> Path:
    folder = require_dir(base / name)
    return folder / name if (folder / name).is_dir() else folder


def _read_export(root: Path, folder: Path, normal_class: NormalClass | None) -> Dataset:
    folders = [d.name for d in subdirs(folder / "train")]
    names_csv = next((p for p in (root / "names.csv", folder / "names.csv") if p.is_file()), None)
    classes = None
    if names_csv is not None:
        names = [n.strip().replace("/", "-") for n in names_csv.read_text(encoding="utf-8").splitlines() if n.strip()]
        if sorted(names) != sorted(folders):
            raise InputError(f"{names_csv} does not name the class folders of {folder / 'train'}")
        classes = names
    return read_class_dirs(root, folder / "train", folder / "test", normal_class, name="stanford_cars", classes=classes)


def read_stanford_cars(root: str | Path, normal_class: NormalClass | None) -> Dataset:
    """Read Stanford Cars (torchvision layout or class-folder export) under the one-class protocol."""
    root = require_dir(absolute(root))
    base = find_base(root)
    if base is None:
        export = find_export(root)
        if export is None:
            raise InputError(f"Stanford Cars not found under {root}: expected {root / BASE_DIR / META}")
        return _read_export(root, export, normal_class)
    classes = [str(c) for c in _loadmat(base / META, "class_names").tolist()]
    normals = resolve_normal_classes(normal_class, classes, str(root))
    normal_ids = {classes.index(c) for c in normals}
    test_annos = base / TEST_ANNOS if (base / TEST_ANNOS).is_file() else base / "devkit" / TEST_ANNOS
    train_rows = _annotations(base / TRAIN_ANNOS, _images_dir(base, "cars_train"), len(classes))
    test_rows = _annotations(test_annos, _images_dir(base, "cars_test"), len(classes))
    category = "+".join(normals)
    train = [Sample(str(p), 0, classes[k], (), category, "train") for p, k in train_rows if k in normal_ids]
    test = [Sample(str(p), int(k not in normal_ids), classes[k], (), category, "test") for p, k in test_rows]
    if not train:
        raise InputError(f"no train images for {category} in {base / TRAIN_ANNOS}")
    if not test:
        raise InputError(f"no test images in {test_annos}")
    return Dataset("stanford_cars", category, str(base), sort_samples(train), sort_samples(test), [], False)
