"""FGVC-Aircraft 2013b at variant level, the layout and splits torchvision uses (docs/methods/generalad.md §10).

``<root>`` may be torchvision's root (holding ``fgvc-aircraft-2013b/``), that folder, or its ``data/``::

    fgvc-aircraft-2013b/data/variants.txt                      100 variant names, one a line
    fgvc-aircraft-2013b/data/images_variant_{train,val,trainval,test}.txt   "<image id> <variant name>"
    fgvc-aircraft-2013b/data/images/<image id>.jpg

Class index = 0-based line in variants.txt (as torchvision). train = the ``train`` split of the normal class;
test = the ``test`` split restricted to ``test_classes`` plus the normal class — GeneralAD's parity protocol
(10 listed variants: the normal one and 9 anomalous ones), not the whole 100-class test split. Pass
``test_classes="all"`` for every variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from generalad.data._fs import absolute, require_dir
from generalad.data.classfolder import NormalClass, resolve_normal_classes
from generalad.data.sample import Dataset, Sample, sort_samples
from generalad.errors import ConfigError, InputError

ARCHIVE_DIR = "fgvc-aircraft-2013b"
VARIANTS_FILE = "variants.txt"
#: GeneralAD's listed variants (indices into variants.txt), docs/methods/generalad.md §10.
TEST_CLASSES: tuple[int, ...] = (91, 96, 59, 19, 37, 45, 90, 68, 74, 89)


def find_data_dir(root: Path) -> Path | None:
    """The folder holding ``variants.txt`` and ``images/`` under any of the accepted roots."""
    for folder in (root / ARCHIVE_DIR / "data", root / "data", root):
        if (folder / VARIANTS_FILE).is_file() and (folder / "images").is_dir():
            return folder
    return None


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise InputError(f"FGVC-Aircraft file not found: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _split(data: Path, split: str, class_ids: dict[str, int]) -> list[tuple[Path, int]]:
    """(image path, class index) rows of ``images_variant_<split>.txt``."""
    path = data / f"images_variant_{split}.txt"
    rows = []
    for line in _read_lines(path):
        image_id, _, variant = line.partition(" ")  # split once: names such as "Cessna 172" hold spaces
        if variant not in class_ids:
            raise InputError(f"{path}: unknown variant {variant!r} for image {image_id} (not in {VARIANTS_FILE})")
        rows.append((data / "images" / f"{image_id}.jpg", class_ids[variant]))
    return rows


def read_fgvc_aircraft(
    root: str | Path,
    normal_class: NormalClass | None,
    *,
    test_classes: Sequence[int | str] | str = TEST_CLASSES,
) -> Dataset:
    """Read FGVC-Aircraft: train = class c's ``train`` images; test = ``test`` images of the listed classes."""
    root = require_dir(absolute(root))
    data = find_data_dir(root)
    if data is None:
        expected = root / ARCHIVE_DIR / "data" / VARIANTS_FILE
        raise InputError(f"FGVC-Aircraft not found under {root}: expected {expected}")
    classes = _read_lines(data / VARIANTS_FILE)
    if len(set(classes)) != len(classes):
        raise InputError(f"{data / VARIANTS_FILE} lists a variant twice")
    class_ids = {c: i for i, c in enumerate(classes)}
    normals = resolve_normal_classes(normal_class, classes, str(root))
    if isinstance(test_classes, str) and test_classes != "all":
        raise ConfigError(f"test_classes must be 'all' or a list of variants, got {test_classes!r}")
    try:
        listed = classes if test_classes == "all" else resolve_normal_classes(list(test_classes), classes, str(root))
    except ConfigError as err:  # same resolution rules as normal_class; say which option was wrong
        raise ConfigError(str(err).replace("normal_class", "test_classes")) from None
    kept = {class_ids[c] for c in [*listed, *normals]}
    normal_ids = {class_ids[c] for c in normals}
    category = "+".join(normals)
    train = [
        Sample(str(p), 0, classes[k], (), category, "train")
        for p, k in _split(data, "train", class_ids)
        if k in normal_ids
    ]
    test = [
        Sample(str(p), int(k not in normal_ids), classes[k], (), category, "test")
        for p, k in _split(data, "test", class_ids)
        if k in kept
    ]
    for split, samples in (("train", train), ("test", test)):
        if not samples:
            raise InputError(f"no {split} images for {category} in {data / f'images_variant_{split}.txt'}")
    return Dataset("fgvc_aircraft", category, str(data), sort_samples(train), sort_samples(test), [], False)
