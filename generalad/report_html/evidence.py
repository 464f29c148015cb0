"""What ``test`` keeps for the HTML report beyond metrics.json and predictions.jsonl (docs/INSPECT.md).

The report is built from a results folder alone, so everything it shows that cannot be recomputed from the
per-image scores is written here, while the maps still exist:

* the per-pixel **PRO curve** up to FPR 0.3 — sampled from the very curve ``PixelMetrics`` integrates into
  ``pixel_aupro`` (no second pass, no second copy of the pixel scores);
* the **worst false positives and false negatives** at the calibrated threshold, rendered as small overlays
  (heat-map on the run's fixed colour scale, predicted-region contour, ground-truth mask contour);
* **per-defect-type** image AUROC (each defect type against every good test image), into metrics.json.

Files (``RES/``): ``inspect.json`` and ``gallery/*.png``.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from generalad.data import Sample, read_image, read_mask
from generalad.io import AtomicDir, atomic_write_json
from generalad.metrics import image_auroc
from generalad.report import save_png
from generalad.report_html.overlay import display_range, overlay_at_display_size

if TYPE_CHECKING:
    from generalad.metrics import PixelMetrics

EVIDENCE_FILE = "inspect.json"
GALLERY_DIR = "gallery"
FORMAT_VERSION = 1
GALLERY_K = 8  # worst cases kept per kind (false positives, false negatives)
DISPLAY_MAX_SIDE = 320  # gallery overlays are thumbnails: a report of 16 of them stays ~1-2 MB
PRO_POINTS = 301  # PRO curve samples on a uniform FPR grid [0, limit] (step 0.001 at limit 0.3)


# --------------------------------------------------------------------------- PRO curve


def pro_curve(pixel: "PixelMetrics", n_points: int = PRO_POINTS) -> dict[str, Any] | None:
    """The PRO curve of ``pixel`` sampled at ``n_points`` FPRs in [0, pixel.fpr_limit]; None without defects.

    The exact curve is piecewise linear between its points (MVTec's rule, the one ``pixel_aupro`` integrates),
    so each sample is a linear interpolation between the two curve points around it. Returns
    ``{"fpr": [...], "pro": [...], "fpr_limit", "n_regions", "mode"}`` (mode: the store's exact | binned).
    """
    # why the private store: it already holds every pixel score of the test set; copying them into a second
    # structure for the curve would double the largest allocation of ``test``.
    store = pixel._store  # noqa: SLF001
    if store.n_neg == 0 or store.n_pos == 0 or pixel.n_regions == 0:
        return None
    limit = pixel.fpr_limit
    grid = np.linspace(0.0, limit, n_points)
    pro = np.full(n_points, np.nan)
    n_neg, n_regions = float(store.n_neg), float(pixel.n_regions)
    last_x, last_y, cum_f, cum_w = 0.0, 0.0, 0, 0.0
    for dn, _dp, dw in store.curve():
        xs = np.r_[last_x, (cum_f + np.cumsum(dn)) / n_neg]
        ys = np.r_[last_y, (cum_w + np.cumsum(dw)) / n_regions]
        cum_f, cum_w = cum_f + int(dn.sum()), cum_w + float(dw.sum())
        todo = np.flatnonzero(np.isnan(pro) & (grid <= xs[-1]))
        pro[todo] = _interpolate(xs, ys, grid[todo])
        last_x, last_y = float(xs[-1]), float(ys[-1])
        if last_x >= limit:
            break
    return {"fpr": grid.tolist(), "pro": pro.tolist(), "fpr_limit": limit, "n_regions": pixel.n_regions,
            "mode": store.mode}


def _interpolate(xs: np.ndarray, ys: np.ndarray, at: np.ndarray) -> np.ndarray:
    """y at ``at`` on the polyline (xs, ys); xs non-decreasing (equal xs = a vertical step: its top is taken)."""
    k = np.clip(np.searchsorted(xs, at, side="right"), 1, xs.size - 1)
    x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
    width = x1 - x0
    t = np.divide(at - x0, width, out=np.ones_like(at), where=width > 0)
    return y0 + np.clip(t, 0.0, 1.0) * (y1 - y0)


def curve_area(curve: dict[str, Any]) -> float:
    """Trapezoid area under a sampled PRO curve divided by its FPR limit (≈ pixel_aupro)."""
    return float(np.trapezoid(curve["pro"], curve["fpr"]) / curve["fpr_limit"])


# --------------------------------------------------------------------------- per defect type


def per_defect_type(scores: np.ndarray, labels: np.ndarray, types: Sequence[str], threshold: float) -> dict:
    """``{type: {"n", "image_auroc", "detected"}}`` for every anomalous defect type.

    AUROC: that type's images against every good (label 0) test image. ``detected``: the fraction of the
    type's images with ``score > threshold`` (the recall at the calibrated threshold).
    """
    types_a = np.asarray(list(types), dtype=object)
    normal = labels == 0
    out: dict[str, dict[str, Any]] = {}
    for kind in sorted({t for t, y in zip(types_a, labels) if y == 1}):
        sel = (types_a == kind) & (labels == 1)
        both = sel | normal
        out[str(kind)] = {
            "n": int(sel.sum()),
            "image_auroc": image_auroc(scores[both], labels[both]),
            "detected": float(np.mean(scores[sel] > threshold)),
        }
    return out


# --------------------------------------------------------------------------- worst cases


class WorstCases:
    """Streaming top-k of the highest-scoring normal and the lowest-scoring anomalous test images.

    Only ``k`` maps per kind are kept (at the model's working size), so memory does not grow with the test
    set. ``select(threshold)`` keeps the ones on the wrong side of the threshold: false positives
    (normal, ``score > threshold``) worst first, and false negatives (anomalous, ``score <= threshold``).
    """

    def __init__(self, k: int = GALLERY_K) -> None:
        self.k = int(k)
        self._fp: list[tuple[float, int, Sample, Any]] = []  # min-heap on score: keeps the k highest
        self._fn: list[tuple[float, int, Sample, Any]] = []  # min-heap on -score: keeps the k lowest
        self._tick = itertools.count()  # tie-breaker: Samples are not orderable

    def update(self, chunk: Sequence[Sample], scores: np.ndarray, maps: Any) -> None:
        """Offer one batch: ``maps`` (B, h, w) at the working size (torch tensor or numpy array)."""
        if self.k <= 0:
            return
        for i, (sample, score) in enumerate(zip(chunk, scores)):
            if sample.label not in (0, 1):
                continue
            heap, key = (self._fp, float(score)) if sample.label == 0 else (self._fn, -float(score))
            if len(heap) < self.k or key > heap[0][0]:
                item = (key, next(self._tick), sample, _own_copy(maps[i : i + 1]))
                (heapq.heappush if len(heap) < self.k else heapq.heapreplace)(heap, item)

    def select(self, threshold: float) -> dict[str, list[tuple[Sample, float, Any]]]:
        """``{"false_positives": [(sample, score, map)...], "false_negatives": [...]}``, worst first."""
        fps = [(s, key, m) for key, _, s, m in sorted(self._fp, key=lambda e: -e[0]) if key > threshold]
        fns = [(s, -key, m) for key, _, s, m in sorted(self._fn, key=lambda e: -e[0]) if -key <= threshold]
        return {"false_positives": fps, "false_negatives": fns}


def _own_copy(m: Any) -> Any:
    """A copy that does not keep the whole batch tensor alive (a slice is a view of it)."""
    return m.clone() if hasattr(m, "clone") else np.array(m, copy=True)


def render_case(model: Any, sample: Sample, score: float, small_map: Any, *, max_side: int = DISPLAY_MAX_SIDE,
                caption: str = "") -> np.ndarray:
    """(h', w', 3) uint8 overlay of one test image at most ``max_side`` wide/high, on the run's fixed scale."""
    image = read_image(sample)
    amap = model.to_original_size([sample], small_map)[0]
    mask = read_mask(sample, image.shape[:2]) if sample.mask_paths else None
    return overlay_at_display_size(model, image, amap, score, max_side=max_side, mask=mask, caption=caption)


def write_evidence(out_dir: str | Path, model: Any, *, pixel: "PixelMetrics | None", worst: WorstCases) -> Path:
    """Write ``inspect.json`` and the gallery overlays into ``out_dir``; returns the JSON path."""
    out = Path(out_dir)
    threshold = model.threshold_
    gallery: dict[str, list[dict[str, Any]]] = {}
    with AtomicDir(out / GALLERY_DIR) as tmp:  # replaced whole: no overlay of an earlier test stays behind
        for kind, cases in worst.select(threshold).items():
            gallery[kind] = [_gallery_entry(tmp, model, kind, i, *case) for i, case in enumerate(cases)]
    vmin, vmax = display_range(model)
    evidence = {
        "format": FORMAT_VERSION,
        "threshold": threshold,
        "pixel_threshold": model.pixel_threshold_,
        "display_range": [vmin, vmax],
        "gallery_k": worst.k,
        "gallery": gallery,
        "pro_curve": pro_curve(pixel) if pixel is not None else None,
    }
    return atomic_write_json(out / EVIDENCE_FILE, evidence)


def _gallery_entry(folder: Path, model: Any, kind: str, index: int, sample: Sample, score: float,
                   small_map: Any) -> dict:
    name = f"{'fp' if kind == 'false_positives' else 'fn'}_{index:02d}.png"
    caption = f"{sample.defect_type}: {Path(sample.path).name}"
    save_png(folder / name, render_case(model, sample, score, small_map, caption=caption))
    return {"path": sample.path, "defect_type": sample.defect_type, "label": int(sample.label), "score": score,
            "has_mask": bool(sample.mask_paths), "png": f"{GALLERY_DIR}/{name}"}
