"""Normal-only threshold rules (docs/PROTOCOLS.md §4) on hand-computed data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from generalad.calibration import Calibration, PixelCalibration, ThresholdRule, calibrate, calibrate_pixels
from generalad.errors import ConfigError
from tests.helpers import decide, parse_threshold_rule


def test_quantile_rule_with_enough_scores() -> None:
    scores = np.arange(200, dtype=np.float64)  # 0..199
    cal = calibrate(scores, ThresholdRule("quantile", q=0.99), source="validation/good")
    assert cal.threshold == pytest.approx(np.quantile(scores, 0.99)) == pytest.approx(197.01)
    assert cal.applied == "quantile q=0.99" and cal.n == 200 and cal.source == "validation/good"
    assert cal.rule == {"kind": "quantile", "q": 0.99, "k": 3.0, "target_fpr": 0.01}


def test_quantile_rule_below_100_uses_max() -> None:
    scores = np.linspace(0.0, 1.0, 40)
    cal = calibrate(scores)  # default rule: quantile 0.99
    assert cal.threshold == 1.0
    assert cal.applied.startswith("max") and "have 40" in cal.applied
    assert calibrate(np.arange(100.0)).applied == "quantile q=0.99"  # boundary: 100 is enough


def test_max_and_mean_std_rules() -> None:
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    assert calibrate(scores, ThresholdRule("max")).threshold == 4.0
    cal = calibrate(scores, ThresholdRule("mean_std", k=2.0))
    assert cal.threshold == pytest.approx(2.5 + 2.0 * np.std(scores, ddof=1))
    assert calibrate(np.array([5.0]), ThresholdRule("mean_std")).threshold == 5.0  # n=1: std 0


def test_fpr_rule_realised_rate_within_target() -> None:
    scores = np.arange(1, 201, dtype=np.float64)  # 1..200
    cal = calibrate(scores, ThresholdRule("fpr", target_fpr=0.05))  # 10 of 200 may exceed
    assert cal.threshold == 190.0
    assert np.mean(scores > cal.threshold) == pytest.approx(0.05)
    small = calibrate(scores[:20], ThresholdRule("fpr", target_fpr=0.01))  # 0.2 allowed → 0 → max
    assert small.threshold == 20.0


def test_stats_and_decide() -> None:
    scores = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    cal = calibrate(scores, ThresholdRule("max"))
    assert cal.stats["mean"] == 2.0 and cal.stats["min"] == 0.0 and cal.stats["max"] == 4.0
    assert cal.stats["q50"] == 2.0
    assert set(cal.stats) == {"mean", "std", "min", "max", "q50", "q95", "q99"}
    assert decide(cal, [4.0, 4.0001, -1.0]).tolist() == [0, 1, 0]  # strictly greater


@pytest.mark.parametrize("bad", [np.array([]), [], np.array([1.0, np.nan])])
def test_empty_or_nonfinite_scores_raise(bad: object) -> None:
    with pytest.raises(ConfigError):
        calibrate(bad)


def test_rule_validation_and_parse() -> None:
    with pytest.raises(ConfigError):
        ThresholdRule("median")
    with pytest.raises(ConfigError):
        ThresholdRule(q=1.5)
    assert parse_threshold_rule("fpr:0.05") == ThresholdRule("fpr", target_fpr=0.05)
    assert parse_threshold_rule("mean_std:2") == ThresholdRule("mean_std", k=2.0)
    assert parse_threshold_rule("max") == ThresholdRule("max")
    with pytest.raises(ConfigError):
        parse_threshold_rule("max:3")


def test_round_trip_through_json() -> None:
    cal = calibrate(np.arange(150.0), ThresholdRule("quantile", q=0.95), source="holdout 10% of train/good")
    cal.pixel = calibrate_pixels(np.arange(1000.0).reshape(10, 10, 10), q=0.9)
    back = Calibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    assert back == cal
    with pytest.raises(ConfigError, match="threshold"):
        Calibration.from_dict({"rule": {}, "applied": "", "n": 1, "stats": {}})


def test_normalise_maps_threshold_to_half_and_is_monotone() -> None:
    cal = calibrate(np.array([2.0, 3.0, 4.0, 6.0]), ThresholdRule("max"))  # lo 2, thr 6 → scale [2, 10]
    assert cal.normalise(6.0) == pytest.approx(0.5)
    assert cal.normalise([2.0, 10.0, -5.0, 50.0]).tolist() == [0.0, 1.0, 0.0, 1.0]
    x = np.linspace(-10, 20, 301)
    assert np.all(np.diff(cal.normalise(x)) >= 0)
    flat = calibrate(np.full(5, 3.0), ThresholdRule("max"))  # degenerate: still thr → 0.5, monotone
    assert flat.normalise(3.0) == pytest.approx(0.5)
    assert flat.normalise(2.0) == 0.0 and flat.normalise(4.0) == 1.0


def test_pixel_quantile_exact_when_small() -> None:
    maps = [np.arange(100.0).reshape(10, 10), np.arange(100.0, 150.0).reshape(5, 10)]  # sizes differ
    pc = calibrate_pixels(maps, q=0.5)
    assert pc.mode == "pixels" and pc.n_images == 2 and pc.n_values == pc.n_sampled == 150
    assert pc.threshold == pytest.approx(np.quantile(np.arange(150.0), 0.5))
    lo, hi = pc.display_range()
    assert lo == 0.0 and hi == pytest.approx(2 * pc.threshold)
    assert PixelCalibration.from_dict(json.loads(json.dumps(pc.to_dict()))) == pc


def test_pixel_subsample_is_bounded_seeded_and_close() -> None:
    rng = np.random.default_rng(1)
    maps = rng.random((20, 100, 100)).astype(np.float32)  # 200k pixels
    a = calibrate_pixels(maps, q=0.99, max_samples=20_000, seed=3)
    b = calibrate_pixels(maps, q=0.99, max_samples=20_000, seed=3)
    assert a == b and a.n_sampled <= 20_000 + 20 and a.n_values == 200_000
    assert a.threshold == pytest.approx(np.quantile(maps, 0.99), abs=0.005)


def test_pixel_threshold_accepts_torch_maps_and_converts_to_float() -> None:
    maps = torch.arange(200, dtype=torch.bfloat16).reshape(2, 10, 10)
    pc = calibrate_pixels(maps, q=1.0)
    assert float(pc) == pc.threshold == float(maps.float().max()) and pc.n_images == 2


def test_pixel_threshold_from_maxima() -> None:
    pc = calibrate_pixels([0.5, 0.7, 0.9], q=1.0)
    assert pc.mode == "maxima" and pc.threshold == 0.9 and pc.n_images == 3
    with pytest.raises(ConfigError):
        calibrate_pixels([])
