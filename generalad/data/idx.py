"""MNIST and Fashion-MNIST from the original idx files (plain or .gz), parsed with numpy.

Looked for in ``<root>``, ``<root>/raw`` and torchvision's ``<root>/{MNIST,FashionMNIST}/raw``::

    train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
    t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]

Both datasets use the same file names; the reader is told which one (``layout="fmnist"``), and auto-detection
picks Fashion-MNIST when the path mentions "fashion".
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from generalad.data._fs import absolute, require_dir
from generalad.data.classfolder import NormalClass, array_samples, resolve_normal_classes
from generalad.data.sample import Dataset
from generalad.errors import ConfigError, InputError

MNIST_CLASSES = tuple(str(d) for d in range(10))
FMNIST_CLASSES = (
    "t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)  # fmt: skip
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SUBDIRS = ("", "raw", "MNIST/raw", "FashionMNIST/raw")
# idx type byte → numpy dtype (multi-byte values are big-endian)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _variants(base: str) -> tuple[str, ...]:
    # Some mirrors (e.g. Kaggle) write "train-images.idx3-ubyte"; accept both spellings, gzipped or not.
    dotted = base.replace("-idx", ".idx")
    return (base, f"{base}.gz", dotted, f"{dotted}.gz")


def find_idx_file(folder: Path, base: str) -> Path | None:
    for name in _variants(base):
        if (folder / name).is_file():
            return folder / name
    return None


def find_idx_dir(root: Path) -> Path | None:
    """The folder holding the MNIST-style training images under ``root``, if any."""
    for sub in _SUBDIRS:
        folder = root / sub if sub else root
        if find_idx_file(folder, FILES["train"][0]) is not None:
            return folder
    return None


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file: 2 zero bytes, a type byte, the rank, then big-endian uint32 dimensions."""
    try:
        opener = gzip.open if path.suffix.lower() == ".gz" else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as err:
        raise InputError(f"cannot read idx file {path}: {' '.join(str(err).split())}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise InputError(f"cannot read idx file {path}: bad magic number")
    rank = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=rank, offset=4) if len(raw) >= 4 + 4 * rank else None
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * rank
    if dims is None or len(raw) - offset != int(np.prod(dims, dtype=np.int64)) * dtype.itemsize:
        raise InputError(f"cannot read idx file {path}: size does not match its header (truncated?)")
    values = np.frombuffer(raw, dtype=dtype, offset=offset).reshape(tuple(int(d) for d in dims))
    return values.astype(dtype.newbyteorder("="))  # native byte order, and a copy we own


def _split(folder: Path, split: str, n_classes: int) -> tuple[Path, np.ndarray, np.ndarray]:
    found = [find_idx_file(folder, base) for base in FILES[split]]
    for base, path in zip(FILES[split], found, strict=True):
        if path is None:
            raise InputError(f"idx file not found: {folder / base}[.gz]")
    images_path, labels_path = found  # type: ignore[misc]
    images, labels = read_idx(images_path), read_idx(labels_path).astype(np.int64)
    if images.ndim != 3 or images.dtype != np.uint8 or labels.ndim != 1 or len(images) != len(labels):
        raise InputError(f"idx files {images_path} and {labels_path} do not form an (N, H, W) uint8 image set")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise InputError(f"idx file {labels_path} has labels outside 0..{n_classes - 1}")
    images.flags.writeable = False  # Sample.array views must not be edited in place
    return images_path, images, labels


def read_mnist(root: str | Path, normal_class: NormalClass | None, *, name: str = "mnist") -> Dataset:
    """Read MNIST (``name="mnist"``) or Fashion-MNIST (``name="fmnist"``) idx files."""
    if name not in ("mnist", "fmnist"):
        raise ConfigError(f"unknown idx dataset {name!r}: expected 'mnist' or 'fmnist'")
    root = require_dir(absolute(root))
    folder = find_idx_dir(root)
    if folder is None:
        raise InputError(f"idx file not found: {root / FILES['train'][0]}[.gz]")
    classes = list(MNIST_CLASSES if name == "mnist" else FMNIST_CLASSES)
    normals = resolve_normal_classes(normal_class, classes, str(root))
    train_path, train_images, train_labels = _split(folder, "train", len(classes))
    test_path, test_images, test_labels = _split(folder, "test", len(classes))
    return Dataset(
        name=name,
        category="+".join(normals),
        root=str(folder),
        train=array_samples(train_path, train_images, train_labels, classes, normals, "train"),
        test=array_samples(test_path, test_images, test_labels, classes, normals, "test"),
        validation=[],
        has_masks=False,
    )
