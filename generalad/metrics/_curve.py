"""Streaming threshold curves over two score populations, exact or binned, with bounded memory.

Every pixel-level metric here (pixel AUROC / AP / F1-max, AUPRO, sPRO) is a functional of one curve:
sweep a threshold t from +inf down and track, for the decision ``score >= t``,

* ``F(t)`` the number of negatives at or above t,
* ``T(t)`` the number of positives at or above t,
* ``W(t)`` the summed *weights* of those positives (1/|region| for PRO, saturated shares for sPRO).

``ScoreStore`` keeps the populations and yields the curve as chunks of per-threshold increments
``(dn, dp, dw)`` in descending threshold order; ``integrate`` turns the chunks into the metrics.

Exact mode (default while the stored values fit ``max_exact``): negatives are stored as float32, positives
as float32 + float64 weight, in fixed-size blocks that are sorted when they fill up (``SortedBlocks``).
The curve has one point per distinct score (equal scores collapse into one point, as scikit-learn and
the MVTec reference do). It is produced by walking all sorted blocks from the top in value ranges of
~1M values, so computing needs only the stored values plus a few chunk buffers (no concatenated copy).

Binned mode (after the budget is exceeded): values are counted in a histogram whose bins are ranges of
the float32 bit pattern. Level 1 is the top 16 bits of the order-preserving key (sign, exponent and 7
mantissa bits: covers every float, relative width 2**-7); level 2 splits each level-1 cell into 2**k
equal sub-bins, k in 0..16, chosen from the data stored before the switch so that no bin holds more than
~1/n_bins of the negatives or of the positives (k = 16 resolves single float values). The binned curve
is the exact curve evaluated at the bin edges (each edge e is a real decision ``score >= e``) joined by
straight lines, so its error is bounded by what happens inside bins that hold several distinct scores
(each bin's smallest and largest score are tracked, so bins of tied scores count as exact);
``ScoreStore.error_bounds`` computes these bounds and ``summarize`` attaches them to the result.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_MAX_EXACT = 200_000_000  # stored values before switching to bins (~0.8 GB of float32)
DEFAULT_BINS = 1 << 18  # target bins: at most ~1/n_bins of either population per bin
CHUNK = 1 << 20  # values per curve chunk / per binning pass (bounds temporaries to tens of MB)

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


class SortedBlocks:
    """Append-only float32 values (optionally with float64 weights) kept in fixed-capacity blocks.

    A block is sorted (weights carried along) as soon as it is full, so the sorting work happens during
    the updates and nothing is ever concatenated: memory is the data itself plus the untouched tail of
    the open block (``np.empty`` pages are not resident until written). Blocks of >= 16 MB are
    served by mmap and returned to the system when freed.
    """

    def __init__(self, capacity: int, weighted: bool) -> None:
        self.capacity = int(capacity)
        self.weighted = weighted
        self.sealed: list[tuple[np.ndarray, np.ndarray | None]] = []
        self._buf: np.ndarray | None = None
        self._wbuf: np.ndarray | None = None
        self._fill = 0
        self.size = 0

    def append(self, values: np.ndarray, weights: np.ndarray | None = None) -> None:
        at = 0
        while at < values.size:
            if self._buf is None:
                self._buf = np.empty(self.capacity, np.float32)
                self._wbuf = np.empty(self.capacity, np.float64) if self.weighted else None
            take = min(self.capacity - self._fill, values.size - at)
            self._buf[self._fill : self._fill + take] = values[at : at + take]
            if self._wbuf is not None and weights is not None:
                self._wbuf[self._fill : self._fill + take] = weights[at : at + take]
            self._fill += take
            at += take
            if self._fill == self.capacity:
                self._seal()
        self.size += values.size

    def _seal(self) -> None:
        if self._buf is None or self._fill == 0:
            return
        vals = self._buf[: self._fill]
        w = self._wbuf[: self._fill] if self._wbuf is not None else None
        if w is None:
            vals.sort()  # in place
        else:
            order = np.argsort(vals, kind="stable")
            vals, w = vals[order], w[order]
        self.sealed.append((vals, w))
        self._buf, self._wbuf, self._fill = None, None, 0

    def views(self) -> list[np.ndarray]:
        """Every stored value block (the open one unsorted), without changing anything."""
        open_block = [] if self._buf is None else [self._buf[: self._fill]]
        return [v for v, _ in self.sealed] + open_block

    def blocks(self) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """All values as ascending blocks (the open block is sealed first)."""
        self._seal()
        return self.sealed

    def drain(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """Yield and forget every block (unsorted tail included), releasing memory as it goes."""
        if self._buf is not None:
            tail = (self._buf[: self._fill], None if self._wbuf is None else self._wbuf[: self._fill])
            self._buf, self._wbuf, self._fill = None, None, 0
            yield tail
        while self.sealed:
            yield self.sealed.pop()
        self.size = 0


NEG_BLOCK = 1 << 24  # 64 MB of float32 normal scores per block
POS_BLOCK = 1 << 22  # 48 MB of (float32, float64) per block; the argsort buffer stays at 32 MB


class ScoreStore:
    """Negatives and weighted positives, exact up to ``max_exact`` stored values, then binned."""

    def __init__(self, max_exact: int = DEFAULT_MAX_EXACT, n_bins: int = DEFAULT_BINS) -> None:
        if n_bins < 1 << 16:
            raise ValueError(f"n_bins must be at least 65536, got {n_bins}")
        self.max_exact = int(max_exact)
        self.n_bins = int(n_bins)
        self.n_neg = 0
        self.n_pos = 0
        self._neg = SortedBlocks(NEG_BLOCK, weighted=False)
        self._pos = SortedBlocks(POS_BLOCK, weighted=True)
        self.layout: BinLayout | None = None
        self._hist: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def mode(self) -> str:
        return "exact" if self.layout is None else "binned"

    @property
    def n_stored(self) -> int:
        """Raw values held in memory (0 once binned)."""
        return self._neg.size + self._pos.size

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
        self._neg.append(neg)
        self._pos.append(pos, pos_w)
        if self.n_stored > self.max_exact:
            self._switch_to_bins()

    # --- binned mode -------------------------------------------------------------------------------
    def _switch_to_bins(self) -> None:
        """Fix the bin layout from everything stored so far, histogram it, and drop the raw values."""
        neg_cells = self._cell_counts(self._neg)
        pos_cells = self._cell_counts(self._pos)
        self.layout = BinLayout.from_counts(neg_cells, pos_cells, self.n_bins)
        nb = self.layout.n_bins
        self._hist = (np.zeros(nb, np.int64), np.zeros(nb, np.int64), np.zeros(nb, np.float64))
        self._kmin = np.full(nb, np.iinfo(np.uint32).max, np.uint32)
        self._kmax = np.zeros(nb, np.uint32)
        empty = np.empty(0, np.float32)
        for vals, _ in self._neg.drain():
            self._bin(vals, empty, np.empty(0))
        for vals, w in self._pos.drain():
            self._bin(empty, vals, w)

    @staticmethod
    def _cell_counts(blocks: SortedBlocks) -> np.ndarray:
        counts = np.zeros(65536, dtype=np.int64)
        for vals in blocks.views():
            for i in range(0, vals.size, CHUNK):
                counts += np.bincount(float_keys(vals[i : i + CHUNK]) >> np.uint32(16), minlength=65536)
        return counts

    def _bin(self, neg: np.ndarray, pos: np.ndarray, pos_w: np.ndarray) -> None:
        assert self.layout is not None and self._hist is not None
        hn, hp, hw = self._hist
        nb = self.layout.n_bins
        for i in range(0, neg.size, CHUNK):
            hn += np.bincount(self._index(neg[i : i + CHUNK]), minlength=nb)
        for i in range(0, pos.size, CHUNK):
            idx = self._index(pos[i : i + CHUNK])
            hp += np.bincount(idx, minlength=nb)
            hw += np.bincount(idx, weights=pos_w[i : i + CHUNK], minlength=nb)

    def _index(self, values: np.ndarray) -> np.ndarray:
        """Bin of each value; also tracks each bin's smallest and largest key, so that bins holding a
        single distinct score (real ties, e.g. quantised maps) are known to be exact."""
        assert self.layout is not None
        keys = float_keys(values)
        idx = self.layout.index(keys)
        np.minimum.at(self._kmin, idx, keys)
        np.maximum.at(self._kmax, idx, keys)
        return idx

    def error_bounds(self, w_total: float, limits: tuple[float, ...], f1max: float) -> dict:
        """Worst-case |binned - exact| per metric, from the histogram (see the module docstring).

        Only bins holding several distinct scores can hide curve points; inside such a bin the exact
        curve runs monotonically between the bin's two corner points while the binned curve is their
        diagonal, so ROC / PRO areas differ by at most half the corner rectangle, each AP sub-step's
        precision lies in [(Tp + 1) / (Tp + 1 + F), T / (T + Fp)], and F1 = 2T / (T + F + P) is at most
        2T / (T + Fp + P).
        """
        assert self._hist is not None and self.layout is not None
        hn, hp, hw = self._hist
        keep = np.flatnonzero((hn > 0) | (hp > 0))[::-1]
        dn, dp, dw = hn[keep], hp[keep], hw[keep]
        wide = (self._kmin != self._kmax)[keep]  # bins holding one distinct score cannot err
        F, T = np.cumsum(dn).astype(np.float64), np.cumsum(dp).astype(np.float64)
        Fp, Tp = F - dn, T - dp
        N, P = float(self.n_neg), float(self.n_pos)
        rect = 0.5 * dn * dw * wide
        bounds: dict = {
            "auroc": 0.5 * float(np.sum(dn * dp.astype(np.float64) * wide)) / (N * P),
            **{("area", lim): float(np.sum(rect[Fp / N < lim])) / (N * w_total * lim) for lim in limits},
        }
        sub = wide & (dp > 0)
        t, tp, f, fp = T[sub], Tp[sub], F[sub], Fp[sub]
        bounds["ap"] = float(np.sum(dp[sub] * (t / (t + fp) - (tp + 1) / (tp + 1 + f)))) / P
        f1_upper = float(np.max(2.0 * t / (t + fp + P))) if t.size else 0.0
        bounds["f1max"] = max(0.0, f1_upper - f1max)
        return bounds

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
        yield from _exact_chunks(self._neg.blocks(), self._pos.blocks())


def _exact_chunks(
    neg_blocks: list[tuple[np.ndarray, np.ndarray | None]],
    pos_blocks: list[tuple[np.ndarray, np.ndarray | None]],
) -> Iterator[Chunk]:
    """Walk ascending blocks from the top in value ranges of about CHUNK values.

    Each step cuts at a value present in the data such that no block gives more than ~CHUNK / n_blocks
    values, and takes every value >= the cut from every block: a group of equal scores is never split
    between steps (it must become a single curve point).
    """
    blocks = [(v, w, True) for v, w in neg_blocks] + [(v, w, False) for v, w in pos_blocks]
    blocks = [b for b in blocks if b[0].size]
    hi = [b[0].size for b in blocks]
    step = max(1, CHUNK // max(len(blocks), 1))
    while any(hi):
        cut = max(v[h - step] if h > step else -np.inf for (v, _, _), h in zip(blocks, hi) if h)
        neg_parts, pos_parts, w_parts = [], [], []
        for i, (v, w, is_neg) in enumerate(blocks):
            if not hi[i]:
                continue
            lo = int(np.searchsorted(v[: hi[i]], cut, side="left"))
            if is_neg:
                neg_parts.append(v[lo : hi[i]])
            else:
                pos_parts.append(v[lo : hi[i]])
                w_parts.append(w[lo : hi[i]])
            hi[i] = lo
        yield _chunk_counts(*_merge(neg_parts, pos_parts, w_parts))


def _merge(neg_parts, pos_parts, w_parts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One ascending array per population from ascending pieces (timsort merges the sorted runs)."""
    empty32, empty64 = np.empty(0, np.float32), np.empty(0)
    vn = neg_parts[0] if len(neg_parts) == 1 else np.sort(np.concatenate(neg_parts or [empty32]), kind="stable")
    if len(pos_parts) == 1:
        return vn, pos_parts[0], w_parts[0]
    vp = np.concatenate(pos_parts or [empty32])
    wp = np.concatenate(w_parts or [empty64])
    order = np.argsort(vp, kind="stable")
    return vn, vp[order], wp[order]


def _runs(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of a sorted array and the index where each run of equal values starts."""
    if v.size == 0:
        return v, np.empty(0, dtype=np.intp)
    starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
    return v[starts], starts


def _chunk_counts(vn: np.ndarray, vp: np.ndarray, wp: np.ndarray) -> Chunk:
    """Distinct values of two sorted slices and the (neg count, pos count, pos weight) at each, in
    linear time: run-length encode each slice, merge the two run lists, fold values present in both."""
    un, sn = _runs(vn)
    up, sp = _runs(vp)
    cn = np.diff(np.r_[sn, vn.size])
    cp = np.diff(np.r_[sp, vp.size])
    cw = np.add.reduceat(wp, sp) if sp.size else np.empty(0)
    order = np.argsort(np.concatenate([un, up]), kind="stable")  # merge of two sorted runs
    u = np.concatenate([un, up])[order]
    dn = np.concatenate([cn, np.zeros(up.size, np.int64)])[order]
    dp = np.concatenate([np.zeros(un.size, np.int64), cp])[order]
    dw = np.concatenate([np.zeros(un.size), cw])[order]
    both = np.flatnonzero(u[1:] == u[:-1])  # stable sort: the negative run comes first, then the positive
    if both.size:
        dn[both + 1] = dn[both]
        keep = np.ones(u.size, dtype=bool)
        keep[both] = False
        dn, dp, dw = dn[keep], dp[keep], dw[keep]
    return dn[::-1], dp[::-1], dw[::-1]


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


def summarize(store: ScoreStore, w_total: float, limits: Sequence[float] = (0.3,)) -> CurveSummary:
    """Metrics of a store's curve, with the binning error bounds when it is binned."""
    summary = integrate(store.curve(), store.n_neg, store.n_pos, w_total, limits)
    if store.mode == "binned" and store.n_neg and store.n_pos:
        summary.bounds = store.error_bounds(w_total, tuple(float(x) for x in limits), summary.f1max)
    return summary


def integrate(
    chunks: Iterator[Chunk],
    n_neg: int,
    n_pos: int,
    w_total: float,
    limits: Sequence[float] = (0.3,),
) -> CurveSummary:
    """Stream the curve once: ROC trapezoid, step-rule AP, F1-max and the weighted-curve areas.

    * AUROC = sum_k (F_k - F_{k-1}) (T_k + T_{k-1}) / (2 N P)   (trapezoid, ties = one point),
      evaluated as sum_k dp_k (N - F_k + dn_k / 2) / (N P) (the same number, on positive points only)
    * AP    = sum_k (T_k - T_{k-1}) / P * T_k / (T_k + F_k)      (scikit-learn's step rule)
    * F1max = max_k 2 T_k / (T_k + F_k + P)                      (= 2PR / (P + R) at point k)
    * area(L) = 1/L * integral_0^L W/w_total d(F/N), trapezoid, the last segment cut at F/N = L by
      linear interpolation (MVTec's AUPRO rule).
    """
    limits = tuple(float(x) for x in limits)
    if n_neg == 0 or n_pos == 0:
        nan = float("nan")
        return CurveSummary(nan, nan, nan, {lim: nan for lim in limits}, {})
    acc = _Accumulator(n_neg, n_pos, w_total, limits)
    for dn, dp, dw in chunks:
        acc.add(dn, dp, dw)
    return acc.summary()


class _Accumulator:
    """Running sums for ``integrate``; one instance per curve."""

    def __init__(self, n_neg: int, n_pos: int, w_total: float, limits: tuple[float, ...]):
        self.N, self.P, self.R = float(n_neg), float(n_pos), float(w_total)
        self.limits = limits
        self.F = self.T = 0
        self.W = 0.0
        self.roc = 0.0  # sum over positives of (negatives below + half the tied ones)
        self.ap = 0.0  # sum dp * precision
        self.f1 = 0.0
        self.area_acc = 0.0  # trapezoid area in (FPR, PRO) units so far
        self.area: dict[float, float] = {}

    def add(self, dn: np.ndarray, dp: np.ndarray, dw: np.ndarray) -> None:
        F = self.F + np.cumsum(dn)
        # ROC, AP and F1 change only where positives enter: evaluate them on those points alone
        # (usually a small fraction of the curve).
        q = np.flatnonzero(dp)
        if q.size:
            dpq, Fq = dp[q].astype(np.float64), F[q].astype(np.float64)
            Tq = self.T + np.cumsum(dpq)
            # each positive beats the negatives strictly below it and ties half of those level with it
            self.roc += float(np.sum(dpq * ((self.N - Fq) + 0.5 * dn[q])))
            self.ap += float(np.sum(dpq * Tq / (Tq + Fq)))
            self.f1 = max(self.f1, float(np.max(2.0 * Tq / (Tq + Fq + self.P))))
        if len(self.area) < len(self.limits):  # stop once every FPR limit has been passed
            W = self.W + np.cumsum(dw)
            Fp = np.concatenate([[self.F], F[:-1]])
            Wp = np.concatenate([[self.W], W[:-1]])
            self._areas(F / self.N, Fp / self.N, W / self.R, Wp / self.R)
        self.F, self.T, self.W = int(F[-1]), self.T + int(dp.sum()), self.W + float(dw.sum())

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

    def summary(self) -> CurveSummary:
        area = {lim: self.area.get(lim, math.nan) for lim in self.limits}
        return CurveSummary(auroc=self.roc / (self.N * self.P), ap=self.ap / self.P, f1max=self.f1, area=area)
