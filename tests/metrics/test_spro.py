"""sPRO / AUsPRO for MVTec LOCO: hand-computed toy case, saturation rules, and a slow reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from generalad.errors import InputError
from generalad.metrics import resize_masks
from generalad.metrics.spro import SPROMetrics, saturation_area


def _row(values) -> np.ndarray:
    return np.asarray([values], dtype=np.float32)


def test_hand_computed_toy_case() -> None:
    sp = SPROMetrics()
    sp.update(_row([0.7, 0.5] + [0.0] * 8))  # good image: 10 normal pixels
    # defect 1: 10 pixels, saturation 5; the two pixels outside it score 0.95 but are ignored
    d1 = _row([1, 1, 0.6, 0.6, 0.6, 0.4, 0.4, 0.4, 0.4, 0.4, 0.95, 0.95])
    sp.update(d1, [_row([1] * 10 + [0, 0]) > 0], [5])
    # defect 2: 4 pixels, saturation 2 (relative 0.5)
    sp.update(_row([0.8, 0.3, 0.3, 0.3]), np.ones((1, 1, 4), bool), [saturation_area(4, 0.5, True)])
    # curve (FPR, sPRO): (0,0) (0,.2) (0,.45) (.1,.45) (.1,.75) (.2,.75) (.2,1) (1,1)
    got = sp.compute()
    assert got["auspro@0.01"] == pytest.approx(0.45)
    assert got["auspro@0.05"] == pytest.approx(0.45)
    assert got["auspro@0.1"] == pytest.approx(0.45)
    assert got["auspro@0.3"] == pytest.approx((0.045 + 0.075 + 0.1) / 0.3)
    assert got["auspro@1"] == pytest.approx(0.045 + 0.075 + 0.8)
    assert (sp.n_defects, sp.n_good_images, sp.n_anomalous_images) == (2, 1, 2)


def test_saturation_area_rules() -> None:
    assert saturation_area(400, 0.5, True) == 200
    assert saturation_area(400, 100, False) == 100
    assert saturation_area(400, 1000, False) == 400  # clipped to the defect
    assert saturation_area(400, 1000, False, area_scale=0.25) == 250  # mask evaluated at half size


def slow_spro_curve(images) -> tuple[list[float], list[float]]:
    """From the definition: for each distinct score t, FPR on good images and mean saturated overlap.
    ``images``: (map, defect masks, saturation areas) per image; a good image has no defect."""
    good = np.concatenate([m.ravel() for m, d, _ in images if not d])
    defects = [(m[g], s) for m, d, sats in images for g, s in zip(d, sats)]
    values = np.unique(np.concatenate([m.ravel() for m, _, _ in images]))[::-1]
    xs, ys = [0.0], [0.0]
    for t in values:
        xs.append(float(np.mean(good >= t)))
        ys.append(float(np.mean([min(np.sum(a >= t) / s, 1.0) for a, s in defects])))
    return xs, ys


def slow_area(curve: tuple[list[float], list[float]], limit: float) -> float:
    """Trapezoid area under the curve up to FPR = ``limit`` (cut by linear interpolation), / limit."""
    xs, ys = curve
    area = 0.0
    for k in range(1, len(xs)):
        if xs[k] >= limit:
            y_cut = ys[k - 1] + (ys[k] - ys[k - 1]) * (limit - xs[k - 1]) / (xs[k] - xs[k - 1])
            return (area + (limit - xs[k - 1]) * (ys[k - 1] + y_cut) / 2) / limit
        area += (xs[k] - xs[k - 1]) * (ys[k] + ys[k - 1]) / 2
    raise AssertionError("curve never reached the limit")


def slow_auspro(images, limit: float) -> float:
    return slow_area(slow_spro_curve(images), limit)


@pytest.mark.parametrize("seed", range(5))
def test_matches_slow_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(6):
        amap = (rng.integers(0, 30, (9, 11)) * 0.5).astype(np.float32)
        defects, sats = [], []
        if i % 2:
            for _ in range(int(rng.integers(1, 3))):
                g = np.zeros((9, 11), bool)
                y0, x0 = rng.integers(0, 6, 2)
                g[y0 : y0 + rng.integers(1, 4), x0 : x0 + rng.integers(1, 6)] = True
                amap[g] += 3.0
                defects.append(g)
                sats.append(saturation_area(int(g.sum()), float(rng.uniform(0.2, 1.5)), bool(rng.random() < 0.5)))
        images.append((amap, defects, sats))
    sp = SPROMetrics(fpr_limits=(0.05, 0.3, 1.0))
    for amap, defects, sats in images:
        sp.update(amap, defects, sats)
    got = sp.compute()
    for lim in (0.05, 0.3, 1.0):
        assert got[f"auspro@{lim:g}"] == pytest.approx(slow_auspro(images, lim), abs=1e-10)


def test_binned_close_to_exact() -> None:
    rng = np.random.default_rng(7)
    exact, binned = SPROMetrics(), SPROMetrics(max_exact_pixels=2_000)
    for i in range(10):
        amap = rng.normal(size=(48, 48)).astype(np.float32)
        g = np.zeros((48, 48), bool)
        if i % 2:
            g[10:20, 5 : 10 + i] = True
            amap[g] += 1.0
        args = (amap, [g], [g.sum() / 2]) if i % 2 else (amap,)
        exact.update(*args)
        binned.update(*args)
    a, b = exact.compute(), binned.compute()
    assert all(abs(a[k] - b[k]) < 1e-3 for k in a)


def test_undefined_and_errors() -> None:
    sp = SPROMetrics()
    assert all(math.isnan(v) for v in sp.compute().values())
    with pytest.raises(InputError, match="saturation areas"):
        sp.update(np.zeros((4, 4)), [np.ones((4, 4))], [])
    with pytest.raises(InputError, match="saturation area must be > 0"):
        sp.update(np.zeros((4, 4)), [np.ones((4, 4))], [0.0])
    with pytest.raises(ValueError, match="FPR limits"):
        SPROMetrics(fpr_limits=(0.0,))


def test_defect_vanished_at_eval_size_counts_and_scores_zero() -> None:
    """A defect whose mask is empty after resizing still counts in m (it can never be found)."""
    amap = np.arange(16, dtype=np.float32).reshape(4, 4)
    found = np.zeros((4, 4), bool)
    found[3, 3] = True  # the highest pixel: found at once
    both, alone = SPROMetrics(fpr_limits=(1.0,)), SPROMetrics(fpr_limits=(1.0,))
    for sp in (both, alone):
        sp.update(amap - 100.0)  # a good image below every defect pixel: FPR 0 until the defect saturates
    both.update(amap, [found, np.zeros((4, 4), bool)], [1.0, 0.0])
    alone.update(amap, [found], [1.0])
    assert alone.compute()["auspro@1"] == pytest.approx(1.0)
    assert both.compute()["auspro@1"] == pytest.approx(0.5)
    assert both.describe()["n_defects"] == 2 and both.describe()["mode"] == "exact"


def test_absolute_saturation_scales_with_the_evaluation_resolution() -> None:
    """Maps constant on 2x2 blocks, evaluated at half size: area_scale = 1/4 gives the same curve exactly
    (and forgetting it does not)."""
    rng = np.random.default_rng(3)
    good, bad = (np.kron(rng.random((8, 8)), np.ones((2, 2))).astype(np.float32) for _ in range(2))
    mask = np.zeros((16, 16), bool)
    mask[4:12, 2:10] = True

    def auspro(size: int, area_scale: float) -> dict[str, float]:
        g = resize_masks(mask[None], size)[0]
        step = 16 // size
        sp = SPROMetrics()
        sp.update(good[::step, ::step])
        sat = saturation_area(int(g.sum()), 20, False, area_scale=area_scale)
        sp.update((bad + 0.3 * mask)[::step, ::step], [g], [sat])
        return sp.compute()

    assert auspro(8, 0.25) == pytest.approx(auspro(16, 1.0), abs=1e-12)
    assert auspro(8, 1.0)["auspro@1"] < auspro(16, 1.0)["auspro@1"] - 0.05


def test_resize_masks_samples_pixel_centres_and_accepts_no_mask() -> None:
    g = np.zeros((2, 6, 6), bool)
    g[0, :3, :3] = True
    g[1, 3:, 3:] = True
    out = resize_masks(g, (3, 3))
    assert out.dtype == bool and np.array_equal(out, g[:, 1::2, 1::2])  # pixel centres, each mask alone
    assert resize_masks(np.zeros((0, 6, 6), bool), 3).shape == (0, 3, 3)
    with pytest.raises(InputError, match="resize_masks"):
        resize_masks(np.zeros((6, 6)), 3)
