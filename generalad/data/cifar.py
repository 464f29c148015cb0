"""CIFAR-10 / CIFAR-100 straight from the official python downloads (no conversion step).

``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` and
``cifar-100-python/{train, test, meta}`` (CIFAR-100 uses the 20 ``coarse_labels`` superclasses,
docs/methods/generalad.md §10). Each file is a pickled dict holding a (N, 3072) uint8 array, channel-major.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from generalad.data._fs import absolute, require_dir
from generalad.data.classfolder import NormalClass, array_samples, resolve_normal_classes
from generalad.data.sample import Dataset
from generalad.errors import InputError

try:  # numpy >= 2 keeps the pickle helpers in numpy._core; older releases in numpy.core
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR100_SUPERCLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)  # fmt: skip

# The only globals a pickled numpy array needs (whichever numpy wrote it: numpy.core or numpy._core).
_ALLOWED_GLOBALS: dict[str, Any] = {
    "_reconstruct": _multiarray._reconstruct,
    "scalar": _multiarray.scalar,
    "_frombuffer": _numeric._frombuffer,
    "ndarray": np.ndarray,
    "dtype": np.dtype,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """``pickle.load`` that can only rebuild numpy arrays, lists, dicts, numbers and strings.

    The CIFAR files are the trusted, published dataset files the user pointed us at, and pickle is their
    only official format, so loading them is acceptable; refusing every global except numpy's array
    constructors still keeps a tampered or mislabelled file from running code.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "numpy" and name in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[name]
        if (module, name) == ("_codecs", "encode"):  # how python 3 writes bytes at protocol 2 (re-pickled copies)
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR pickle as a dict with ``str`` keys (the python-2 files store ``bytes`` keys)."""
    if not path.is_file():
        raise InputError(f"CIFAR file not found: {path}")
    try:
        with path.open("rb") as handle:
            # encoding="bytes" is what the CIFAR authors prescribe for their python-2 pickles.
            data = _ArrayOnlyUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError) as err:
        raise InputError(f"cannot read CIFAR file {path}: {' '.join(str(err).split())}") from err
    if not isinstance(data, dict):
        raise InputError(f"cannot read CIFAR file {path}: expected a pickled dict")
    return {k.decode("latin-1") if isinstance(k, bytes) else str(k): v for k, v in data.items()}


def _field(batch: dict[str, Any], key: str, path: Path) -> Any:
    if key not in batch:
        raise InputError(f"CIFAR file {path} has no {key!r} entry")
    return batch[key]


def _images_and_labels(path: Path, label_key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = load_pickle(path)
    data = np.asarray(_field(batch, "data", path))
    labels = np.asarray(_field(batch, label_key, path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise InputError(f"CIFAR file {path} holds {data.dtype} {data.shape} data for {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise InputError(f"CIFAR file {path} has labels outside 0..{n_classes - 1}")
    # (N, 3072) channel-major → (N, 32, 32, 3) HWC, read-only so every Sample.array view stays intact.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    images.flags.writeable = False
    return images, labels


def _class_names(meta_path: Path, key: str, default: tuple[str, ...]) -> list[str]:
    if not meta_path.is_file():
        return list(default)
    raw_names = _field(load_pickle(meta_path), key, meta_path)
    names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in raw_names]
    if len(names) != len(default):
        raise InputError(f"CIFAR meta file {meta_path} lists {len(names)} classes, expected {len(default)}")
    return names


def _folder(root: Path, dirname: str, marker: str) -> Path:
    """``root`` itself when it holds ``marker``, else ``root/dirname`` (the archive's top folder)."""
    return root if (root / marker).is_file() else require_dir(root / dirname)


def _build(name: str, folder: Path, train_files: list[Path], test_file: Path, classes: list[str],
           label_key: str, normal_class: NormalClass | None) -> Dataset:
    normals = resolve_normal_classes(normal_class, classes, str(folder))
    train = []
    for path in train_files:
        images, labels = _images_and_labels(path, label_key, len(classes))
        train += array_samples(path, images, labels, classes, normals, "train")
    images, labels = _images_and_labels(test_file, label_key, len(classes))
    test = array_samples(test_file, images, labels, classes, normals, "test")
    return Dataset(name, "+".join(normals), str(folder), train, test, [], False)


def read_cifar10(root: str | Path, normal_class: NormalClass | None) -> Dataset:
    folder = _folder(require_dir(absolute(root)), CIFAR10_DIR, "test_batch")
    classes = _class_names(folder / "batches.meta", "label_names", CIFAR10_CLASSES)
    train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
    return _build("cifar10", folder, train_files, folder / "test_batch", classes, "labels", normal_class)


def read_cifar100(root: str | Path, normal_class: NormalClass | None) -> Dataset:
    folder = _folder(require_dir(absolute(root)), CIFAR100_DIR, "test")
    classes = _class_names(folder / "meta", "coarse_label_names", CIFAR100_SUPERCLASSES)
    return _build("cifar100", folder, [folder / "train"], folder / "test", classes, "coarse_labels", normal_class)
