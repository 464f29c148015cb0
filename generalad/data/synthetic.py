"""Synthetic defects on normal images, for validation signals that use training data only.

``pasted_defects(normals, out_dir, seed)`` writes, for each normal image, a copy with one rectangle cut from
*another* normal image (a different place, a random quarter turn, a brightness change) pasted at a random
place, plus its mask — a CutPaste-style local anomaly (Li et al., CVPR 2021). Together with the untouched
normals it makes a labelled validation set built from training normals only: model choices such as ARD's
attention placement are compared on it, never on test images (docs/methods/ard.md §6).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from generalad.data.images import read_image
from generalad.data.sample import Sample, sort_samples
from generalad.errors import InputError


def _box(rng: np.random.Generator, h: int, w: int, area: tuple[float, float]) -> tuple[int, int]:
    side = np.sqrt(rng.uniform(*area) * h * w)
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    bh = int(np.clip(round(side * np.sqrt(aspect)), 2, h - 1))
    bw = int(np.clip(round(side / np.sqrt(aspect)), 2, w - 1))
    return bh, bw


def paste_one(target: np.ndarray, source: np.ndarray, rng: np.random.Generator,
              area: tuple[float, float] = (0.005, 0.03)) -> tuple[np.ndarray, np.ndarray]:
    """(defective copy of ``target`` float32 (H, W, 3), bool mask (H, W)); ``area``: patch / image area."""
    h, w = target.shape[:2]
    bh, bw = _box(rng, h, w, area)
    turns = int(rng.integers(0, 4))
    sh, sw = (bw, bh) if turns % 2 else (bh, bw)  # the source crop, before its quarter turns
    src = source if source.shape[:2] == target.shape[:2] else np.asarray(
        Image.fromarray((source * 255).astype(np.uint8)).resize((w, h)), dtype=np.float32) / 255.0
    y0, x0 = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
    patch = np.rot90(src[y0 : y0 + sh, x0 : x0 + sw], turns) * rng.uniform(0.6, 1.4)
    y1, x1 = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    out = target.copy()
    out[y1 : y1 + bh, x1 : x1 + bw] = np.clip(patch, 0.0, 1.0)
    mask = np.zeros((h, w), dtype=bool)
    mask[y1 : y1 + bh, x1 : x1 + bw] = True
    return out, mask


def pasted_defects(normals: Sequence[Sample], out_dir: str | Path, *, seed: int = 0,
                   area: tuple[float, float] = (0.005, 0.03)) -> list[Sample]:
    """One defective copy per normal image (PNG + mask PNG under ``out_dir``), label 1, sorted like the input."""
    normals = sort_samples(normals)
    if len(normals) < 2:
        raise InputError("synthetic defects need at least 2 normal images (the patch comes from another one)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out: list[Sample] = []
    for i, sample in enumerate(normals):
        donor = normals[(i + 1 + int(rng.integers(0, len(normals) - 1))) % len(normals)]
        image, mask = paste_one(read_image(sample), read_image(donor), rng, area)
        stem = f"{i:05d}_{Path(sample.path).stem}"
        Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(out_dir / f"{stem}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(out_dir / f"{stem}_mask.png")
        out.append(Sample(path=str(out_dir / f"{stem}.png"), label=1, defect_type="pasted",
                          mask_paths=(str(out_dir / f"{stem}_mask.png"),), category=sample.category, split="validation"))
    return out
