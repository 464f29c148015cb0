"""DAGM 2007 texture classes.

```
<root>/ClassN/{Train,Test}/NNNN.PNG
<root>/ClassN/{Train,Test}/Label/NNNN_label.PNG
<root>/ClassN/{Train,Test}/Label/Labels.txt
```
Labels.txt: a header line (a count or version), then one row per image, whitespace-separated:
``index  flag  imagefile  0  maskfile`` with flag 1 = defective and maskfile "0" when there is none.
Anomaly-detection protocol (docs/PROTOCOLS.md §1): train on the defect-free ``Train`` images, test on all of ``Test``.
When Labels.txt is absent (or does not list an image), an image is defective iff ``Label/<stem>_label.*``
exists — the mask files are the ground truth either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from generalad.data._fs import (
    IMAGE_EXTENSIONS,
    absolute,
    child,
    files_by_lower_name,
    require_dir,
    require_images,
)
from generalad.data.sample import Dataset, Sample
from generalad.errors import InputError

DEFECT = "defect"
LABELS_FILE = "Labels.txt"


@dataclass(frozen=True)
class _Label:
    defective: bool
    mask_name: str | None  # file name inside Label/, None when the row gives none


def _parse_row(fields: list[str]) -> tuple[str, _Label] | None:
    """(image file name, label) for a valid row, None for anything that is not an image row."""
    if len(fields) < 3 or fields[1] not in ("0", "1") or Path(fields[2]).suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    mask = fields[4] if len(fields) >= 5 and fields[4] != "0" else None
    return fields[2], _Label(fields[1] == "1", mask)


def read_labels_txt(path: Path) -> dict[str, _Label]:
    """{lower-cased image name: label} from one Labels.txt; the first line may be a header."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:
        raise InputError(f"cannot read {path}: {' '.join(str(err).split())}") from err
    labels: dict[str, _Label] = {}
    rows = [(n, line.split()) for n, line in enumerate(lines, start=1) if line.strip()]
    for position, (line_no, fields) in enumerate(rows):
        parsed = _parse_row(fields)
        if parsed is None:
            if position == 0:
                continue  # header: "1", a count, or column names
            raise InputError(f"{path} line {line_no}: expected 'index flag image 0 mask', got {' '.join(fields)!r}")
        labels[parsed[0].lower()] = parsed[1]
    return labels


def _label_image(stem: str, masks: dict[str, Path]) -> Path | None:
    """``Label/<stem>_label.<ext>`` (any image extension, any case) if present."""
    for ext in sorted(IMAGE_EXTENSIONS):
        hit = masks.get(f"{stem}_label{ext}".lower())
        if hit is not None:
            return hit
    return None


def _mask_for(image: Path, label: _Label | None, label_dir: Path, masks: dict[str, Path]) -> Path | None:
    """Mask path of a defective image, None for a defect-free one."""
    by_stem = _label_image(image.stem, masks)
    if label is None:  # not listed: the presence of a label image decides
        return by_stem
    if not label.defective:
        return None
    hit = masks.get(label.mask_name.lower()) if label.mask_name else by_stem
    if hit is None:
        expected = label.mask_name or f"{image.stem}_label{image.suffix}"
        raise InputError(f"mask not found for {image}: expected {label_dir / expected}")
    return hit


def _read_half(folder: Path, category: str, split: str) -> list[Sample]:
    """All images of Train/ or Test/ with their labels and masks."""
    images = require_images(folder)
    label_dir = child(folder, "Label")
    masks = files_by_lower_name(label_dir)
    labels_txt = masks.get(LABELS_FILE.lower())
    labels = read_labels_txt(labels_txt) if labels_txt else {}
    samples = []
    for image in images:
        mask = _mask_for(image, labels.get(image.name.lower()), label_dir, masks)
        if mask is None:
            samples.append(Sample(str(image), 0, "good", (), category, split))
        else:
            samples.append(Sample(str(image), 1, DEFECT, (str(mask),), category, split))
    return samples


def read_dagm(root: str | Path) -> Dataset:
    """Read one ``ClassN`` folder."""
    root = require_dir(absolute(root))
    train_dir = require_dir(child(root, "Train"))
    test_dir = require_dir(child(root, "Test"))
    train = [s for s in _read_half(train_dir, root.name, "train") if s.label == 0]
    if not train:
        raise InputError(f"no defect-free training images in {train_dir}")
    return Dataset(
        name="dagm",
        category=root.name,
        root=str(root),
        train=train,
        test=_read_half(test_dir, root.name, "test"),
        validation=[],
        has_masks=child(train_dir, "Label").is_dir() or child(test_dir, "Label").is_dir(),
    )
