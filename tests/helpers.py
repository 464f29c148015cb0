"""Test-only helpers moved out of the package: nothing in generalad/, the CLI or benchmarks/ calls them.

* ``stale_temp_paths`` (was generalad.io): leftovers of the atomic writers, to check none remain.
* ``read_predictions`` / ``prediction_from_record`` (were generalad.report / ``Prediction.from_record``):
  read predictions.jsonl / .csv back, to check what ``write_predictions`` wrote.
* ``render_panel`` (was generalad.report): the 4-panel figure image | ground truth | overlay | mask.
* ``decide`` / ``parse_threshold_rule`` (were ``Calibration.decide`` / ``ThresholdRule.parse``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageDraw

from generalad.calibration import Calibration, ThresholdRule
from generalad.errors import ConfigError, InputError
from generalad.io import OLD_SUFFIX, TMP_SUFFIX, PathLike
from generalad.report import _JSON_COLS, Prediction, _font, _to_uint8_rgb

# --------------------------------------------------------------------------- io


def stale_temp_paths(directory: PathLike) -> list[Path]:
    """Leftover temp files/dirs of killed writers directly inside ``directory``."""
    d = Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.name.startswith(".") and p.name.endswith((TMP_SUFFIX, OLD_SUFFIX)))


# --------------------------------------------------------------------------- prediction records

_INT_COLS = {"gt_label", "pred_label", "label"}
_FLOAT_COLS = {"pred_score", "threshold", "score_normalised", "score", "latency_ms"}
_STR_COLS = {"path", "category", "split", "model", "backbone", "weights_sha256"}


def _parse_cell(name: str, text: str) -> Any:
    if text == "":  # plain string columns keep "", typed and path columns were null, regions empty
        return "" if name in _STR_COLS else ([] if name == "regions" else None)
    if name in _JSON_COLS:
        return json.loads(text)
    if name in _INT_COLS:
        return int(text)
    if name in _FLOAT_COLS:
        return float(text)
    if name == "is_anomalous":
        return text == "true"
    return text


def read_predictions(path: PathLike) -> list[dict[str, Any]]:
    """Read a predictions.jsonl or predictions.csv back into a list of typed dicts."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: predictions file not found")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        return [{k: _parse_cell(k, v) for k, v in row.items()} for row in rows]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def prediction_from_record(rec: Mapping[str, Any]) -> Prediction:
    """Inverse of ``Prediction.to_record`` (aliases dropped; pred_label re-derived, null score → NaN)."""
    names = {f.name for f in fields(Prediction)} - {"pred_label"}
    kw = {k: v for k, v in rec.items() if k in names}
    if kw.get("pred_score") is None:
        kw["pred_score"] = math.nan
    return Prediction(**kw)


# --------------------------------------------------------------------------- figures and files


def _mask_rgb(mask: np.ndarray | None, hw: tuple[int, int]) -> np.ndarray:
    if mask is None:  # unknown: mid grey, distinct from an all-black "no defect" mask
        return np.full((*hw, 3), 96, dtype=np.uint8)
    return np.repeat((np.asarray(mask, dtype=bool) * np.uint8(255))[..., None], 3, axis=2)


def render_panel(
    image: np.ndarray, gt: np.ndarray | None, overlay: np.ndarray, pred_mask: np.ndarray | None, *, gap: int = 4
) -> np.ndarray:
    """4-panel figure: image | ground truth | overlay | predicted mask, titled; (H', W', 3) uint8.

    ``gt``/``pred_mask`` are bool (H, W) or None (drawn grey = unknown); ``overlay`` is ``render_overlay``
    output (taller because of its caption; the other panels are padded).
    """
    img = _to_uint8_rgb(image)
    hw = img.shape[:2]
    panels = [img, _mask_rgb(gt, hw), np.asarray(overlay, dtype=np.uint8), _mask_rgb(pred_mask, hw)]
    height = max(p.shape[0] for p in panels)
    bg = (24, 24, 24)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, gap), (0, 0)), constant_values=bg[0]) for p in panels]
    body = np.concatenate(padded, axis=1)[:, :-gap] if gap else np.concatenate(padded, axis=1)
    font_size = max(10, min(28, hw[1] // 30))
    title_h = int(font_size * 1.6)
    titles = Image.new("RGB", (body.shape[1], title_h), bg)
    draw = ImageDraw.Draw(titles)
    font = _font(font_size)
    for i, name in enumerate(("image", "ground truth", "overlay", "predicted mask")):
        draw.text((i * (hw[1] + gap) + 4, font_size // 4), name, fill=(230, 230, 230), font=font)
    return np.concatenate([np.asarray(titles), body], axis=0)


# --------------------------------------------------------------------------- calibration


def decide(calibration: Calibration, scores: Any) -> np.ndarray:
    """Predicted labels (0/1) on RAW scores: ``score > threshold``."""
    return (np.asarray(scores, dtype=np.float64) > calibration.threshold).astype(np.int64)


def parse_threshold_rule(text: str) -> ThresholdRule:
    """A rule from its spelling: ``quantile``, ``quantile:0.995``, ``max``, ``mean_std:3``, ``fpr:0.01``."""
    kind, _, value = text.strip().partition(":")
    if not value:
        return ThresholdRule(kind=kind)
    try:
        v = float(value)
    except ValueError:
        raise ConfigError(f"threshold rule {text!r}: {value!r} is not a number") from None
    param = {"quantile": "q", "mean_std": "k", "fpr": "target_fpr"}.get(kind)
    if param is None:
        raise ConfigError(f"threshold rule {text!r}: {kind!r} takes no parameter")
    return ThresholdRule(kind=kind, **{param: v})
