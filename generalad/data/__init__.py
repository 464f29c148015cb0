"""Datasets → sorted lists of ``Sample``; robust image and mask decoding.

``open_dataset`` recognises the common anomaly-detection layouts (docs/PROTOCOLS.md §1), the original CIFAR / MNIST
downloads and the semantic / near-distribution sets of GeneralAD's protocols (View, FGVC-Aircraft, Stanford Cars,
Cats vs Dogs), and fails with one-line errors naming the folder when it cannot.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from generalad.data._fs import absolute, child, require_dir, subdirs
from generalad.data.cats_vs_dogs import is_cats_vs_dogs, read_cats_vs_dogs
from generalad.data.cifar import CIFAR10_DIR, CIFAR100_DIR, read_cifar10, read_cifar100
from generalad.data.classfolder import NormalClass, read_classfolder
from generalad.data.dagm import read_dagm
from generalad.data.fgvc_aircraft import find_data_dir, read_fgvc_aircraft
from generalad.data.idx import find_idx_dir, read_mnist
from generalad.data.images import content_hash, image_hw, read_image, read_mask, read_mask_values
from generalad.data.loco import LocoDefect, loco_defects_config, read_loco, read_loco_defects
from generalad.data.mvtec import read_mvtec
from generalad.data.mvtec3d import depth_from_xyz, read_depth, read_mvtec3d, read_xyz
from generalad.data.sample import Dataset, Sample, contaminate, sample_shots, split_holdout
from generalad.data.stanford_cars import find_base, read_stanford_cars
from generalad.data.view import is_view, read_view
from generalad.data.visa import SPLIT_CSV, SPLITS, read_visa
from generalad.errors import ConfigError, GeneralADError, InputError

__all__ = [
    "LAYOUTS",
    "READER_OPTIONS",
    "Dataset",
    "LocoDefect",
    "Sample",
    "contaminate",
    "content_hash",
    "depth_from_xyz",
    "image_hw",
    "loco_defects_config",
    "open_dataset",
    "read_depth",
    "read_image",
    "read_loco_defects",
    "read_mask",
    "read_mask_values",
    "read_mvtec3d",
    "read_xyz",
    "sample_shots",
    "split_holdout",
]

ONE_CLASS_LAYOUTS = (
    "classfolder", "cifar10", "cifar100", "mnist", "fmnist", "view", "fgvc_aircraft", "stanford_cars", "cats_vs_dogs",
)  # fmt: skip
LAYOUTS = ("auto", "mvtec", "mvtec3d", "loco", "visa", "dagm", *ONE_CLASS_LAYOUTS)
#: Reader-specific keyword options of ``open_dataset`` (anything else is an unknown option).
READER_OPTIONS: dict[str, tuple[str, ...]] = {
    "fgvc_aircraft": ("test_classes",),
    "cats_vs_dogs": ("split_seed", "train_fraction"),
}
_DAGM_CLASS = re.compile(r"class\d+", re.IGNORECASE)


def _is_dagm_class(folder: Path) -> bool:
    train, test = child(folder, "Train"), child(folder, "Test")
    if not (train.is_dir() and test.is_dir()):
        return False
    return bool(_DAGM_CLASS.fullmatch(folder.name)) or child(train, "Label").is_dir()


def _is_visa_category(folder: Path) -> bool:
    return child(child(folder, "Data"), "Images").is_dir()


def _detect_here(root: Path) -> str | None:
    """The layout of ``root`` itself, or None."""
    if (root / "train" / "good" / "rgb").is_dir() and (root / "train" / "good" / "xyz").is_dir():
        return "mvtec3d"  # before MVTec: an MVTec 3D-AD category also has train/good
    if (root / "train" / "good").is_dir():
        return "loco" if (root / "test" / "logical_anomalies").is_dir() else "mvtec"
    if find_data_dir(root) is not None:  # before VisA: fgvc-aircraft-2013b/data/images looks like Data/Images
        return "fgvc_aircraft"
    if (root / SPLIT_CSV).is_file() or _is_visa_category(root):
        return "visa"
    if _is_dagm_class(root) or any(_is_dagm_class(d) for d in subdirs(root)):
        return "dagm"
    if (root / "test_batch").is_file() or (root / CIFAR10_DIR).is_dir():
        return "cifar10"
    if ((root / "train").is_file() and (root / "test").is_file()) or (root / CIFAR100_DIR).is_dir():
        return "cifar100"
    if find_idx_dir(root) is not None:
        return "fmnist" if "fashion" in str(root).lower() else "mnist"
    if is_view(root):
        return "view"
    if find_base(root) is not None:
        return "stanford_cars"
    if is_cats_vs_dogs(root):
        return "cats_vs_dogs"
    if (root / "train").is_dir() and len(subdirs(root / "train")) >= 2:
        return "classfolder"
    return None


def _undetected(root: Path) -> GeneralADError:
    """The error for a folder whose layout is unknown."""
    # A folder of categories (e.g. the MVTec AD root): say which category names exist.
    categories = [d.name for d in subdirs(root) if _detect_here(d) in ("mvtec", "mvtec3d", "loco", "classfolder")]
    if categories:
        return ConfigError(f"{root} holds several categories: pass category= one of {', '.join(categories)}")
    return InputError(
        f"cannot detect the dataset layout of {root}: expected train/good, split_csv/1cls.csv, "
        "ClassN/{Train,Test}, CIFAR or MNIST files, seg_train/, fgvc-aircraft-2013b/, devkit/cars_meta.mat, "
        "PetImages/, or train/<class> folders"
    )


def _open_dagm(root: Path) -> Dataset:
    if _is_dagm_class(root):
        return read_dagm(root)
    classes = [d.name for d in subdirs(root) if _is_dagm_class(d)]
    raise ConfigError(f"DAGM root {root} needs a category: choose one of {', '.join(classes)}")


def _open_visa(root: Path, category: str | None, split: str) -> Dataset:
    # A raw category folder (VisA/<cat>/Data/...) reads its split from the VisA root's split_csv/.
    if _is_visa_category(root) and not (root / SPLIT_CSV).is_file():
        return read_visa(root.parent, root.name, split=split)
    return read_visa(root, category, split=split)


def _check_options(layout: str, split: str, kw: dict[str, Any]) -> None:
    known = {k for names in READER_OPTIONS.values() for k in names}
    if set(kw) - known:
        raise ConfigError(f"unknown open_dataset option(s): {', '.join(sorted(set(kw) - known))}")
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown dataset layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")
    if split != "official" and layout not in ("auto", "visa"):
        raise ConfigError(f"split {split!r} is only defined for VisA; use split='official' for {layout}")


def _reader(
    layout: str, category: str | None, split: str, normal_class: Any, kw: dict[str, Any]
) -> Callable[[Path], Dataset]:
    readers: dict[str, Callable[[Path], Dataset]] = {
        "mvtec": read_mvtec,
        "mvtec3d": read_mvtec3d,
        "loco": read_loco,
        "visa": lambda r: _open_visa(r, category, split),
        "dagm": _open_dagm,
        "classfolder": lambda r: read_classfolder(r, normal_class),
        "cifar10": lambda r: read_cifar10(r, normal_class),
        "cifar100": lambda r: read_cifar100(r, normal_class),
        "mnist": lambda r: read_mnist(r, normal_class, name="mnist"),
        "fmnist": lambda r: read_mnist(r, normal_class, name="fmnist"),
        "view": lambda r: read_view(r, normal_class),
        "fgvc_aircraft": lambda r: read_fgvc_aircraft(r, normal_class, **kw),
        "stanford_cars": lambda r: read_stanford_cars(r, normal_class),
        "cats_vs_dogs": lambda r: read_cats_vs_dogs(r, normal_class, **kw),
    }
    return readers[layout]


def open_dataset(
    root: str | Path,
    *,
    layout: str = "auto",
    category: str | None = None,
    normal_class: NormalClass | None = None,
    split: str = "official",
    **kw: Any,
) -> Dataset:
    """Open a dataset folder; ``layout="auto"`` detects the layout (see module docstring of each reader).

    ``category`` picks a sub-folder (MVTec/LOCO/VisA/DAGM category); ``normal_class`` (name, index or list)
    picks the normal class(es) of class-labelled data; ``split`` is "official" or, for VisA,
    "upstream_80_20" (GeneralAD parity). Reader options (``READER_OPTIONS``): FGVC-Aircraft ``test_classes``;
    Cats vs Dogs ``split_seed``, ``train_fraction``.
    """
    _check_options(layout, split, kw)
    root = require_dir(absolute(root))
    descended = bool(category) and (root / str(category)).is_dir()
    if descended:
        root = root / str(category)
    if not any(not p.name.startswith(".") for p in root.iterdir()):
        raise InputError(f"folder is empty: {root}")
    chosen = _detect_here(root) if layout == "auto" else layout
    if chosen is None:
        if category and not descended:
            raise InputError(f"category folder not found: {root / category}")
        raise _undetected(root)
    if split != "official" and chosen != "visa":
        raise ConfigError(f"split {split!r} is only defined for VisA; {root} is {chosen}")
    if normal_class is not None and chosen not in ONE_CLASS_LAYOUTS:
        raise ConfigError(f"normal_class applies to class-labelled datasets only; {root} is {chosen}")
    foreign = sorted(set(kw) - set(READER_OPTIONS.get(chosen, ())))
    if foreign:
        raise ConfigError(f"open_dataset option(s) {', '.join(foreign)} do not apply to {chosen} ({root})")
    if category and not descended and chosen != "visa" and root.name != category:
        raise InputError(f"category folder not found: {root / category}")
    return _reader(chosen, category, split, normal_class, kw)(root)
