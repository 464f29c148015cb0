"""Per-image prediction records (JSONL + CSV) and heat-map overlays (docs/PROTOCOLS.md §5).

Records carry RAW scores; ``score_normalised`` is display-only. Overlays colour the anomaly map on a
FIXED scale (``vmin``/``vmax`` from calibration statistics, the same for every image of a run): per-image
min–max scaling would stretch the noise of a normal image to full red and make it look anomalous.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from generalad.errors import ConfigError, InputError
from generalad.io import JsonlWriter, PathLike, atomic_open, atomic_write_bytes, to_jsonable

# --------------------------------------------------------------------------- records


@dataclass
class Prediction:
    """One image's result; names follow anomalib where they overlap (pred_score, pred_label, gt_label)."""

    path: str
    pred_score: float  # raw score: every metric and decision uses this
    threshold: float
    category: str = ""
    split: str = ""
    gt_label: int | None = None
    score_normalised: float | None = None  # display only (threshold → 0.5)
    map_path: str | None = None
    mask_path: str | None = None
    regions: list[dict[str, Any]] = field(default_factory=list)
    model: str = ""
    backbone: str = ""
    weights_sha256: str = ""
    image_size: list[int] | None = None  # [H, W] of the original image
    latency_ms: float | None = None
    pred_label: int | None = None  # derived as int(pred_score > threshold) when not given

    def __post_init__(self) -> None:
        # One decision rule everywhere (score > threshold): a caller's label may not contradict it.
        derived = int(self.pred_score > self.threshold)
        if self.pred_label is not None and int(self.pred_label) != derived:
            raise ValueError(
                f"Prediction({self.path}): pred_label={self.pred_label} contradicts "
                f"pred_score={self.pred_score} > threshold={self.threshold}"
            )
        self.pred_label = derived

    @property
    def is_anomalous(self) -> bool:
        return bool(self.pred_label)

    def to_record(self) -> dict[str, Any]:
        """JSON-ready dict in :data:`COLUMNS` order, with the CLI aliases label/score/is_anomalous."""
        rec = {name: getattr(self, name) for name in _FIELD_ORDER}
        rec["label"] = self.gt_label  # CLI contract: the dataset's label (0 normal / 1 anomalous), None if unknown
        rec["score"] = self.pred_score
        rec["is_anomalous"] = self.is_anomalous
        return to_jsonable(rec)


_FIELD_ORDER = (
    "path", "category", "split", "gt_label", "pred_score", "threshold", "pred_label", "score_normalised",
    "map_path", "mask_path", "regions", "model", "backbone", "weights_sha256", "image_size", "latency_ms",
)  # fmt: skip
COLUMNS: tuple[str, ...] = _FIELD_ORDER + ("label", "score", "is_anomalous")
_JSON_COLS = {"regions", "image_size"}


def _record(r: Prediction | Mapping[str, Any]) -> dict[str, Any]:
    return r.to_record() if isinstance(r, Prediction) else to_jsonable(dict(r))


def _csv_cell(name: str, value: Any) -> str:
    if value is None:
        return ""
    if name in _JSON_COLS or isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)  # str(float) is repr: round-trips exactly


def write_predictions(
    records: Iterable[Prediction | Mapping[str, Any]], out_dir: PathLike
) -> tuple[Path, Path]:
    """Write ``out_dir/predictions.jsonl`` and ``predictions.csv`` (same columns) atomically.

    Streams: ``records`` may be a generator. Both files appear only after the last record is written.
    CSV cells: empty = null, lists/dicts (regions, image_size) JSON-encoded, booleans true/false.
    """
    out = Path(out_dir)
    jsonl_path, csv_path = out / "predictions.jsonl", out / "predictions.csv"
    with JsonlWriter(jsonl_path) as jw, atomic_open(csv_path, "w") as cf:
        cw = csv.writer(cf, lineterminator="\n")
        cw.writerow(COLUMNS)
        for r in records:
            rec = _record(r)
            jw.write(rec)
            cw.writerow([_csv_cell(c, rec.get(c)) for c in COLUMNS])
    return jsonl_path, csv_path


# --------------------------------------------------------------------------- regions

_CONNECTIVITY_8 = np.ones((3, 3), dtype=bool)


def regions_from_map(
    anomaly_map: np.ndarray, pixel_threshold: float, *, min_area: int = 1
) -> list[dict[str, Any]]:
    """Connected regions (8-connectivity) of ``anomaly_map > pixel_threshold``, highest max_score first.

    Each region: ``bbox`` [x0, y0, x1, y1] in pixel-edge coordinates (x1/y1 exclusive, so the width is
    x1 − x0), ``area_px`` (pixel count) and ``max_score`` (raw). NaN pixels never count as anomalous.
    """
    a = np.asarray(anomaly_map, dtype=np.float64)
    if a.ndim != 2:
        raise InputError(f"regions_from_map: expected an (H, W) map, got shape {a.shape}")
    labels, n = ndimage.label(a > pixel_threshold, structure=_CONNECTIVITY_8)
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    maxima = ndimage.maximum(a, labels, index)
    regions = [
        {
            "bbox": [sl[1].start, sl[0].start, sl[1].stop, sl[0].stop],
            "area_px": int(area),
            "max_score": float(mx),
        }
        for sl, area, mx in zip(ndimage.find_objects(labels), areas, maxima)
        if area >= min_area
    ]
    regions.sort(key=lambda r: -r["max_score"])
    return regions


# --------------------------------------------------------------------------- colour map

# Turbo colour map, polynomial approximation by Ruofei Du / Anton Mikhailov (Google LLC, Apache-2.0):
# each channel is a degree-5 polynomial in x ∈ [0, 1]. Coefficients rows: x^0 … x^5.
_TURBO_COEFFS = np.array(
    [
        [0.13572138, 0.09140261, 0.10667330],
        [4.61539260, 2.19418839, 12.64194608],
        [-42.66032258, 4.84296658, -60.58204836],
        [132.13108234, -14.18503333, 110.36276771],
        [-152.94239396, 4.27729857, -89.90310912],
        [59.28637943, 2.82956604, 27.34824973],
    ]
)


def turbo_lut(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 lookup table of the Turbo colour map (dark blue → green → yellow → dark red)."""
    x = np.linspace(0.0, 1.0, n)
    powers = x[:, None] ** np.arange(6)[None, :]
    return np.clip(np.rint(powers @ _TURBO_COEFFS * 255.0), 0, 255).astype(np.uint8)


TURBO = turbo_lut()


def colorize(values: np.ndarray, vmin: float, vmax: float, lut: np.ndarray = TURBO) -> np.ndarray:
    """(H, W) raw values → (H, W, 3) uint8 colours on the fixed scale [vmin, vmax] (clipped)."""
    if not (math.isfinite(vmin) and math.isfinite(vmax) and vmax > vmin):
        raise ConfigError(f"colour scale: need finite vmin < vmax, got vmin={vmin}, vmax={vmax}")
    t = (np.nan_to_num(np.asarray(values, dtype=np.float32), nan=vmin) - vmin) / (vmax - vmin)
    idx = np.rint(np.clip(t, 0.0, 1.0) * (len(lut) - 1)).astype(np.intp)
    return lut[idx]


# --------------------------------------------------------------------------- overlays

PRED_CONTOUR_RGB = (255, 255, 255)  # white: not in Turbo, visible on every part of it
GT_CONTOUR_RGB = (255, 0, 255)  # magenta: not in Turbo either
ANOMALOUS_RGB = (255, 80, 80)
NORMAL_RGB = (120, 230, 120)


def _to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"overlay: expected an (H, W, 3) image, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img
    return np.rint(np.clip(img.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _contour(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Inner boundary of ``mask``: mask XOR its erosion (``thickness`` pixels wide)."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return m
    return m ^ ndimage.binary_erosion(m, structure=_CONNECTIVITY_8, iterations=thickness)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable built-in font (Pillow >= 10.1 with FreeType)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """Shorten ``text`` with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while len(text) > 1 and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _caption_strip(
    width: int, lines: Sequence[tuple[str, tuple[int, int, int]]], font_size: int
) -> np.ndarray:
    font = _font(font_size)
    pad = max(2, font_size // 3)
    line_h = int(round(font_size * 1.25))
    strip = Image.new("RGB", (width, 2 * pad + line_h * len(lines)), (24, 24, 24))
    draw = ImageDraw.Draw(strip)
    for i, (text, colour) in enumerate(lines):
        text = _fit_text(draw, text, font, width - 2 * pad)
        draw.text((pad, pad + i * line_h), text, fill=colour, font=font)
    return np.asarray(strip)


def _status_line(score: float | None, threshold: float) -> tuple[str, tuple[int, int, int]]:
    if score is None or not math.isfinite(score):
        return f"threshold {threshold:.4g}", (230, 230, 230)
    if score > threshold:
        return f"ANOMALOUS  score {score:.4g} > threshold {threshold:.4g}", ANOMALOUS_RGB
    return f"normal  score {score:.4g} <= threshold {threshold:.4g}", NORMAL_RGB


def render_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    *,
    vmin: float,
    vmax: float,
    threshold: float,
    score: float | None = None,
    pixel_threshold: float | None = None,
    gt_mask: np.ndarray | None = None,
    caption: str = "",
    alpha: float = 0.5,
) -> np.ndarray:
    """Heat-map overlay with contours and a caption strip; returns (H + strip, W, 3) uint8.

    ``image``: (H, W, 3) float in [0, 1] (or uint8). ``anomaly_map``: (H, W) RAW scores at the image size,
    coloured with Turbo on the fixed scale [vmin, vmax] (take it from calibration, e.g.
    ``PixelCalibration.display_range()``; never per image). White contour: ``map > pixel_threshold``;
    magenta contour: ``gt_mask``. Caption: ``caption`` and, from ``score``/``threshold`` (image level),
    the decision line.
    """
    img = _to_uint8_rgb(image)
    h, w = img.shape[:2]
    amap = np.asarray(anomaly_map)
    if amap.shape != (h, w):
        raise InputError(f"overlay: anomaly map shape {amap.shape} does not match image size {(h, w)}")
    heat = colorize(amap, vmin, vmax)
    out = np.rint(img * (1.0 - alpha) + heat * alpha).astype(np.uint8)
    thickness = max(1, round(min(h, w) / 300))  # ~1 px at 256², 3 px at 900²: visible when downscaled
    if pixel_threshold is not None:
        out[_contour(np.nan_to_num(amap, nan=-np.inf) > pixel_threshold, thickness)] = PRED_CONTOUR_RGB
    if gt_mask is not None:
        gt = np.asarray(gt_mask, dtype=bool)
        if gt.shape != (h, w):
            raise InputError(f"overlay: ground-truth mask shape {gt.shape} does not match image {(h, w)}")
        out[_contour(gt, thickness)] = GT_CONTOUR_RGB
    lines = [(c, (230, 230, 230)) for c in caption.splitlines() if c.strip()]
    lines.append(_status_line(score, threshold))
    strip = _caption_strip(w, lines, font_size=max(10, min(28, w // 36)))
    return np.concatenate([out, strip], axis=0)


# --------------------------------------------------------------------------- files


def save_png(path: PathLike, array: np.ndarray) -> Path:
    """Save a uint8 (H, W) or (H, W, 3) array as PNG atomically."""
    a = np.asarray(array)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise InputError(f"save_png: expected uint8 (H, W) or (H, W, 3), got {a.dtype} {a.shape}")
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def save_mask_png(path: PathLike, mask: np.ndarray) -> Path:
    """Save a predicted mask as a 0/255 single-channel PNG (docs/PROTOCOLS.md §5)."""
    return save_png(path, np.asarray(mask, dtype=bool).astype(np.uint8) * 255)


def save_map_npy(path: PathLike, anomaly_map: np.ndarray) -> Path:
    """Save a raw anomaly map as float32 .npy atomically."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(anomaly_map, dtype=np.float32), allow_pickle=False)
    return atomic_write_bytes(path, buf.getvalue())
