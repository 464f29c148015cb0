"""MVTec LOCO AD layout.

```
<root>/train/good/*   <root>/validation/good/*   (validation = normal only)
<root>/test/{good,logical_anomalies,structural_anomalies}/NNN.png
<root>/ground_truth/<type>/NNN/000.png, 001.png, …   (one file per defect; all are listed)
<root>/defects_config.json
```
Every mask file of an image goes into ``mask_paths``: ``read_mask`` ORs them for pixel metrics while
sPRO can still use them one by one (upstream read only the first). ``defect_type`` keeps logical and
structural anomalies apart so they can be reported separately and pooled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from generalad.data._fs import absolute, list_images, require_dir, require_images
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
        return LocoDefect(
            name=str(entry["defect_name"]),
            pixel_value=int(entry["pixel_value"]),
            saturation_threshold=float(entry["saturation_threshold"]),
            relative_saturation=bool(entry["relative_saturation"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"invalid defect entry in {path}: {entry!r:.80}") from err


def loco_defects_config(root: str | Path) -> dict[str, LocoDefect]:
    """Parse ``<root>/defects_config.json`` into {defect name: LocoDefect}; empty when the file is absent."""
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
    return {d.name: d for d in sorted(defects, key=lambda d: d.name)}


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
