"""Test a fitted model on a labelled test set: metrics on raw scores + per-image records.

The one path from scores/maps to ``metrics.json`` and ``predictions.jsonl`` used by the CLI's ``test`` and
``benchmark`` and by the Python API.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generalad.data import Sample, image_hw, read_mask
from generalad.io import atomic_write_json
from generalad.methods.base import AnomalyModel
from generalad.metrics import PixelMetrics, image_metrics, resize_for_eval, threshold_metrics
from generalad.report import Prediction, write_predictions

EVAL_SIZE = (256, 256)  # field.md §3: maps bilinear, masks nearest, no crop


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def leak_free(model: AnomalyModel, test: Sequence[Sample]) -> tuple[list[Sample], list[str]]:
    """Drop test images the model saw in fit — training or calibration (contamination protocol, inreach.md §8)."""
    trained = set(model.train_files_) | set(model.calibration_files_)
    kept = [s for s in test if s.path not in trained]
    return kept, sorted(s.path for s in test if s.path in trained)


def _group_metrics(scores: np.ndarray, labels: np.ndarray, types: np.ndarray) -> dict[str, Any]:
    """MVTec LOCO: logical (good + logical) and structural (good + structural) AUROCs reported apart."""
    out: dict[str, Any] = {}
    for group in ("logical_anomalies", "structural_anomalies"):
        sel = (labels == 0) | (types == group)
        if (types == group).any():
            out[group.split("_")[0]] = image_metrics(scores[sel], labels[sel])
    return out


def evaluate(
    model: AnomalyModel,
    test: Sequence[Sample],
    *,
    out_dir: str | Path | None = None,
    has_masks: bool = False,
    eval_size: tuple[int, int] | None = EVAL_SIZE,
    progress: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``test``, compute metrics, and (when ``out_dir``) write metrics.json + predictions.jsonl/csv."""
    test, excluded = leak_free(model, test)
    pixel = PixelMetrics(eval_size) if has_masks else None
    desc = model.describe()
    records: list[Prediction] = []
    scores_all: list[np.ndarray] = []
    t0 = time.perf_counter()
    for chunk, scores, maps in model.infer_batches(test, progress=progress):
        scores_all.append(scores)
        if pixel is not None:
            _update_pixels(pixel, chunk, maps, eval_size)
        records.extend(_records(model, desc, chunk, scores))
    seconds = time.perf_counter() - t0
    scores = np.concatenate(scores_all) if scores_all else np.zeros(0)
    labels = np.array([s.label for s in test])
    metrics: dict[str, Any] = {
        **image_metrics(scores, labels),
        **(pixel.compute() if pixel is not None else {}),
        **desc,
        "n_test": len(test),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(test) / seconds, 3) if seconds > 0 else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "threshold": model.threshold_,
        "at_threshold": threshold_metrics(scores, labels, model.threshold_),
        "calibration": model.calibration_.to_dict(),
        "evaluation_resolution": list(eval_size) if eval_size else "native",
        "excluded_from_test_as_seen_in_fit": excluded,
        **model.protocol(),
        **_group_metrics(scores, labels, np.array([s.defect_type for s in test])),
        **(extra or {}),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_predictions(records, out_dir)
        atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


def _update_pixels(pixel: PixelMetrics, chunk: Sequence[Sample], maps: torch.Tensor, eval_size) -> None:
    """Maps bilinear and masks nearest to the evaluation size (None = each mask's native size)."""
    for sample, amap in zip(chunk, maps):
        mask = read_mask(sample, image_hw(sample))
        m, g = resize_for_eval(amap.numpy(), mask, tuple(mask.shape) if eval_size is None else eval_size)
        pixel.update(m[None], g[None])


def _records(model: AnomalyModel, desc: dict, chunk: Sequence[Sample], scores: np.ndarray) -> list[Prediction]:
    thr = model.threshold_
    norm = model.calibration_.normalise(scores)
    return [
        Prediction(
            path=s.path,
            category=s.category,
            split=s.split,
            gt_label=int(s.label) if s.label in (0, 1) else None,
            pred_score=float(sc),
            threshold=thr,
            pred_label=int(sc > thr),
            score_normalised=float(n),
            backbone=desc["backbone"],
            model=desc["model"],
            weights_sha256=desc["weights_sha256"],
            image_size=desc["image_size"],
        )
        for s, sc, n in zip(chunk, scores, norm)
    ]
