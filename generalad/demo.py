"""Offline end-to-end demo on generated data with the bundled EfficientNet-Lite0 ImageNet weights.

``make_synthetic_category`` writes a small MVTec-layout category — a textured surface with a printed ring —
whose anomalies (scratches, stains, missing print) come with pixel masks. It exists so that the README's
first command works on a fresh machine without any download; it is not a benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def _surface(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = rng.uniform(0, 2 * np.pi, 2)
    weave = 0.5 + 0.12 * np.sin(2 * np.pi * 12 * xx + phase[0]) * np.sin(2 * np.pi * 12 * yy + phase[1])
    img = np.stack([weave * 0.9, weave * 0.8, weave * 0.6], axis=-1)
    ring = np.abs(np.hypot(xx - 0.5, yy - 0.5) - 0.28) < 0.03
    img[ring] = (0.15, 0.25, 0.55)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return img


def _defect(rng: np.random.Generator, img: np.ndarray, kind: str) -> np.ndarray:
    size = img.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx, cy = rng.uniform(0.25, 0.75, 2)
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        dist = np.abs((xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle))
        along = np.abs((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle))
        mask = (dist < 0.012) & (along < rng.uniform(0.1, 0.25))
        img[mask] = 0.95
    elif kind == "stain":
        mask = np.hypot((xx - cx) / rng.uniform(0.04, 0.09), (yy - cy) / rng.uniform(0.04, 0.09)) < 1
        img[mask] = img[mask] * 0.4 + np.array([0.35, 0.1, 0.05]) * 0.6
    else:  # missing print: part of the ring erased
        theta = np.arctan2(yy - 0.5, xx - 0.5)
        start = rng.uniform(-np.pi, np.pi)
        ring = np.abs(np.hypot(xx - 0.5, yy - 0.5) - 0.28) < 0.035
        mask = ring & (np.abs(np.angle(np.exp(1j * (theta - start)))) < 0.5)
        img[mask] = 0.5 * np.array([0.9, 0.8, 0.6])
    return mask


def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(path)


def make_synthetic_category(
    root: str | Path, *, n_train: int = 40, n_good: int = 10, n_per_defect: int = 6, size: int = 192, seed: int = 0
) -> Path:
    """Write ``root/train/good``, ``root/test/{good,scratch,stain,missing_print}``, ``root/ground_truth``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        _save(_surface(rng, size), root / "train" / "good" / f"{i:03d}.png")
    for i in range(n_good):
        _save(_surface(rng, size), root / "test" / "good" / f"{i:03d}.png")
    for kind in ("scratch", "stain", "missing_print"):
        for i in range(n_per_defect):
            img = _surface(rng, size)
            mask = _defect(rng, img, kind)
            _save(img, root / "test" / kind / f"{i:03d}.png")
            _save(mask.astype(np.float32)[..., None].repeat(3, -1), root / "ground_truth" / kind / f"{i:03d}_mask.png")
    return root


def run_demo(out: str | Path, *, model: str = "all", quiet: bool = False) -> dict[str, Any]:
    """Generate data, then fit, test and predict every method the registry puts in the demo, offline,
    on EfficientNet-Lite0 (GeneralAD on a CNN uses its feature-norm saliency fallback)."""
    from generalad.evaluate import evaluate
    from generalad.methods import get_method, list_methods, method_info
    from generalad.pipeline import fit_on, open_training
    from generalad.predict import predict_samples

    out = Path(out)
    data = make_synthetic_category(out / "data" / "synthetic_surface")
    run = open_training(data)
    names = [n for n in list_methods() if method_info(n).demo is not None] if model == "all" else [model]
    summary: dict[str, Any] = {"data": str(data), "backbone": "efficientnet_lite0 (ImageNet, bundled)"}
    for name in names:
        options = method_info(name).demo or {}  # small and quick on 2 CPU cores
        est = get_method(name)(**{"backbone": "efficientnet_lite0", **options})
        fit_on(est, run, progress=not quiet)
        est.save(out / name / "model")
        metrics = evaluate(est, run.dataset.test, out_dir=out / name / "test", has_masks=True, progress=not quiet)
        predict_samples(est, run.dataset.test[:4], out / name / "predict")
        summary[name] = {k: metrics.get(k) for k in ("image_auroc", "pixel_auroc", "pixel_aupro", "images_per_second",
                                                      "precision", "device")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
