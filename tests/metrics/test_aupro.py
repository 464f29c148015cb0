"""AUPRO: hand-computed toy cases, invariances, equal region weighting, and a slow reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from generalad.metrics import PixelMetrics, aupro
from generalad.metrics import _curve
from generalad.metrics.aupro import region_weights


def slow_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """Straight from the definition: one curve point per distinct score, loops everywhere."""
    regions = []
    for amap, mask in zip(maps, masks):
        labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [amap[labels == r] for r in range(1, n + 1)]
    normal = np.concatenate([m[~g] for m, g in zip(maps, masks)])
    xs, ys = [0.0], [0.0]
    for t in np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]:
        xs.append(float(np.mean(normal >= t)))
        ys.append(float(np.mean([np.mean(r >= t) for r in regions])))
    area = 0.0
    for k in range(1, len(xs)):
        if xs[k] >= limit:
            y_cut = ys[k - 1] + (ys[k] - ys[k - 1]) * (limit - xs[k - 1]) / (xs[k] - xs[k - 1])
            return (area + (limit - xs[k - 1]) * (ys[k - 1] + y_cut) / 2) / limit
        area += (xs[k] - xs[k - 1]) * (ys[k] + ys[k - 1]) / 2
    raise AssertionError("curve never reached the limit")


def _row(scores, mask) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray([[scores]], np.float32), np.asarray([[mask]], bool)


def test_two_regions_of_different_sizes_hand_computed() -> None:
    # big region = pixels 0-3 (size 4), small region = pixel 6 (size 1); normals 4, 5, 7, 8, 9
    maps, masks = _row([9, 9, 2, 2, 5, 0, 10, 0, 0, 0], [1, 1, 1, 1, 0, 0, 1, 0, 0, 0])
    # curve: (0,0) (0,.5) (0,.75) (.2,.75) (.2,1) (1,1) -> area to .3 = .2*.75 + .1*1 = .25
    assert aupro(maps, masks) == pytest.approx(0.25 / 0.3, abs=1e-12)
    m = PixelMetrics(None).update(maps, masks).compute()
    assert m["pixel_aupro"] == pytest.approx(0.25 / 0.3, abs=1e-12)
    assert m["pixel_auroc"] == pytest.approx(23 / 25, abs=1e-12)
    assert m["pixel_ap"] == pytest.approx(0.2 + 0.4 + 0.4 * 5 / 6, abs=1e-12)
    assert m["pixel_f1max"] == pytest.approx(10 / 11, abs=1e-12)


def test_ties_collapse_into_one_point() -> None:
    # region of 2 pixels; one defect pixel ties with one normal pixel at 0.5
    maps, masks = _row([1.0, 0.5, 0.5, 0.0], [1, 1, 0, 0])
    # (0,.5) -> (.5,1) is one straight segment: PRO(.3) = .8, area = .3 * (.5 + .8) / 2
    assert aupro(maps, masks) == pytest.approx(0.3 * 1.3 / 2 / 0.3, abs=1e-12)


def test_perfect_and_inverted_maps() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 32, 32), bool)
    masks[0, 3:9, 4:20] = True
    masks[1, 20:22, 20:30] = True
    masks[1, 0, 0] = True
    perfect = np.where(masks, 1.0 + rng.random(masks.shape), rng.random(masks.shape))
    assert aupro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro(-perfect, masks) == 0.0


def test_regions_weighted_equally_regardless_of_size() -> None:
    rng = np.random.default_rng(1)
    masks = np.zeros((1, 40, 40), bool)
    masks[0, 2:18, 2:18] = True  # 256 pixels
    masks[0, 30, 30] = True  # 1 pixel
    normal = rng.uniform(0.2, 0.8, masks.shape)
    big_found = np.where(masks, 0.0, normal)
    big_found[0, 2:18, 2:18] = 1.0
    small_found = np.where(masks, 0.0, normal)
    small_found[0, 30, 30] = 1.0
    # either way one region out of two is found at FPR = 0 and the other only at FPR = 1
    assert aupro(big_found, masks) == pytest.approx(0.5, abs=1e-12)
    assert aupro(small_found, masks) == pytest.approx(0.5, abs=1e-12)


def test_eight_connectivity() -> None:
    mask = np.zeros((1, 5, 5), bool)
    mask[0, 0, 0] = mask[0, 1, 1] = True  # diagonal neighbours: one region under 8-connectivity
    mask[0, 4, 4] = True
    w, n = region_weights(mask)
    assert n == 2 and np.allclose(sorted(w), [0.5, 0.5, 1.0])
    amap = np.full(mask.shape, 0.5)
    amap[0, 0, 0] = amap[0, 1, 1] = 1.0
    amap[0, 4, 4] = 0.0
    assert aupro(amap, mask) == pytest.approx(0.5)  # 4-connectivity would give 2/3


def test_regions_never_span_two_images_of_a_batch() -> None:
    masks = np.zeros((2, 4, 4), bool)
    masks[:, 1:3, 1:3] = True  # same place in both images: two regions, not one
    w, n = region_weights(masks)
    assert n == 2 and np.allclose(w, 0.25)


def test_invariant_to_monotone_transforms() -> None:
    rng = np.random.default_rng(2)
    masks = rng.random((4, 16, 16)) < 0.15
    base = rng.integers(0, 200, masks.shape).astype(np.float64) + 40 * masks
    ref = aupro(base, masks)
    for f in (lambda x: 3 * x + 7, lambda x: x**3, lambda x: np.exp(x / 50)):
        assert aupro(f(base), masks) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("seed", range(8))
def test_matches_slow_reference_on_random_inputs(seed: int, monkeypatch) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 4)), int(rng.integers(4, 14)), int(rng.integers(4, 14)))
    masks = ndimage.binary_dilation(rng.random(shape) < 0.05, structure=np.ones((1, 2, 2)))
    masks[0, 0, 0] = True
    maps = (rng.integers(0, int(rng.integers(3, 40)), shape) * 0.25 + 2.0 * masks * rng.random()).astype(np.float32)
    limit = float(rng.choice([0.05, 0.3, 1.0]))
    monkeypatch.setattr(_curve, "CHUNK", 5)  # walk the curve in many small chunks over many blocks
    monkeypatch.setattr(_curve, "NEG_BLOCK", 17)
    monkeypatch.setattr(_curve, "POS_BLOCK", 3)
    assert aupro(maps, masks, fpr_limit=limit) == pytest.approx(slow_aupro(maps, masks, limit), abs=1e-10)


def test_list_of_native_size_images() -> None:
    rng = np.random.default_rng(3)
    maps = [rng.random((10, 12)).astype(np.float32), rng.random((7, 9)).astype(np.float32)]
    masks = [np.zeros((10, 12), bool), np.zeros((7, 9), bool)]
    masks[0][0, 0] = True
    masks[1][2:4, 3:6] = True
    maps[1][2:4, 3:6] += 0.3
    assert aupro(maps, masks) == pytest.approx(slow_aupro(maps, masks), abs=1e-12)


def test_undefined_without_regions() -> None:
    assert math.isnan(aupro(np.random.default_rng(0).random((2, 8, 8)), np.zeros((2, 8, 8), bool)))


def test_binned_path_close_to_exact() -> None:
    rng = np.random.default_rng(4)
    masks = np.zeros((12, 64, 64), bool)
    for i in range(0, 12, 2):
        masks[i, 10 + i : 20 + 2 * i, 5:30] = True
    maps = ndimage.gaussian_filter(rng.normal(size=masks.shape), (0, 2, 2)) + 0.3 * masks
    exact = aupro(maps, masks)
    binned = aupro(maps, masks, max_exact_pixels=10_000)
    assert abs(binned - exact) < 1e-4
