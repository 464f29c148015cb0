"""Streaming threshold curves over two score populations, exact or binned, with bounded memory.

Every pixel-level metric here (pixel AUROC / AP / F1-max, AUPRO, sPRO) is a functional of one curve:
sweep a threshold t from +inf down and track, for the decision ``score >= t``,

* ``F(t)`` the number of negatives at or above t,
* ``T(t)`` the number of positives at or above t,
* ``W(t)`` the summed *weights* of those positives (1/|region| for PRO, saturated shares for sPRO).

``ScoreStore`` keeps the populations and yields the curve as chunks of per-threshold increments
``(dn, dp, dw)`` in descending threshold order; ``integrate`` turns the chunks into the metrics.

Exact mode (default while the stored values fit ``max_exact``): negatives are stored as float32, positives
as float32 + float64 weight. The curve has one point per distinct score (equal scores collapse into one
point, as scikit-learn and the MVTec reference do). It is produced from two separately sorted arrays in
chunks of ~2M values, so computing never needs more than the stored arrays plus a few chunk buffers.

Binned mode (after the budget is exceeded): values are counted in a histogram whose bins are ranges of
the float32 bit pattern. Level 1 is the top 16 bits of the order-preserving key (sign, exponent and 7
mantissa bits: covers every float, relative width 2**-7); level 2 splits each level-1 cell into 2**k
equal sub-bins, k in 0..16, chosen from the data stored before the switch so that no bin holds more than
~1/n_bins of the negatives or of the positives (k = 16 resolves single float values). The binned curve
is the exact curve evaluated at the bin edges (each edge e is a real decision ``score >= e``) joined by
straight lines, so its error is bounded by what happens inside bins that hold both kinds of value;
``integrate`` reports these bounds (see ``CurveSummary.bounds``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_MAX_EXACT = 200_000_000  # stored values before switching to bins (~0.8 GB of float32)
DEFAULT_BINS = 1 << 18  # target bins: at most ~1/n_bins of either population per bin
CHUNK = 1 << 21  # values per curve chunk / per binning pass (bounds temporaries to tens of MB)

Chunk = tuple[np.ndarray, np.ndarray, np.ndarray]  # dn (int64), dp (int64), dw (float64), descending


def float_keys(x: np.ndarray) -> np.ndarray:
    """Order-preserving map float32 -> uint32: ``a < b`` iff ``key(a) < key(b)``."""
    x = np.asarray(x, dtype=np.float32) + np.float32(0.0)  # -0.0 -> +0.0: equal scores, one key
    u = x.view(np.uint32)
    return np.where(u >> np.uint32(31), ~u, u | np.uint32(0x80000000))


@dataclass(frozen=True)
class BinLayout:
    """Two-level float-bit bins: cell = key >> 16, sub-bin = (key & 0xFFFF) >> shift[cell]."""

    shift: np.ndarray  # uint32 (65536,): 16 - k per level-1 cell
    offset: np.ndarray  # int64 (65537,): first bin index of each cell; offset[-1] = number of bins

    @property
    def n_bins(self) -> int:
        return int(self.offset[-1])

    def index(self, keys: np.ndarray) -> np.ndarray:
        cell = (keys >> np.uint32(16)).astype(np.intp)
        sub = (keys & np.uint32(0xFFFF)) >> self.shift[cell]
        return self.offset[cell] + sub

    @classmethod
    def from_counts(cls, neg_cells: np.ndarray, pos_cells: np.ndarray, n_bins: int) -> BinLayout:
        """Refine each level-1 cell until it holds <= ~1/n_bins of the negatives and of the positives."""
        frac = np.zeros(65536)
        for counts in (neg_cells, pos_cells):
            if counts.sum() > 0:
                frac = np.maximum(frac, counts / counts.sum())
        with np.errstate(divide="ignore"):
            k = np.ceil(np.log2(frac * n_bins))
        k = np.clip(np.nan_to_num(k, neginf=0.0), 0, 16).astype(np.int64)
        offset = np.zeros(65537, dtype=np.int64)
        np.cumsum(np.left_shift(1, k), out=offset[1:])
        return cls(shift=(16 - k).astype(np.uint32), offset=offset)


class ScoreStore:
    """Negatives and weighted positives, exact up to ``max_exact`` stored values, then binned."""

    def __init__(self, max_exact: int = DEFAULT_MAX_EXACT, n_bins: int = DEFAULT_BINS) -> None:
        if n_bins < 1 << 16:
            raise ValueError(f"n_bins must be at least 65536, got {n_bins}")
        self.max_exact = int(max_exact)
        self.n_bins = int(n_bins)
        self.n_neg = 0
        self.n_pos = 0
        self._neg: list[np.ndarray] = []
        self._pos: list[np.ndarray] = []
        self._w: list[np.ndarray] = []
        self.layout: BinLayout | None = None
        self._hist: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def mode(self) -> str:
        return "exact" if self.layout is None else "binned"

    def add(self, neg: np.ndarray, pos: np.ndarray, pos_w: np.ndarray) -> None:
        """Add negative scores and positive scores with their weights (1-D, same length for pos/pos_w)."""
        neg = np.asarray(neg, dtype=np.float32).reshape(-1)
        pos = np.asarray(pos, dtype=np.float32).reshape(-1)
        pos_w = np.asarray(pos_w, dtype=np.float64).reshape(-1)
        if pos.shape != pos_w.shape:
            raise ValueError("pos and pos_w must have the same length")
        self.n_neg += neg.size
        self.n_pos += pos.size
        if self.layout is not None:
            self._bin(neg, pos, pos_w)
            return
        if neg.size:
            self._neg.append(neg)
        if pos.size:
            self._pos.append(pos)
            self._w.append(pos_w)
        if self.n_neg + self.n_pos > self.max_exact:
            self._switch_to_bins()

    # --- binned mode -------------------------------------------------------------------------------
    def _switch_to_bins(self) -> None:
        """Fix the bin layout from everything stored so far, histogram it, and drop the raw values."""
        neg_cells = self._cell_counts(self._neg)
        pos_cells = self._cell_counts(self._pos)
        self.layout = BinLayout.from_counts(neg_cells, pos_cells, self.n_bins)
        nb = self.layout.n_bins
        self._hist = (np.zeros(nb, np.int64), np.zeros(nb, np.int64), np.zeros(nb, np.float64))
        while self._neg:  # pop as we go so memory falls while histogramming
            self._bin(self._neg.pop(), np.empty(0, np.float32), np.empty(0))
        while self._pos:
            self._bin(np.empty(0, np.float32), self._pos.pop(), self._w.pop())

    @staticmethod
    def _cell_counts(parts: list[np.ndarray]) -> np.ndarray:
        counts = np.zeros(65536, dtype=np.int64)
        for part in parts:
            for i in range(0, part.size, CHUNK):
                counts += np.bincount(float_keys(part[i : i + CHUNK]) >> np.uint32(16), minlength=65536)
        return counts

    def _bin(self, neg: np.ndarray, pos: np.ndarray, pos_w: np.ndarray) -> None:
        assert self.layout is not None and self._hist is not None
        hn, hp, hw = self._hist
        nb = self.layout.n_bins
        for i in range(0, neg.size, CHUNK):
            hn += np.bincount(self.layout.index(float_keys(neg[i : i + CHUNK])), minlength=nb)
        for i in range(0, pos.size, CHUNK):
            idx = self.layout.index(float_keys(pos[i : i + CHUNK]))
            hp += np.bincount(idx, minlength=nb)
            hw += np.bincount(idx, weights=pos_w[i : i + CHUNK], minlength=nb)

    # --- curve ---------------------------------------------------------------------------------------
    def curve(self) -> Iterator[Chunk]:
        """Per-threshold increments (dn, dp, dw), thresholds strictly descending across all chunks."""
        if self._hist is not None:
            hn, hp, hw = self._hist
            keep = np.flatnonzero((hn > 0) | (hp > 0))[::-1]
            for i in range(0, keep.size, CHUNK):
                sel = keep[i : i + CHUNK]
                yield hn[sel], hp[sel], hw[sel]
            return
        neg, pos, w = self._sorted()
        yield from _exact_chunks(neg, pos, w)

    def _sorted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Merge the stored parts (in place of the lists) and sort; repeated calls are cheap."""
        neg = _concat_consuming(self._neg, np.float32)
        neg.sort()  # in place: no second copy of the largest array
        pos = _concat_consuming(self._pos, np.float32)
        w = _concat_consuming(self._w, np.float64)
        order = np.argsort(pos, kind="stable")
        pos, w = pos[order], w[order]
        self._neg, self._pos, self._w = [neg], [pos], [w]
        return neg, pos, w


def _concat_consuming(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    """Concatenate and empty ``parts`` one piece at a time, so peak memory is total + one piece."""
    if len(parts) == 1:
        return parts.pop()
    out = np.empty(sum(p.size for p in parts), dtype=dtype)
    at = 0
    while parts:
        p = parts.pop(0)
        out[at : at + p.size] = p
        at += p.size
    return out


def _exact_chunks(neg: np.ndarray, pos: np.ndarray, w: np.ndarray) -> Iterator[Chunk]:
    """Walk two ascending arrays from the top in value ranges of ~CHUNK values each.

    A range is closed at a value present in the data and extended to include all its ties, so a group
    of equal scores is never split between chunks (it must become a single curve point).
    """
    hi_n, hi_p = neg.size, pos.size
    while hi_n > 0 or hi_p > 0:
        cut_n = neg[hi_n - CHUNK] if hi_n > CHUNK else -np.inf
        cut_p = pos[hi_p - CHUNK] if hi_p > CHUNK else -np.inf
        cut = max(cut_n, cut_p)
        lo_n = int(np.searchsorted(neg[:hi_n], cut, side="left")) if hi_n else 0
        lo_p = int(np.searchsorted(pos[:hi_p], cut, side="left")) if hi_p else 0
        yield _chunk_counts(neg[lo_n:hi_n], pos[lo_p:hi_p], w[lo_p:hi_p])
        hi_n, hi_p = lo_n, lo_p


def _chunk_counts(vn: np.ndarray, vp: np.ndarray, wp: np.ndarray) -> Chunk:
    """Distinct values of two sorted slices and the (neg count, pos count, pos weight) at each."""
    un = vn[np.r_[vn[1:] != vn[:-1], True]] if vn.size else vn
    up = vp[np.r_[vp[1:] != vp[:-1], True]] if vp.size else vp
    u = np.sort(np.concatenate([un, up]), kind="stable")  # two sorted runs: a linear merge
    u = u[np.r_[u[1:] != u[:-1], True]] if u.size else u
    n_lo, n_hi = np.searchsorted(vn, u, "left"), np.searchsorted(vn, u, "right")
    p_lo, p_hi = np.searchsorted(vp, u, "left"), np.searchsorted(vp, u, "right")
    cw = np.concatenate([[0.0], np.cumsum(wp)])
    dn, dp, dw = n_hi - n_lo, p_hi - p_lo, cw[p_hi] - cw[p_lo]
    return dn[::-1].astype(np.int64), dp[::-1].astype(np.int64), dw[::-1]


@dataclass
class CurveSummary:
    """Threshold-free metrics of one curve; NaN where undefined. ``area`` maps FPR limit -> normalised area
    of the weighted curve (AUPRO / AUsPRO). ``bounds`` holds worst-case |binned - exact| per metric
    (empty for exact curves); area bounds are keyed ("area", limit)."""

    auroc: float
    ap: float
    f1max: float
    area: dict[float, float]
    bounds: dict = field(default_factory=dict)


def integrate(
    chunks: Iterator[Chunk],
    n_neg: int,
    n_pos: int,
    w_total: float,
    limits: Sequence[float] = (0.3,),
    binned: bool = False,
) -> CurveSummary:
    """Stream the curve once: ROC trapezoid, step-rule AP, F1-max and the weighted-curve areas.

    * AUROC = sum_k (F_k - F_{k-1}) (T_k + T_{k-1}) / (2 N P)   (trapezoid, ties = one point)
    * AP    = sum_k (T_k - T_{k-1}) / P * T_k / (T_k + F_k)      (scikit-learn's step rule)
    * F1max = max_k 2 T_k / (T_k + F_k + P)                      (= 2PR / (P + R) at point k)
    * area(L) = 1/L * integral_0^L W/w_total d(F/N), trapezoid, the last segment cut at F/N = L by
      linear interpolation (MVTec's AUPRO rule).
    """
    limits = tuple(float(x) for x in limits)
    if n_neg == 0 or n_pos == 0:
        nan = float("nan")
        return CurveSummary(nan, nan, nan, {lim: nan for lim in limits}, {})
    acc = _Accumulator(n_neg, n_pos, w_total, limits, binned)
    for dn, dp, dw in chunks:
        acc.add(dn, dp, dw)
    return acc.summary()


class _Accumulator:
    """Running sums for ``integrate``; one instance per curve."""

    def __init__(self, n_neg: int, n_pos: int, w_total: float, limits: tuple[float, ...], binned: bool):
        self.N, self.P, self.R = float(n_neg), float(n_pos), float(w_total)
        self.limits, self.binned = limits, binned
        self.F = self.T = 0
        self.W = 0.0
        self.roc2 = 0.0  # sum dn * (T + T_prev)
        self.ap = 0.0  # sum dp * precision
        self.f1 = 0.0
        self.area_acc = 0.0  # trapezoid area in (FPR, PRO) units so far
        self.area: dict[float, float] = {}
        self.b_roc = self.b_ap = 0.0
        self.b_area = dict.fromkeys(limits, 0.0)
        self.f1_upper = 0.0

    def add(self, dn: np.ndarray, dp: np.ndarray, dw: np.ndarray) -> None:
        F = self.F + np.cumsum(dn)
        T = self.T + np.cumsum(dp)
        W = self.W + np.cumsum(dw)
        Fp = np.concatenate([[self.F], F[:-1]])
        Tp = np.concatenate([[self.T], T[:-1]])
        Wp = np.concatenate([[self.W], W[:-1]])
        self.roc2 += float(np.sum(dn * (T + Tp).astype(np.float64)))
        with np.errstate(divide="ignore", invalid="ignore"):
            prec = np.where(dp > 0, T / (T + F), 0.0)
        self.ap += float(np.sum(dp * prec))
        self.f1 = max(self.f1, float(np.max(2.0 * T / (T + F + self.P))))
        self._areas(F / self.N, Fp / self.N, W / self.R, Wp / self.R)
        if self.binned:
            self._bounds(dn, dp, dw, F, T, Fp, Tp)
        self.F, self.T, self.W = int(F[-1]), int(T[-1]), float(W[-1])

    def _areas(self, x: np.ndarray, xp: np.ndarray, y: np.ndarray, yp: np.ndarray) -> None:
        seg = (x - xp) * (y + yp) * 0.5
        csum = self.area_acc + np.cumsum(seg)
        for lim in self.limits:
            if lim in self.area:
                continue
            k = int(np.searchsorted(x, lim, side="left"))  # first point with FPR >= lim
            if k == x.size:
                continue
            before = csum[k - 1] if k > 0 else self.area_acc
            # x[k] >= lim > xp[k] (xp[k] is the previous point's FPR), so the division is safe
            y_lim = yp[k] + (y[k] - yp[k]) * (lim - xp[k]) / (x[k] - xp[k])
            self.area[lim] = float((before + (lim - xp[k]) * (yp[k] + y_lim) * 0.5) / lim)
        self.area_acc = float(csum[-1])

    def _bounds(self, dn, dp, dw, F, T, Fp, Tp) -> None:
        """Worst case of the exact curve inside each bin (see module docstring)."""
        # ROC / PRO: inside a bin the exact curve is monotone between the bin's two corner points and the
        # binned curve is their diagonal, so the areas differ by at most half the corner rectangle.
        self.b_roc += float(np.sum(dn * dp.astype(np.float64))) * 0.5
        rect = dn * dw * 0.5
        for lim in self.limits:
            self.b_area[lim] += float(np.sum(rect[Fp / self.N < lim]))
        # AP: inside a bin holding positives, each sub-step's precision lies in
        # [(Tp + 1) / (Tp + 1 + F), T / (T + Fp)], which also holds the binned (endpoint) precision.
        has_pos = dp > 0
        if has_pos.any():
            t, tp, f, fp = T[has_pos], Tp[has_pos], F[has_pos], Fp[has_pos]
            self.b_ap += float(np.sum(dp[has_pos] * (t / (t + fp) - (tp + 1) / (tp + 1 + f))))
            # F1 = 2T / (T + F + P) grows with T and falls with F: T and Fp bound it inside the bin.
            self.f1_upper = max(self.f1_upper, float(np.max(2.0 * t / (t + fp + self.P))))

    def summary(self) -> CurveSummary:
        area = {lim: self.area.get(lim, math.nan) for lim in self.limits}
        bounds: dict = {}
        if self.binned:
            bounds = {
                "auroc": self.b_roc / (self.N * self.P),
                "ap": self.b_ap / self.P,
                "f1max": max(0.0, self.f1_upper - self.f1),
                **{("area", lim): b / (self.N * self.R * lim) for lim, b in self.b_area.items()},
            }
        return CurveSummary(
            auroc=self.roc2 / (2.0 * self.N * self.P),
            ap=self.ap / self.P,
            f1max=self.f1,
            area=area,
            bounds=bounds,
        )
