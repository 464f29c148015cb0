"""Decision thresholds from normal-only calibration scores (docs/PROTOCOLS.md §4).

A deployable threshold may never be tuned on test labels. It is computed from scores of normal images
the model was not fitted on (``validation/good`` or a held-out slice of ``train/good``) with one of the
rules of :class:`ThresholdRule`, and stored — with the rule, the calibration size and score statistics —
in the model file via :meth:`Calibration.to_dict`.

The decision is always ``score > threshold`` on RAW scores. :meth:`Calibration.normalise` exists only to
colour heat maps and show UI numbers; no metric or decision uses it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from generalad.errors import ConfigError

RULE_KINDS = ("quantile", "max", "mean_std", "fpr")
MIN_QUANTILE_N = 100  # below this a 0.99 quantile is an interpolation between the top scores: use the max
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class ThresholdRule:
    """How to turn normal-only calibration scores into an image threshold.

    kind: "quantile" (q-quantile; the max when fewer than 100 scores), "max", "mean_std" (mean + k·std,
    sample std), or "fpr" (largest-tail cut whose false-alarm rate on the calibration scores is at most
    ``target_fpr``).
    """

    kind: str = "quantile"
    q: float = 0.99
    k: float = 3.0
    target_fpr: float = 0.01

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            choices = ", ".join(RULE_KINDS)
            raise ConfigError(f"threshold rule: unknown kind {self.kind!r} (choose from {choices})")
        if not 0.0 < self.q <= 1.0:
            raise ConfigError(f"threshold rule: q must be in (0, 1], got {self.q}")
        if not (math.isfinite(self.k) and self.k >= 0.0):
            raise ConfigError(f"threshold rule: k must be a finite number >= 0, got {self.k}")
        if not 0.0 <= self.target_fpr < 1.0:
            raise ConfigError(f"threshold rule: target_fpr must be in [0, 1), got {self.target_fpr}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ThresholdRule:
        known = {k: d[k] for k in ("kind", "q", "k", "target_fpr") if k in d}
        return cls(**known)


def _as_scores(scores: Any, what: str) -> np.ndarray:
    a = np.asarray(_to_numpy(scores), dtype=np.float64).ravel()
    if a.size == 0:
        raise ConfigError(f"{what}: no calibration scores (need at least one normal calibration image)")
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise ConfigError(f"{what}: {bad} of {a.size} calibration scores are NaN or infinite")
    return a


def _to_numpy(x: Any) -> Any:
    if hasattr(x, "detach"):  # torch tensor without importing torch here
        t = x.detach().cpu()
        if str(t.dtype) in ("torch.bfloat16", "torch.float16"):  # numpy has no bfloat16
            t = t.float()
        return t.numpy()
    return x


def _score_stats(a: np.ndarray) -> dict[str, float]:
    q50, q95, q99 = np.quantile(a, [0.5, 0.95, 0.99])
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "min": float(a.min()),
        "max": float(a.max()),
        "q50": float(q50),
        "q95": float(q95),
        "q99": float(q99),
    }


def _apply_rule(a: np.ndarray, rule: ThresholdRule) -> tuple[float, str]:
    """Returns (threshold, description of what was effectively applied)."""
    n = a.size
    if rule.kind == "max" or (rule.kind == "quantile" and rule.q >= 1.0):
        return float(a.max()), "max"
    if rule.kind == "quantile":
        if n < MIN_QUANTILE_N:
            return float(a.max()), f"max (quantile q={rule.q} needs >= {MIN_QUANTILE_N} scores, have {n})"
        return float(np.quantile(a, rule.q)), f"quantile q={rule.q}"
    if rule.kind == "mean_std":
        std = float(a.std(ddof=1)) if n > 1 else 0.0
        return float(a.mean() + rule.k * std), f"mean + {rule.k}*std"
    # fpr: allow at most floor(target·n) calibration scores strictly above the threshold. Picking an
    # observed score (not an interpolation) makes the realised calibration FPR <= target exactly.
    allowed = int(math.floor(rule.target_fpr * n + 1e-9))
    thr = float(np.sort(a)[n - 1 - allowed])
    realised = float(np.count_nonzero(a > thr)) / n
    return thr, f"fpr target={rule.target_fpr} (calibration fpr={realised:.4g})"


# --------------------------------------------------------------------------- pixel threshold


@dataclass
class PixelCalibration:
    """Pixel-level threshold for predicted masks / regions, with the sampled pixel-score statistics."""

    threshold: float
    q: float
    mode: str  # "pixels" (quantile of pixel scores) or "maxima" (quantile of per-image map maxima)
    n_images: int
    n_values: int  # pixel scores (or maxima) available
    n_sampled: int  # values the quantile was computed on (bounded subsample)
    stats: dict[str, float] = field(default_factory=dict)

    def __float__(self) -> float:  # ``float(calibrate_pixels(...))`` gives the threshold
        return self.threshold

    def display_range(self) -> tuple[float, float]:
        """Fixed colour scale for heat maps: [min, 2·thr − min], so the pixel threshold sits mid-scale."""
        lo = min(self.stats.get("min", self.threshold), self.threshold)
        return _display_range(lo, self.threshold)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PixelCalibration:
        try:
            return cls(
                threshold=float(d["threshold"]),
                q=float(d["q"]),
                mode=str(d["mode"]),
                n_images=int(d["n_images"]),
                n_values=int(d["n_values"]),
                n_sampled=int(d["n_sampled"]),
                stats={k: float(v) for k, v in dict(d.get("stats") or {}).items()},
            )
        except KeyError as e:
            raise ConfigError(f"pixel calibration record: missing key {e.args[0]!r}") from None


def _split_inputs(maps_or_maxima: Any) -> tuple[list[np.ndarray], bool]:
    """Returns (arrays, is_maxima). A 1-D array or a sequence of scalars means per-image maxima."""
    x = _to_numpy(maps_or_maxima)
    if isinstance(x, np.ndarray):
        if x.ndim <= 1:
            return [x.ravel()], True
        return ([x] if x.ndim == 2 else list(x)), False  # (N, H, W): N views, no copy
    items = [np.asarray(_to_numpy(m)) for m in x]
    if items and all(m.ndim == 0 for m in items):
        return [np.array([float(m) for m in items])], True
    return items, False


def calibrate_pixels(
    maps_or_maxima: Sequence[Any] | np.ndarray | Iterable[Any],
    q: float = 0.999,
    *,
    max_samples: int = 1_000_000,
    seed: int = 0,
) -> PixelCalibration:
    """Pixel threshold = q-quantile of calibration pixel scores (or of per-image maxima).

    ``maps_or_maxima``: a (N, H, W) array, a list of (H, W) maps (sizes may differ), or a 1-D array /
    list of per-image map maxima. Pixel scores are subsampled (seeded, with replacement, proportional
    to each map's size) to at most ``max_samples`` values, so memory stays ~8 MB however many
    calibration images there are; when everything fits, the quantile is exact.
    """
    if not 0.0 < q <= 1.0:
        raise ConfigError(f"pixel threshold: q must be in (0, 1], got {q}")
    arrays, is_maxima = _split_inputs(maps_or_maxima)
    sizes = [int(a.size) for a in arrays]
    total = sum(sizes)
    if total == 0:
        raise ConfigError("pixel threshold: no calibration maps (need at least one normal calibration image)")
    rng = np.random.default_rng(seed)
    parts = []
    for a, size in zip(arrays, sizes):
        flat = np.asarray(a).ravel()
        if total > max_samples:  # proportional share, at least one value from every map
            k = max(1, int(round(max_samples * size / total)))
            flat = flat[rng.integers(0, size, k)]  # index before converting: no full-size copy
        parts.append(flat.astype(np.float64))
    sample = np.concatenate(parts)
    sample = _as_scores(sample, "pixel threshold")
    n_images = sample.size if is_maxima else len(arrays)
    q50, q99 = np.quantile(sample, [0.5, 0.99])
    return PixelCalibration(
        threshold=float(np.quantile(sample, q)),
        q=float(q),
        mode="maxima" if is_maxima else "pixels",
        n_images=n_images,
        n_values=total,
        n_sampled=int(sample.size),
        stats={"min": float(sample.min()), "q50": float(q50), "q99": float(q99), "max": float(sample.max())},
    )


# --------------------------------------------------------------------------- image calibration


def _display_range(lo: float, thr: float) -> tuple[float, float]:
    span = thr - lo
    if span <= 0.0:  # degenerate calibration (all scores equal): any positive span keeps thr mid-scale
        span = max(abs(thr), 1.0) * 1e-6
    return thr - span, thr + span


@dataclass
class Calibration:
    """An image threshold and how it was obtained (stored in the model file as JSON)."""

    threshold: float
    rule: dict[str, Any]
    applied: str  # what was effectively used, e.g. "max (quantile q=0.99 needs >= 100 scores, have 40)"
    n: int
    source: str  # where the calibration scores came from, e.g. "holdout 10% of train/good"
    stats: dict[str, float]  # mean, std, min, max, q50, q95, q99 of the calibration scores
    pixel: PixelCalibration | None = None

    def display_range(self) -> tuple[float, float]:
        """(lo, hi) of the display scale: lo = min(calibration min, threshold), hi = 2·threshold − lo."""
        return _display_range(min(self.stats["min"], self.threshold), self.threshold)

    def normalise(self, scores: Any) -> np.ndarray:
        """DISPLAY ONLY: map raw scores to [0, 1] with the threshold at exactly 0.5.

        Linear in the raw score on [lo, 2·thr − lo] with lo = min(calibration min, threshold), clipped to
        [0, 1] — hence monotone (non-decreasing). Scores above the threshold land above 0.5 (up to
        rounding), but clipping loses information: never compute metrics or decisions from these values.
        """
        lo, hi = self.display_range()  # symmetric around the threshold, so it lands on 0.5
        s = np.asarray(_to_numpy(scores), dtype=np.float64)
        return np.clip((s - lo) / (hi - lo), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pixel"] = self.pixel.to_dict() if self.pixel is not None else None
        d["format"] = FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        try:
            pixel = d.get("pixel")
            return cls(
                threshold=float(d["threshold"]),
                rule=ThresholdRule.from_dict(d["rule"]).to_dict(),
                applied=str(d["applied"]),
                n=int(d["n"]),
                source=str(d.get("source", "")),
                stats={k: float(v) for k, v in dict(d["stats"]).items()},
                pixel=PixelCalibration.from_dict(pixel) if pixel else None,
            )
        except KeyError as e:
            raise ConfigError(f"calibration record: missing key {e.args[0]!r}") from None


def calibrate(scores: Any, rule: ThresholdRule | None = None, *, source: str = "") -> Calibration:
    """Image threshold from normal-only calibration ``scores`` with ``rule`` (default: 0.99 quantile).

    Raises :class:`ConfigError` on an empty array or non-finite scores.
    """
    rule = rule or ThresholdRule()
    a = _as_scores(scores, "image threshold")
    threshold, applied = _apply_rule(a, rule)
    return Calibration(
        threshold=threshold,
        rule=rule.to_dict(),
        applied=applied,
        n=int(a.size),
        source=source,
        stats=_score_stats(a),
    )
