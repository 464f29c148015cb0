"""sPRO / AUsPRO for MVTec LOCO AD (docs/PROTOCOLS.md §3), on raw anomaly maps.

Each ground-truth defect A_i (one mask file) has a saturation area s_i from its ``defects_config.json``
entry: an absolute pixel count, or a fraction of |A_i| when the defect type is marked relative. This
module takes those rules as plain values (``saturation_area``); reading the file and matching mask files
to entries is ``generalad.data.loco_defects_config`` / ``read_loco_defects``. For the decision ``a > t``:

    sPRO(t) = (1/m) Σ_i min(|A_i ∩ B_t| / s_i, 1),   FPR(t) over the pixels of the anomaly-free images.

Pixels of anomalous images outside their defects count nowhere (as in the LOCO protocol). The curve is
integrated with the trapezoid rule up to each FPR limit (cut by linear interpolation) and divided by the
limit; several limits are computed at once (0.05 is the one the LOCO benchmark usually quotes — name
the one you report).

Exact computation: sPRO is a sum of per-pixel increments once each defect's pixels are ranked. The k-th
highest-scoring pixel of defect i raises sPRO by ``(min(k/s_i, 1) - min((k-1)/s_i, 1)) / m``; pixels past
saturation add nothing and are dropped. Ties inside a defect are ranked arbitrarily, which does not
matter because equal scores collapse into one curve point. The weighted pixels then go through the same
store / curve machinery as AUPRO (exact, or binned beyond ``max_exact_pixels``).

Conventions to state with results (verify against the official LOCO evaluation code before publishing):
saturation areas larger than the defect are clipped to the defect area (anomalib does the same); when
masks are evaluated at another resolution than the original, pass ``area_scale`` = (eval pixels /
original pixels) so absolute saturation areas shrink with the mask; a defect whose mask is empty at the
evaluation resolution still counts in m and contributes 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from generalad.errors import InputError
from generalad.metrics import _curve
from generalad.metrics._inputs import maps_3d, masks_3d, to_numpy

DEFAULT_LIMITS = (0.01, 0.05, 0.1, 0.3, 1.0)


def saturation_area(defect_area: int, saturation_threshold: float, relative: bool, *, area_scale: float = 1.0) -> float:
    """Saturation area s_i in pixels: ``threshold·|A|`` if relative, else ``threshold·area_scale``;
    clipped to |A| so that detecting the whole defect always saturates.

    ``defect_area`` |A| is counted at the evaluation resolution; ``area_scale`` = evaluation pixels /
    original pixels (1 at native resolution) converts an absolute threshold given for the original
    image."""
    s = saturation_threshold * defect_area if relative else saturation_threshold * area_scale
    return float(min(s, defect_area))


def saturated_weights(scores: np.ndarray, saturation: float) -> tuple[np.ndarray, np.ndarray]:
    """(scores, weights) of the pixels of one defect that raise sPRO, weights in units of 1/m."""
    if scores.size == 0:
        return scores, np.empty(0)
    ranked = np.sort(scores)[::-1]
    k = np.arange(1, ranked.size + 1, dtype=np.float64)
    w = np.minimum(k / saturation, 1.0) - np.minimum((k - 1.0) / saturation, 1.0)
    keep = w > 0
    return ranked[keep], w[keep]


class SPROMetrics:
    """Streaming AUsPRO at several FPR limits, one image per ``update``. Usage::

        sp = SPROMetrics()
        for amap, defect_masks, saturation_areas in images:   # good image: defect_masks == []
            sp.update(amap, defect_masks, saturation_areas)
        sp.compute()   # {"auspro@0.01": ..., "auspro@0.05": ..., ..., "auspro@1": ...}
    """

    def __init__(
        self,
        fpr_limits: Sequence[float] = DEFAULT_LIMITS,
        *,
        max_exact_pixels: int = _curve.DEFAULT_MAX_EXACT,
        n_bins: int = _curve.DEFAULT_BINS,
    ) -> None:
        self.fpr_limits = tuple(float(x) for x in fpr_limits)
        if not all(0.0 < x <= 1.0 for x in self.fpr_limits):
            raise ValueError(f"FPR limits must lie in (0, 1], got {self.fpr_limits}")
        self._store = _curve.ScoreStore(max_exact_pixels, n_bins)
        self.n_defects = 0
        self.n_good_images = 0
        self.n_anomalous_images = 0

    def update(self, anomaly_map: Any, defect_masks: Any = (), saturation_areas: Sequence[float] = ()) -> SPROMetrics:
        """Add one image: its (H, W) map, its defect masks ((K, H, W) or K masks; none for a good image)
        and the K saturation areas in pixels at this resolution (see ``saturation_area``)."""
        amap = maps_3d(anomaly_map)
        if amap.shape[0] != 1:
            raise InputError(f"SPROMetrics.update: expected one (H, W) map, got {amap.shape[0]}")
        masks = self._masks(defect_masks, amap.shape[1:])
        if len(saturation_areas) != masks.shape[0]:
            raise InputError(
                f"SPROMetrics.update: {masks.shape[0]} defect masks but {len(saturation_areas)} saturation areas"
            )
        if masks.shape[0] == 0:
            self._store.add(amap.reshape(-1), np.empty(0, np.float32), np.empty(0))
            self.n_good_images += 1
            return self
        for mask, sat in zip(masks, saturation_areas):
            self._add_defect(amap[0][mask], float(sat))
        self.n_anomalous_images += 1
        return self

    @staticmethod
    def _masks(defect_masks: Any, hw: tuple[int, ...]) -> np.ndarray:
        """(K, H, W) bool defect masks from a (K, H, W) / (H, W) array or a sequence of (H, W) masks."""
        if isinstance(defect_masks, (list, tuple)):
            if len(defect_masks) == 0:
                return np.zeros((0, *hw), dtype=bool)
            return np.stack([masks_3d(g, (1, *hw))[0] for g in defect_masks])
        g = to_numpy(defect_masks)
        g = g[None] if g.ndim == 2 else g
        return masks_3d(g, (g.shape[0], *hw))

    def _add_defect(self, scores: np.ndarray, saturation: float) -> None:
        self.n_defects += 1
        if scores.size == 0:
            return  # vanished at this resolution: counts in m, never detected
        if not saturation > 0:
            raise InputError(f"SPROMetrics.update: saturation area must be > 0, got {saturation}")
        pos, w = saturated_weights(scores, saturation)
        self._store.add(np.empty(0, np.float32), pos, w)

    def describe(self) -> dict[str, Any]:
        """Counts and storage mode behind ``compute`` (exact, or binned beyond ``max_exact_pixels``)."""
        return {
            "mode": self._store.mode,
            "fpr_limits": list(self.fpr_limits),
            "n_defects": self.n_defects,
            "n_good_images": self.n_good_images,
            "n_anomalous_images": self.n_anomalous_images,
        }

    def compute(self) -> dict[str, float]:
        """``{"auspro@<limit>": value}`` for every limit; NaN without good images or without defects."""
        st = self._store
        if self.n_defects == 0 or st.n_neg == 0:
            return {f"auspro@{lim:g}": float("nan") for lim in self.fpr_limits}
        s = _curve.integrate(st.curve(), st.n_neg, max(st.n_pos, 1), self.n_defects, self.fpr_limits)
        return {f"auspro@{lim:g}": s.area[lim] for lim in self.fpr_limits}
