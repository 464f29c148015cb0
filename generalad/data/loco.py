"""MVTec LOCO AD layout.

```
<root>/train/good/*   <root>/validation/good/*   (validation = normal only)
<root>/test/{good,logical_anomalies,structural_anomalies}/NNN.png
<root>/ground_truth/<type>/NNN/000.png, 001.png, …   (one file per defect; all are listed)
<root>/defects_config.json
```
Every mask file of an image goes into ``mask_paths``: ``read_mask`` ORs them for pixel metrics while
``read_loco_defects`` reads them one by one for sPRO (upstream read only the first). Each file is one
defect whose pixels carry its ``pixel_value``, the key of its ``defects_config.json`` entry (the saturation
rule); ``loco_defects_config`` is the one parser of that file. ``defect_type`` keeps logical and structural
anomalies apart so they can be reported separately and pooled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from generalad.data._fs import absolute, list_images, require_dir, require_images
from generalad.data.images import image_hw, read_mask_values
from generalad.data.mvtec import NORMAL, read_test_split
from generalad.data.sample import Dataset, Sample, sort_samples
from generalad.errors import InputError

LOGICAL = "logical_anomalies"
STRUCTURAL = "structural_anomalies"
DEFECTS_CONFIG = "defects_config.json"


@dataclass(frozen=True)
class LocoDefect:
    """One entry of ``defects_config.json`` (the sPRO saturation rule for one defect)."""

    name: str
    pixel_value: int  # value this defect's pixels carry in its mask file
    saturation_threshold: float
    relative_saturation: bool  # threshold is a fraction of the defect area (True) or a pixel count


def _parse_defect(entry: Any, path: Path) -> LocoDefect:
    try:
        defect = LocoDefect(
            name=str(entry["defect_name"]),
            pixel_value=int(entry["pixel_value"]),
            saturation_threshold=float(entry["saturation_threshold"]),
            relative_saturation=bool(entry["relative_saturation"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"invalid defect entry in {path}: {entry!r:.80}") from err
    threshold = defect.saturation_threshold
    if defect.pixel_value <= 0 or not (math.isfinite(threshold) and threshold > 0):
        raise InputError(f"invalid defect entry in {path}: needs pixel_value > 0, saturation_threshold > 0")
    return defect


def loco_defects_config(root: str | Path) -> dict[str, LocoDefect]:
    """Parse ``<root>/defects_config.json`` into {defect name: LocoDefect}; empty when the file is absent.

    Names and pixel values must be unique (a mask file's pixel value picks its entry)."""
    path = absolute(root) / DEFECTS_CONFIG
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot parse {path}: {' '.join(str(err).split())}") from err
    if isinstance(entries, dict):  # tolerate {"defects": [...]} wrappers
        entries = next((v for v in entries.values() if isinstance(v, list)), None)
    if not isinstance(entries, list):
        raise InputError(f"cannot parse {path}: expected a list of defect entries")
    defects = [_parse_defect(entry, path) for entry in entries]
    for key in ("name", "pixel_value"):
        seen = [getattr(d, key) for d in defects]
        twice = sorted({v for v in seen if seen.count(v) > 1}, key=str)
        if twice:
            raise InputError(f"invalid {path}: {key} {twice[0]!r} is used by two defect entries")
    return {d.name: d for d in sorted(defects, key=lambda d: d.name)}


def read_loco_defects(
    sample: Sample, defects: Mapping[str, LocoDefect], image_hw: tuple[int, int] | None = None
) -> tuple[np.ndarray, list[LocoDefect]]:
    """The defects of one test image, one per mask file: (bool (K, H, W) masks, their K config entries).

    A file's non-zero pixels are its defect; their one pixel value must be a ``pixel_value`` of
    ``defects`` (``loco_defects_config``). Files without a non-zero pixel hold no defect and are skipped;
    a good image gives K = 0. The OR over K equals ``read_mask(sample)``. ``image_hw`` as for ``read_mask``.
    """
    hw = image_hw if image_hw is not None else _image_hw(sample)
    by_value = {d.pixel_value: d for d in defects.values()}
    masks: list[np.ndarray] = []
    found: list[LocoDefect] = []
    for mask_path in sample.mask_paths:
        values = read_mask_values(mask_path, hw, image=sample.path)
        present = np.unique(values[values > 0])
        if present.size == 0:
            continue
        if present.size > 1:
            listed = ", ".join(f"{v:g}" for v in present[:4].tolist())
            raise InputError(f"mask {mask_path} holds several defect pixel values ({listed}): expected one per file")
        value = present[0].item()
        if value != int(value) or int(value) not in by_value:
            raise InputError(
                f"mask {mask_path} has pixel value {value:g}, which no entry of {DEFECTS_CONFIG} declares"
                + ("" if by_value else f" (no {DEFECTS_CONFIG} entries given)")
            )
        masks.append(values == present[0])
        found.append(by_value[int(value)])
    stack = np.stack(masks) if masks else np.zeros((0, *hw), dtype=bool)
    return stack, found


_image_hw = image_hw  # read_loco_defects' parameter shadows the function name, as in read_mask


def _mask_files(root: Path, defect: str, image: Path) -> tuple[str, ...]:
    folder = root / "ground_truth" / defect / image.stem
    masks = list_images(folder) if folder.is_dir() else []
    if not masks:
        raise InputError(f"mask not found for {image}: expected mask files in {folder}")
    return tuple(str(p) for p in masks)


def read_loco(root: str | Path) -> Dataset:
    """Read one MVTec LOCO category folder (``defects_config.json`` via ``loco_defects_config``)."""
    root = require_dir(absolute(root))
    category = root.name
    has_masks = (root / "ground_truth").is_dir()
    validation_dir = root / "validation" / NORMAL

    def normals(folder: Path, split: str) -> list[Sample]:
        return [Sample(str(p), 0, NORMAL, (), category, split) for p in require_images(folder)]

    return Dataset(
        name="loco",
        category=category,
        root=str(root),
        train=normals(root / "train" / NORMAL, "train"),
        test=sort_samples(read_test_split(root, category, partial(_mask_files, root) if has_masks else None)),
        validation=normals(validation_dir, "validation") if validation_dir.is_dir() else [],
        has_masks=has_masks,
    )
