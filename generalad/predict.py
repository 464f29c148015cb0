"""Predict on new images: raw scores, calibrated decisions, maps and fixed-scale heat-map overlays."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from generalad.data import Sample, read_image
from generalad.report import Prediction, regions_from_map, render_overlay, save_map_npy, save_png, write_predictions

if TYPE_CHECKING:  # an exported model (generalad.deploy.Inferencer) predicts through here without torch
    from generalad.methods.base import AnomalyModel


def _output_name(index: int, path: str) -> str:
    """Unique, readable file stem: two inputs may share a name in different folders."""
    return f"{index:05d}_{Path(path).stem}"


def predict_samples(
    model: "AnomalyModel", samples: Sequence[Sample], out_dir: str | Path | None = None, *, save_maps: bool = False,
    overlays: bool = True, progress: bool = False,
) -> list[Prediction]:
    """Score ``samples``; with ``out_dir`` write predictions.jsonl/csv, overlays and optional .npy maps."""
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        (out / "images").mkdir(parents=True, exist_ok=True)
    desc = model.describe()
    thr, pix_thr = model.threshold_, model.pixel_threshold_
    vmin, vmax = model.pixel_calibration_.display_range()  # fixed scale for the whole run (docs/PROTOCOLS.md §5)
    records: list[Prediction] = []
    t_prev = time.perf_counter()
    for chunk, scores, maps in model.infer_batches(samples, use_cache=False, progress=progress):
        full_maps = model.to_original_size(chunk, maps)
        latency = (time.perf_counter() - t_prev) * 1000.0 / max(len(chunk), 1)
        norm = model.calibration_.normalise(scores)
        for sample, score, n, amap in zip(chunk, scores, norm, full_maps):
            idx = len(records)
            rec = Prediction(
                path=sample.path, category=sample.category, split=sample.split,
                gt_label=int(sample.label) if sample.label in (0, 1) else None,
                pred_score=float(score), threshold=thr, pred_label=int(score > thr), score_normalised=float(n),
                regions=regions_from_map(amap, pix_thr) if pix_thr is not None else [],
                backbone=desc["backbone"], model=desc["model"], weights_sha256=desc["weights_sha256"],
                image_size=desc["image_size"], latency_ms=round(latency, 2),
            )
            if out is not None:
                stem = _output_name(idx, sample.path)
                if save_maps:
                    rec.map_path = str(save_map_npy(out / "images" / f"{stem}_map.npy", amap))
                if overlays:
                    image = read_image(sample)
                    png = render_overlay(image, amap, vmin=vmin, vmax=vmax, threshold=thr, score=float(score),
                                         pixel_threshold=pix_thr, caption=Path(sample.path).name)
                    save_png(out / "images" / f"{stem}_overlay.png", png)
            records.append(rec)
        t_prev = time.perf_counter()
    if out is not None:
        write_predictions(records, out)
    return records


def predict_folder(model: "AnomalyModel", paths: Sequence[str], out_dir: str | Path, **kwargs) -> list[Prediction]:
    samples = [Sample(path=p, label=-1, split="predict") for p in paths]
    return predict_samples(model, samples, out_dir, **kwargs)
