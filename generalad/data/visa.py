"""VisA: the raw download with its official split csv, or anomalib's converted MVTec-like tree.

Raw layout (paths in the csv are relative to the VisA root)::

    <root>/<cat>/Data/Images/{Normal,Anomaly}/*.JPG
    <root>/<cat>/Data/Masks/Anomaly/*.png         # small integer labels; read_mask binarises > 0
    <root>/split_csv/1cls.csv                     # object, split, label, image, mask

``split="official"`` follows 1cls.csv (e.g. candle: 900 train normals, 100 + 100 test).
``split="upstream_80_20"`` is GeneralAD's parity split (docs/methods/generalad.md §10): the first 80 % of the *sorted*
Normal listing trains, the other 20 % plus every anomaly is the test set.
"""

from __future__ import annotations

import csv
from pathlib import Path

from generalad.data._fs import (
    absolute,
    child,
    files_by_lower_name,
    list_images,
    require_dir,
    require_images,
    subdirs,
)
from generalad.data.mvtec import find_mask, read_mvtec
from generalad.data.sample import Dataset, Sample, sort_samples
from generalad.errors import ConfigError, InputError

SPLIT_CSV = Path("split_csv") / "1cls.csv"
SPLITS = ("official", "upstream_80_20")
_COLUMNS = ("object", "split", "label", "image", "mask")
_LABELS = {"normal": 0, "anomaly": 1}
ANOMALY_TYPE = "bad"  # the name anomalib's converter gives the anomalous folder: both layouts agree


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{csv_path} lacks the column(s) {', '.join(missing)}")
            return [{k: (row.get(k) or "").strip() for k in _COLUMNS} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"cannot read {csv_path}: {' '.join(str(err).split())}") from err


def visa_categories(root: str | Path) -> list[str]:
    """Categories named in ``<root>/split_csv/1cls.csv`` (else the folders holding Data/), sorted."""
    root = absolute(root)
    if (root / SPLIT_CSV).is_file():
        return sorted({row["object"] for row in _read_rows(root / SPLIT_CSV) if row["object"]})
    return [d.name for d in subdirs(root) if child(d, "Data").is_dir()]


def _existing(root: Path, relative: str, csv_path: Path, line: int) -> Path:
    path = root / relative
    if not path.is_file():
        raise InputError(f"{csv_path} line {line}: file not found: {path}")
    return path


def _official(root: Path, category: str) -> tuple[list[Sample], list[Sample]]:
    csv_path = root / SPLIT_CSV
    rows = _read_rows(csv_path)
    train: list[Sample] = []
    test: list[Sample] = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        if row["object"] != category:
            continue
        label = _LABELS.get(row["label"].lower())
        if label is None or row["split"] not in ("train", "test"):
            raise InputError(f"{csv_path} line {line}: bad split/label {row['split']!r}/{row['label']!r}")
        if label == 1 and row["split"] == "train":
            raise InputError(f"{csv_path} line {line}: anomalous image in the one-class train split")
        image = _existing(root, row["image"], csv_path, line)
        masks: tuple[str, ...] = ()
        if label == 1:
            if not row["mask"]:
                raise InputError(f"{csv_path} line {line}: anomalous image {image} has no mask entry")
            masks = (str(_existing(root, row["mask"], csv_path, line)),)
        sample = Sample(str(image), label, ANOMALY_TYPE if label else "good", masks, category, row["split"])
        (train if row["split"] == "train" else test).append(sample)
    if not train and not test:
        choices = ", ".join(visa_categories(root))
        raise ConfigError(f"unknown VisA category {category!r} in {csv_path}: choose one of {choices}")
    return train, test


def _upstream_80_20(root: Path, category: str) -> tuple[list[Sample], list[Sample]]:
    data = child(child(require_dir(root / category), "Data"), "Images")
    normals = require_images(child(data, "Normal"))
    n_train = len(normals) * 8 // 10  # integer arithmetic: no float rounding surprises
    mask_dir = child(child(data.parent, "Masks"), "Anomaly")
    index = files_by_lower_name(mask_dir)
    train = [Sample(str(p), 0, "good", (), category, "train") for p in normals[:n_train]]
    test = [Sample(str(p), 0, "good", (), category, "test") for p in normals[n_train:]]
    for image in list_images(child(data, "Anomaly")):
        mask = str(find_mask(index, mask_dir, image))
        test.append(Sample(str(image), 1, ANOMALY_TYPE, (mask,), category, "test"))
    return train, test


def read_visa(root: str | Path, category: str | None, *, split: str = "official") -> Dataset:
    """Read one VisA category from the raw download (``root`` holds split_csv/) or a converted tree."""
    root = require_dir(absolute(root))
    if split not in SPLITS:
        raise ConfigError(f"unknown VisA split {split!r}: choose one of {', '.join(SPLITS)}")
    for converted in (root, root / category) if category else (root,):
        if (converted / "train" / "good").is_dir():
            if split != "official":
                raise ConfigError(f"split {split!r} needs the raw VisA layout, not the converted tree {converted}")
            return read_mvtec(converted, name="visa")
    if not category:
        choices = ", ".join(visa_categories(root)) or "(none found)"
        raise ConfigError(f"VisA at {root} needs a category: choose one of {choices}")
    if split == "official" and not (root / SPLIT_CSV).is_file():
        raise InputError(f"VisA split file not found: {root / SPLIT_CSV}")
    train, test = _official(root, category) if split == "official" else _upstream_80_20(root, category)
    if not train:
        raise InputError(f"no training images for VisA category {category!r} under {root}")
    return Dataset(
        name="visa",
        category=category,
        root=str(root / category),
        train=sort_samples(train),
        test=sort_samples(test),
        validation=[],
        has_masks=True,
    )
