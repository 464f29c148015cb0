"""Pixel-level metrics on raw anomaly maps, streamed over a test set with bounded memory.

``PixelMetrics`` accumulates (map, mask) batches and computes pixel AUROC, pixel AP (step rule), pixel
F1-max (an oracle number) and AUPRO (see ``aupro.py``) over every pixel of every image, normal images
included (docs/PROTOCOLS.md §3).

Evaluation resolution. With ``eval_size=(H, W)`` (default 256×256, the MVTec-type convention) every
batch must already be at that size: the caller resizes each map **bilinearly** and each mask with
**nearest neighbour** (never cropping) — ``resize_for_eval`` does exactly that. ``eval_size=None`` is
the "native" mode: any size, images may differ in size (one update per image size).

Memory and exactness. Scores are stored as float32 (normal pixels: 4 bytes; defect pixels: 4 + 8 for
their region weight) while the total stays within ``max_exact_pixels`` (default 200 M ≈ 0.8 GB): the
metrics are then exact (equal to scikit-learn on the float32 scores, up to float64 rounding). Beyond
the budget the store switches once to a histogram of ``n_bins``-adapted float-bit bins (``_curve.py``)
and frees the raw values; memory then stays at ~25 MB whatever the number of images. The binned
metrics are the exact curve sampled at the bin edges; ``describe()`` reports a worst-case bound on
|binned - exact| for each metric, computed from the histogram (typically ~1e-6 for AUROC).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from generalad.errors import InputError
from generalad.metrics import _curve
from generalad.metrics._inputs import maps_3d, masks_3d, to_numpy
from generalad.metrics.aupro import FPR_LIMIT, image_passes, split_pixels

DEFAULT_EVAL_SIZE = (256, 256)


def resize_for_eval(
    anomaly_map: Any, mask: Any | None, size: tuple[int, int] | int
) -> tuple[np.ndarray, np.ndarray]:
    """Resize a map (bilinear, align_corners=False) and its mask (nearest neighbour) to ``size``.

    ``anomaly_map``: (H, W) or (B, H, W), numpy or torch. ``mask``: (H', W') or (B, H', W'), bool / 0-1 /
    0-255, or None for a normal image (an all-False mask is returned). Map and mask may have different
    sizes (model resolution vs. the original image): each is resized on its own, nothing is cropped.
    Returns float32 maps and bool masks of the map's rank. Masks use pixel-centre nearest neighbour
    (torch's "nearest-exact", as PIL's NEAREST) rather than torch's legacy "nearest", which shifts masks
    by up to one source pixel.
    """
    import torch
    import torch.nn.functional as F

    size = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    m = to_numpy(anomaly_map)
    squeeze = m.ndim == 2
    m3 = maps_3d(m)
    t = torch.from_numpy(m3).unsqueeze(1)
    if tuple(m3.shape[-2:]) != size:
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    out_map = t.squeeze(1).numpy()
    if mask is None:
        out_mask = np.zeros(out_map.shape, dtype=bool)
    else:
        out_mask = resize_masks(_mask_batch(mask, m3.shape[0]), size)
    return (out_map[0], out_mask[0]) if squeeze else (out_map, out_mask)


def resize_masks(masks: Any, size: tuple[int, int] | int) -> np.ndarray:
    """Resize (K, H, W) masks (bool / 0-1 / 0-255; K may be 0) to bool (K, *size) with the pixel-centre
    nearest neighbour of ``resize_for_eval``; used for masks kept apart, e.g. the defects of an sPRO image."""
    import torch
    import torch.nn.functional as F

    size = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    g3 = to_numpy(masks)
    if g3.ndim != 3:
        raise InputError(f"resize_masks: expected (K, H, W) masks, got shape {tuple(g3.shape)}")
    g3 = masks_3d(g3, g3.shape)
    if tuple(g3.shape[-2:]) == size:
        return g3
    if g3.shape[0] == 0:
        return np.zeros((0, *size), dtype=bool)
    g = F.interpolate(torch.from_numpy(g3.astype(np.uint8)).unsqueeze(1), size=size, mode="nearest-exact")
    return g.squeeze(1).numpy() > 0


def _mask_batch(mask: Any, n_maps: int) -> np.ndarray:
    """(B, H, W) bool masks, one per map; the mask's own size is kept."""
    g = to_numpy(mask)
    g = g[None] if g.ndim == 2 else g
    g = g[:, 0] if g.ndim == 4 and g.shape[1] == 1 else g
    if g.ndim != 3 or g.shape[0] != n_maps:
        raise InputError(f"resize_for_eval: {n_maps} map(s) but mask shape {tuple(g.shape)}")
    return masks_3d(g, g.shape)


class PixelMetrics:
    """Streaming pixel AUROC / AP / F1-max / AUPRO over (B, H, W) maps and masks. Usage::

        pm = PixelMetrics(eval_size=(256, 256))
        for maps, masks in batches:        # maps float (B, 256, 256) raw scores, masks bool (B, 256, 256)
            pm.update(maps, masks)
        pm.compute()                       # {"pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"}
        pm.describe()                      # mode (exact | binned), resolution, counts, error bounds
    """

    def __init__(
        self,
        eval_size: tuple[int, int] | None = DEFAULT_EVAL_SIZE,
        *,
        max_exact_pixels: int = _curve.DEFAULT_MAX_EXACT,
        n_bins: int = _curve.DEFAULT_BINS,
        fpr_limit: float = FPR_LIMIT,
    ) -> None:
        self.eval_size = None if eval_size is None else (int(eval_size[0]), int(eval_size[1]))
        self.max_exact_pixels = int(max_exact_pixels)
        self.n_bins = int(n_bins)
        self.fpr_limit = float(fpr_limit)
        self.reset()

    def reset(self) -> None:
        """Forget every update."""
        self._store = _curve.ScoreStore(self.max_exact_pixels, self.n_bins)
        self.n_images = 0
        self.n_regions = 0
        self._summary: _curve.CurveSummary | None = None

    def update(self, maps: Any, masks: Any) -> PixelMetrics:
        """Add a batch: ``maps`` float (B, H, W) raw scores, ``masks`` (B, H, W) ground truth (> 0 = defect)."""
        m = maps_3d(maps)
        g = masks_3d(masks, m.shape)
        if self.eval_size is not None and tuple(m.shape[-2:]) != self.eval_size:
            raise InputError(
                f"PixelMetrics: maps are {m.shape[1]}x{m.shape[2]} but eval_size is "
                f"{self.eval_size[0]}x{self.eval_size[1]}; resize with generalad.metrics.resize_for_eval "
                "first (or use eval_size=None for native resolution)"
            )
        for sl in image_passes(m.shape[0], m.shape[1] * m.shape[2]):
            neg, pos, w, n = split_pixels(m[sl], g[sl])
            self._store.add(neg, pos, w)
            self.n_regions += n
        self.n_images += m.shape[0]
        self._summary = None
        return self

    def _compute_summary(self) -> _curve.CurveSummary:
        if self._summary is None:
            self._summary = _curve.summarize(self._store, self.n_regions, (self.fpr_limit,))
        return self._summary

    def compute(self) -> dict[str, float]:
        """Pixel AUROC, AP, F1-max (oracle) and AUPRO@fpr_limit; NaN when there is no defect pixel or
        no normal pixel."""
        s = self._compute_summary()
        worst = max((v for k, v in s.bounds.items() if k in ("auroc", ("area", self.fpr_limit))), default=0.0)
        if worst > 1e-3:  # bins laid out before the data moved to a new score range: say so
            warnings.warn(
                f"PixelMetrics: binned pixel metrics may be off by up to {worst:.2g}; raise max_exact_pixels "
                "or evaluate at a smaller eval_size (see describe()['max_abs_error'])",
                stacklevel=2,
            )
        return {
            "pixel_auroc": s.auroc,
            "pixel_ap": s.ap,
            "pixel_f1max": s.f1max,
            "pixel_aupro": s.area[self.fpr_limit],
        }

    def describe(self) -> dict[str, Any]:
        """How the numbers were obtained: mode, resolution, counts and (binned) error bounds."""
        st = self._store
        info: dict[str, Any] = {
            "mode": st.mode,
            "eval_size": "native" if self.eval_size is None else list(self.eval_size),
            "n_images": self.n_images,
            "n_pixels": st.n_neg + st.n_pos,
            "n_anomalous_pixels": st.n_pos,
            "n_regions": self.n_regions,
            "aupro_fpr_limit": self.fpr_limit,
            "aupro_connectivity": 8,
            "ap_rule": "step (sum of recall steps x precision, as scikit-learn)",
        }
        if st.mode == "binned":
            b = self._compute_summary().bounds  # empty when the metrics are undefined (NaN)
            nan = float("nan")
            info["n_bins"] = st.layout.n_bins if st.layout is not None else 0
            info["max_abs_error"] = {
                "pixel_auroc": b.get("auroc", nan),
                "pixel_ap": b.get("ap", nan),
                "pixel_f1max": b.get("f1max", nan),
                "pixel_aupro": b.get(("area", self.fpr_limit), nan),
            }
        return info


class PixelMetricsByType:
    """Pixel AUROC / AP / AUPRO per defect type: that type's images against every normal image.

    The pooled pixel metrics weigh defect types by their defect *area*: on magnetic tile one type whose masks
    cover a quarter of each image holds ~70 % of all defect pixels and decides the pooled AUROC alone. This
    breaks it down. Each image's map (bilinear) and mask (nearest) are kept at ``size`` (default 128×128:
    80 KB per image), so it stops (``compute()`` returns {} and ``describe()`` says why) beyond
    ``max_images`` (default 2,048 ≈ 160 MB) rather than grow without bound. Exact (``PixelMetrics`` on the
    kept pixels), but at ``size``, not at the pooled metrics' evaluation size: compare types with each
    other, not with the pooled numbers.
    """

    def __init__(self, size: tuple[int, int] = (128, 128), max_images: int = 2048) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.max_images = int(max_images)
        self._maps: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        self._types: list[str | None] = []  # None = a normal image
        self.overflow = False

    def update(self, anomaly_map: Any, mask: Any | None, defect_type: str | None) -> None:
        """One image: its map (H, W), its mask (H', W') or None, its defect type (None for a normal image)."""
        if self.overflow:
            return
        if len(self._types) >= self.max_images:
            self.overflow = True
            self._maps, self._masks, self._types = [], [], []
            return
        m, g = resize_for_eval(anomaly_map, mask, self.size)
        self._maps.append(m)
        self._masks.append(g)
        self._types.append(defect_type)

    def compute(self) -> dict[str, dict[str, float]]:
        """``{type: {"pixel_auroc", "pixel_ap", "pixel_aupro"}}`` for every defect type seen (F1-max left out:
        an oracle threshold per type says little)."""
        if self.overflow or not self._types:
            return {}
        maps, masks = np.stack(self._maps), np.stack(self._masks)
        types = np.array(["" if t is None else t for t in self._types], dtype=object)
        normal = types == ""
        out: dict[str, dict[str, float]] = {}
        for kind in sorted(set(types[~normal])):
            sel = normal | (types == kind)
            pm = PixelMetrics(self.size).update(maps[sel], masks[sel])
            values = pm.compute()
            out[str(kind)] = {k: values[k] for k in ("pixel_auroc", "pixel_ap", "pixel_aupro")}
        return out

    def describe(self) -> dict[str, Any]:
        if self.overflow:
            return {"skipped": f"more than {self.max_images} test images"}
        return {"eval_size": list(self.size), "rule": "each defect type's images against every normal test image"}
