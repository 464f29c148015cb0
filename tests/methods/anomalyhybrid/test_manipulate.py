"""Local structure edits (docs/methods/anomalyhybrid.md §5): regions on the object, operators that change
their map only inside the region, seeded."""

from __future__ import annotations

import numpy as np
import pytest

from generalad.methods.anomalyhybrid.manipulate import (
    OPERATORS, apply_operator, draw_area, foreground, perlin_noise, region,
)


def _object_image(s: int = 64) -> np.ndarray:
    img = np.zeros((s, s, 3), dtype=np.float32)
    yy, xx = np.mgrid[:s, :s]
    img[(yy - 32) ** 2 + (xx - 32) ** 2 < 20**2] = 0.8
    return img


def test_foreground_finds_the_object_and_falls_back_to_everywhere_on_textures() -> None:
    fg = foreground(_object_image())
    assert fg[32, 32] and not fg[2, 2] and 0.2 < fg.mean() < 0.5
    texture = np.random.default_rng(0).uniform(0.3, 0.7, (64, 64, 3)).astype(np.float32)
    assert foreground(texture).all()


@pytest.mark.parametrize("kind", ["ellipse", "perlin"])
def test_regions_are_seeded_and_centred_on_the_object(kind: str) -> None:
    fg = foreground(_object_image())
    a = region(kind, 64, np.random.default_rng(1), fg, area=(0.01, 0.03))
    b = region(kind, 64, np.random.default_rng(1), fg, area=(0.01, 0.03))
    assert np.array_equal(a, b) and a.sum() >= 4
    ys, xs = np.nonzero(a)
    assert fg[int(np.median(ys)), int(np.median(xs))]


def test_region_area_option_spans_its_range_log_uniformly() -> None:
    rng = np.random.default_rng(0)
    wide = (0.001, 0.25)
    draws = np.array([draw_area(rng, wide) for _ in range(2000)])
    assert wide[0] <= draws.min() and draws.max() <= wide[1]
    # log-uniform: the median sits at the geometric mean of the bounds, not the arithmetic one
    assert abs(np.log(np.median(draws)) - np.log(np.sqrt(wide[0] * wide[1]))) < 0.15
    default = np.array([draw_area(rng, None) for _ in range(500)])
    assert 0.003 <= default.min() and default.max() <= 0.03
    everywhere = np.ones((128, 128), dtype=bool)
    for kind in ("ellipse", "perlin"):
        small = np.mean([region(kind, 128, rng, everywhere, area=(0.002, 0.004)).mean() for _ in range(30)])
        large = np.mean([region(kind, 128, rng, everywhere, area=(0.1, 0.2)).mean() for _ in range(30)])
        assert small < 0.006 and 0.04 < large < 0.25, (kind, small, large)


def test_perlin_noise_is_smooth_and_bounded() -> None:
    n = perlin_noise(64, 4, np.random.default_rng(0))
    assert n.shape == (64, 64) and np.abs(n).max() < 1.0
    assert np.abs(np.diff(n, axis=1)).max() < 0.2


@pytest.mark.parametrize("op", sorted(OPERATORS))
def test_operators_edit_their_map_only_inside_the_region(op: str) -> None:
    rng = np.random.default_rng(2)
    maps = rng.uniform(0.2, 0.8, (2, 64, 64)).astype(np.float32)
    donor = rng.uniform(0.0, 1.0, (2, 64, 64)).astype(np.float32)
    r = np.zeros((64, 64), dtype=bool)
    r[20:40, 16:44] = True
    out = apply_operator(op, maps, r, np.random.default_rng(3), donor=donor)
    c = 0 if OPERATORS[op] == "depth" else 1
    assert np.array_equal(out[1 - c], maps[1 - c])  # the other map is untouched
    changed = np.abs(out[c] - maps[c]) > 1e-6
    assert changed.any()
    grown = np.zeros_like(r)
    grown[16:44, 12:48] = True  # soft blends (Gaussian σ = 1, truncated at 4σ) reach 4 px past R
    assert not (changed & ~grown).any()
    assert out.min() >= 0 and out.max() <= 1
