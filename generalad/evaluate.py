"""Test a fitted model on a labelled test set: metrics on raw scores + per-image records.

The one path from scores/maps to ``metrics.json`` and ``predictions.jsonl`` used by the CLI's ``test`` and
``benchmark`` and by the Python API.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generalad.data import LocoDefect, Sample, image_hw, read_loco_defects, read_mask
from generalad.data.loco import LOGICAL, STRUCTURAL
from generalad.io import atomic_write_json
from generalad.methods.base import AnomalyModel
from generalad.metrics import (
    PixelMetrics,
    PixelMetricsByType,
    SPROMetrics,
    image_metrics,
    resize_for_eval,
    resize_masks,
    saturation_area,
    threshold_metrics,
)
from generalad.report import Prediction, write_predictions
from generalad.report_html.evidence import GALLERY_K, WorstCases, per_defect_type, write_evidence

EVAL_SIZE = (256, 256)  # docs/PROTOCOLS.md §3: maps bilinear, masks nearest, no crop
LOCO_GROUPS = (LOGICAL, STRUCTURAL)  # reported as metrics["logical"], metrics["structural"]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def leak_free(model: AnomalyModel, test: Sequence[Sample]) -> tuple[list[Sample], list[str]]:
    """Drop test images the model saw in fit — training or calibration (contamination protocol, docs/PROTOCOLS.md §2)."""
    trained = set(model.train_files_) | set(model.calibration_files_)
    kept = [s for s in test if s.path not in trained]
    return kept, sorted(s.path for s in test if s.path in trained)


def _group_metrics(scores: np.ndarray, labels: np.ndarray, types: np.ndarray) -> dict[str, Any]:
    """MVTec LOCO: logical (good + logical) and structural (good + structural) AUROCs reported apart."""
    out: dict[str, Any] = {}
    for group in LOCO_GROUPS:
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
    defects: Mapping[str, LocoDefect] | None = None,
    gallery: int = GALLERY_K,
) -> dict[str, Any]:
    """Score ``test``, compute metrics, and (when ``out_dir``) write metrics.json + predictions.jsonl/csv.

    With ``out_dir`` it also writes what the HTML report needs and cannot recompute from the scores
    (``generalad.report_html.evidence``): ``inspect.json`` (the PRO curve up to the AUPRO FPR limit) and
    overlays of the ``gallery`` worst false positives / false negatives at the calibrated threshold.

    ``has_masks``: pixel metrics (AUROC, AP, F1-max, AUPRO) at ``eval_size`` (None = native). ``defects``:
    the MVTec LOCO ``defects_config.json`` entries (``generalad.data.loco_defects_config(root)``); with
    ``has_masks`` it adds AUsPRO at every FPR limit of ``spro.DEFAULT_LIMITS`` (``pixel_auspro@<limit>``,
    pooled and per LOCO group), each mask file one defect (see ``LocoSPRO``). None or empty: no sPRO.
    """
    test, excluded = leak_free(model, test)
    pixel = PixelMetrics(eval_size) if has_masks else None
    by_type = PixelMetricsByType() if has_masks else None
    spro = LocoSPRO(defects) if has_masks and defects else None
    desc = model.describe()
    records: list[Prediction] = []
    scores_all: list[np.ndarray] = []
    worst = WorstCases(gallery if out_dir is not None else 0)
    t0 = time.perf_counter()
    for chunk, scores, maps in model.infer_batches(test, progress=progress):
        scores_all.append(scores)
        worst.update(chunk, scores, maps)
        if pixel is not None:
            _update_pixels(pixel, spro, chunk, maps, eval_size, by_type)
        records.extend(_records(model, desc, chunk, scores))
    seconds = time.perf_counter() - t0
    scores = np.concatenate(scores_all) if scores_all else np.zeros(0)
    labels = np.array([s.label for s in test])
    types = [s.defect_type for s in test]
    groups = _group_metrics(scores, labels, np.array(types))
    if spro is not None:
        for group, values in spro.group_metrics().items():
            if group in groups:
                groups[group].update(values)
    metrics: dict[str, Any] = {
        **image_metrics(scores, labels),
        **(pixel.compute() if pixel is not None else {}),
        **(spro.compute() if spro is not None else {}),
        **desc,
        "n_test": len(test),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(test) / seconds, 3) if seconds > 0 else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "threshold": model.threshold_,
        "at_threshold": threshold_metrics(scores, labels, model.threshold_),
        "per_defect_type": _with_pixel_metrics(per_defect_type(scores, labels, types, model.threshold_), by_type),
        **({"per_defect_type_pixels": by_type.describe()} if by_type is not None else {}),
        "calibration": model.calibration_.to_dict(),
        "evaluation_resolution": list(eval_size) if eval_size else "native",
        **({"spro": spro.describe()} if spro is not None else {}),
        "excluded_from_test_as_seen_in_fit": excluded,
        **model.protocol(),
        **groups,
        **(extra or {}),
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_predictions(records, out_dir)
        write_evidence(out_dir, model, pixel=pixel, worst=worst)
        atomic_write_json(out_dir / "metrics.json", metrics)
    return metrics


class LocoSPRO:
    """Streaming AUsPRO over an MVTec LOCO test set: pooled, and per group (good + logical, good + structural).

    Per image: the map at the evaluation size (bilinear), each mask file of the image one defect resized on
    its own (nearest, so touching defects stay apart), its saturation area from its config entry: relative
    rules use the defect area at the evaluation size, absolute pixel counts are scaled by ``area_scale`` =
    evaluation pixels / original pixels (``spro.saturation_area``). Good images give the FPR; an anomalous
    image whose mask files are all empty adds nothing (it is neither a defect nor a normal image). The
    good pixels are stored once per curve (pooled + 2 groups): ~12 bytes per good pixel at 256 x 256.
    """

    def __init__(self, defects: Mapping[str, LocoDefect]) -> None:
        self.defects = defects
        self.pooled = SPROMetrics()
        self.groups = {g: SPROMetrics() for g in LOCO_GROUPS}

    def update(
        self, sample: Sample, amap: np.ndarray, masks: np.ndarray, entries: Sequence[LocoDefect], original_hw
    ) -> None:
        """Add one image: ``amap`` (h, w) at the evaluation size, ``masks`` (K, H, W) at ``original_hw``."""
        if sample.label == 0:
            for sp in (self.pooled, *self.groups.values()):
                sp.update(amap)
            return
        if not entries:
            return
        small = resize_masks(masks, amap.shape)
        area_scale = amap.size / float(original_hw[0] * original_hw[1])
        sats = [
            saturation_area(int(area), d.saturation_threshold, d.relative_saturation, area_scale=area_scale)
            for area, d in zip(small.sum(axis=(1, 2)), entries)
        ]
        targets = [self.pooled] + ([self.groups[sample.defect_type]] if sample.defect_type in self.groups else [])
        for sp in targets:
            sp.update(amap, small, sats)

    @staticmethod
    def _keys(values: dict[str, float]) -> dict[str, float]:
        return {f"pixel_{k}": v for k, v in values.items()}  # "auspro@0.05" -> "pixel_auspro@0.05"

    def compute(self) -> dict[str, float]:
        """Pooled ``{"pixel_auspro@0.01": ..., ..., "pixel_auspro@1": ...}``."""
        return self._keys(self.pooled.compute())

    def group_metrics(self) -> dict[str, dict[str, float]]:
        """``{"logical": {...}, "structural": {...}}`` for the groups that had at least one defect."""
        return {g.split("_")[0]: self._keys(sp.compute()) for g, sp in self.groups.items() if sp.n_defects}

    def describe(self) -> dict[str, Any]:
        """Counts and conventions, written to metrics.json as ``spro``."""
        return {
            **self.pooled.describe(),
            "defect": "one mask file (its pixel value picks the defects_config.json entry)",
            "saturation": "absolute areas x evaluation pixels / original pixels; clipped to the defect area",
            "fpr_pixels": "every pixel of the good test images",
        }


def _with_pixel_metrics(per_type: dict[str, dict[str, Any]], by_type: PixelMetricsByType | None) -> dict:
    """Add each defect type's pixel AUROC / AP / AUPRO (``PixelMetricsByType``) to its image-level entry."""
    for kind, values in (by_type.compute() if by_type is not None else {}).items():
        if kind in per_type:
            per_type[kind].update(values)
    return per_type


def _update_pixels(
    pixel: PixelMetrics, spro: LocoSPRO | None, chunk: Sequence[Sample], maps: torch.Tensor, eval_size,
    by_type: PixelMetricsByType | None = None,
) -> None:
    """Maps bilinear and masks nearest to the evaluation size (None = each mask's native size)."""
    for sample, amap in zip(chunk, maps):
        hw = image_hw(sample)
        if spro is None:
            mask = read_mask(sample, hw)
        else:  # each mask file read once: OR-ed for the pixel metrics (= read_mask), kept apart for sPRO
            defect_masks, entries = read_loco_defects(sample, spro.defects, hw)
            mask = defect_masks.any(axis=0)
        m, g = resize_for_eval(amap.numpy(), mask, tuple(mask.shape) if eval_size is None else eval_size)
        pixel.update(m[None], g[None])
        if by_type is not None:
            by_type.update(amap.numpy(), mask, sample.defect_type if sample.label == 1 else None)
        if spro is not None:
            spro.update(sample, m, defect_masks, entries, hw)


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
