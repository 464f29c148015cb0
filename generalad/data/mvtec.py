"""MVTec AD layout (also MPDD, magnetic-tile defects, anomalib-converted VisA).

```
<root>/train/good/*            <root>/validation/good/*   (optional)
<root>/test/<type>/*           <type> "good" = normal, anything else anomalous
<root>/ground_truth/<type>/<stem>_mask.png   (or <stem>.png as written by anomalib's VisA converter)
```
Mask paths are built from the root and the image's stem, never by editing the image path string
(upstream replaced every "test" in the path, which breaks on roots like /data/test_sets/...).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from generalad.data._fs import (
    IMAGE_EXTENSIONS,
    absolute,
    files_by_lower_name,
    list_images,
    require_dir,
    require_images,
    subdirs,
)
from generalad.data.sample import Dataset, Sample, sort_samples
from generalad.errors import InputError

NORMAL = "good"
# ".png" first: when several candidates exist the canonical MVTec mask wins.
_MASK_EXTENSIONS = (".png", *sorted(IMAGE_EXTENSIONS - {".png"}))


def find_mask(index: dict[str, Path], folder: Path, image: Path) -> Path:
    """The mask of ``image`` in ``folder`` (``index`` = files_by_lower_name(folder)), or InputError."""
    for stem in (f"{image.stem}_mask", image.stem):
        for ext in _MASK_EXTENSIONS:
            hit = index.get(f"{stem}{ext}".lower())
            if hit is not None:
                return hit
    raise InputError(f"mask not found for {image}: expected {folder / (image.stem + '_mask.png')}")


def _normal_samples(folder: Path, category: str, split: str) -> list[Sample]:
    return [Sample(str(p), 0, NORMAL, (), category, split) for p in require_images(folder)]


MaskFinder = Callable[[str, Path], tuple[str, ...]]


def read_test_split(root: Path, category: str, masks_for: MaskFinder | None) -> list[Sample]:
    """Every image under ``test/<type>/``; anomalous ones get ``masks_for(type, image)`` (None: image level)."""
    test_dir = require_dir(root / "test")
    samples: list[Sample] = []
    for type_dir in subdirs(test_dir):
        defect = type_dir.name
        label = 0 if defect.lower() == NORMAL else 1
        for image in list_images(type_dir):
            masks = masks_for(defect, image) if label and masks_for is not None else ()
            samples.append(Sample(str(image), label, defect, masks, category, "test"))
    if not samples:
        raise InputError(f"no images found in {test_dir}")
    return samples


def mvtec_masks(root: Path) -> MaskFinder:
    """One mask per anomalous image. Without any ground_truth folder the dataset is image-level only; with
    one, every anomalous image must have its mask (a missing one is a broken download, not "no defect")."""
    indexes: dict[str, dict[str, Path]] = {}

    def masks_for(defect: str, image: Path) -> tuple[str, ...]:
        folder = root / "ground_truth" / defect
        if defect not in indexes:
            indexes[defect] = files_by_lower_name(folder)
        return (str(find_mask(indexes[defect], folder, image)),)

    return masks_for


def read_mvtec(root: str | Path, *, name: str = "mvtec") -> Dataset:
    """Read one category folder in MVTec layout; ``name`` records the dataset family (mvtec, visa)."""
    root = require_dir(absolute(root))
    category = root.name
    has_masks = (root / "ground_truth").is_dir()
    validation_dir = root / "validation" / NORMAL
    return Dataset(
        name=name,
        category=category,
        root=str(root),
        train=_normal_samples(root / "train" / NORMAL, category, "train"),
        test=sort_samples(read_test_split(root, category, mvtec_masks(root) if has_masks else None)),  # one path order
        validation=_normal_samples(validation_dir, category, "validation") if validation_dir.is_dir() else [],
        has_masks=has_masks,
    )
