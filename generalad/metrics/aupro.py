"""AUPRO, the MVTec per-region-overlap metric (docs/PROTOCOLS.md §3), exact by default.

Definition, for the decision ``a > t`` on raw anomaly maps a and binary ground-truth masks g:

* ``FPR(t) = |B_t ∩ N| / |N|`` with N every pixel with g = 0 in every test image (normal images included);
* ``PRO(t) = (1/|R|) Σ_r |B_t ∩ r| / |r|`` with R the 8-connected components of every mask: each region
  counts the same, whatever its size.

Exact computation (one sort): a region pixel of region r adds ``1/(|R|·|r|)`` to PRO when the threshold
drops below its score, a normal pixel adds ``1/|N|`` to FPR. Sorting the normal and the region pixels
once and sweeping the distinct scores from the top gives every point of the curve; equal scores collapse
into one point (a straight segment, as in the MVTec reference code). The curve is cut at FPR = 0.3 with
linear interpolation, integrated with the trapezoid rule from (0, 0), and divided by 0.3, so a perfect
map scores 1 and a map that ranks every normal pixel above every defect scores 0.

Large inputs switch to the binned curve of ``_curve.py`` (same bins as ``PixelMetrics``); its error
bound is reported by ``PixelMetrics.describe()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import ndimage

from generalad.errors import InputError
from generalad.metrics import _curve
from generalad.metrics._inputs import maps_3d, masks_3d, to_numpy

FPR_LIMIT = 0.3
# 8-connectivity within each image and none across the batch axis: one label() call per batch.
_STRUCTURE_3D = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_3D[1] = True

PIXELS_PER_PASS = 1 << 23  # images are split into passes of about this many pixels (bounds temporaries)


def region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Per anomalous pixel (row-major order of ``masks[masks]``) the weight 1/|r| of its 8-connected
    region, and the number of regions. ``masks`` is (B, H, W) bool; regions never span two images."""
    if not masks.any():
        return np.empty(0, dtype=np.float64), 0
    labels, n_regions = ndimage.label(masks, structure=_STRUCTURE_3D)
    sizes = np.bincount(labels.reshape(-1), minlength=n_regions + 1).astype(np.float64)
    return 1.0 / sizes[labels[masks]], int(n_regions)


def split_pixels(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(normal scores, anomalous scores, their 1/|region| weights, number of regions) of a batch."""
    weights, n_regions = region_weights(masks)
    return maps[~masks], maps[masks], weights, n_regions


def image_passes(n_images: int, pixels_per_image: int) -> Iterable[slice]:
    """Slices over the batch axis holding about ``PIXELS_PER_PASS`` pixels each (at least one image)."""
    step = max(1, PIXELS_PER_PASS // max(pixels_per_image, 1))
    return (slice(i, i + step) for i in range(0, n_images, step))


def aupro(
    maps: Any,
    masks: Any,
    *,
    fpr_limit: float = FPR_LIMIT,
    max_exact_pixels: int = _curve.DEFAULT_MAX_EXACT,
) -> float:
    """Exact AUPRO of anomaly maps against ground-truth masks, normalised by ``fpr_limit``.

    ``maps``/``masks``: (B, H, W) arrays or tensors, or sequences of (H, W) arrays of varying sizes
    (native resolution). NaN when there is no defect region or no normal pixel.
    """
    store = _curve.ScoreStore(max_exact=max_exact_pixels)
    n_regions = 0
    for m, g in _pairs(maps, masks):
        for sl in image_passes(m.shape[0], m.shape[1] * m.shape[2]):
            neg, pos, w, n = split_pixels(m[sl], g[sl])
            store.add(neg, pos, w)
            n_regions += n
    return _curve.summarize(store, n_regions, (fpr_limit,)).area[float(fpr_limit)]


def _pairs(maps: Any, masks: Any) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """Validated (B, H, W) batches from an array pair or from two sequences of per-image arrays."""
    if isinstance(maps, (list, tuple)):
        if not isinstance(masks, (list, tuple)) or len(masks) != len(maps):
            raise InputError("aupro: maps and masks must be sequences of the same length")
        for m, g in zip(maps, masks):
            m3 = maps_3d(m)
            yield m3, masks_3d(g, m3.shape)
        return
    m3 = maps_3d(to_numpy(maps))
    yield m3, masks_3d(masks, m3.shape)
