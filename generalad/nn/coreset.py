"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling).

Greedy k-center (Gonzalez): start from one point, then repeatedly add the point farthest from the selected
set, keeping for every point its squared distance to the nearest selected point (``mind``). PatchCore runs
it on a seeded Gaussian random projection of the patch features (128 dims).

Why it is written the way it is (2-core AMD EPYC dev machine; EfficientNet-Lite0 locally aware patches of
the 630 magnetic-tile training images, M = 493,920 projected to d = 128, 10 % = 49,392 selections):

* The textbook loop (``method="dense"``) reads the whole (M, d) matrix once per selection. That is a
  memory-bound matrix-vector product: ~10 ms per selection, ~520 s for 10 %. Lower-bound pruning (principal
  axes, k-means cells with the triangle inequality) skipped nothing on these features: in 128 dims every
  cell lies within the coverage radius of the new centre until the very end.
* ``method="lazy"`` (default) gives the same greedy selection in 60 s. Between two refreshes ``mind`` is
  stale: it ignores the last few centres, so it is an *upper bound* of the true value. The next centre
  is taken among the ``candidates`` points with the largest stale values, whose exact values are kept up to
  date against each new centre (explicit differences, a (T, d) array). A candidate whose exact value is at
  least the largest stale value outside the candidate list is provably the farthest point, so it is picked
  without touching the other M points. After ``batch`` picks (or when no candidate can be proven farthest)
  all of ``mind`` is refreshed at once against the pending centres with one matrix-matrix product per
  chunk (‖x‖² − 2x·q + ‖q‖², compute-bound and multi-threaded instead of memory-bound).

Ties: the lazy method's candidate list orders equal values by index (``ordered_top``; torch.topk leaves
their order unspecified), so the sharded selection of generalad.nn.sharded can merge per-shard lists into the
same list and pick exactly the same points (docs/SCALE.md §8). Without exact ties in the list nothing changed
(projected magnetic-tile pixel patches: the same picks as before; unprojected 8-bit ones diverge at pick 790).

Both methods agree with a naive float64 loop up to fp32 rounding: a near-tie may resolve differently, every
pick is still a farthest point (tests/nn/test_coreset.py checks that pick by pick).

Devices: the selection runs where the features are (or on ``device=``): the projection, ``mind`` and every
refresh live there; the seeded projection matrix and the random start are drawn on the CPU, so every device
selects from the same projected points (picks agree up to fp32 near-ties). The lazy method syncs with the
host about twice per pick (argmax and the bound test), cheap next to its refreshes. On the CPU the dense
method runs faiss/numpy kernels; on other devices a torch loop (one ‖x‖² − 2x·q + ‖q‖² matrix-vector
product per pick, no host sync). The returned indices are always a CPU LongTensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from generalad.device import resolve_device
from generalad.errors import ConfigError
from generalad.nn.knn import NearestNeighbours

try:  # faiss is a declared dependency; the fallback keeps the module importable without it
    import faiss
except ImportError:  # pragma: no cover - exercised by forcing use_faiss=False in tests
    faiss = None

__all__ = ["greedy_coreset", "random_projection", "coverage_radius", "ordered_top"]


def random_projection(
    x: torch.Tensor | np.ndarray,
    proj_dim: int | None,
    *,
    seed: int = 0,
    chunk: int = 65536,
    device: str | torch.device | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Seeded Gaussian random projection (M, D) → (M, proj_dim), fp32, entries N(0, 1/proj_dim).

    Johnson-Lindenstrauss scaling as in sklearn's GaussianRandomProjection, so distances are preserved in
    expectation. ``proj_dim`` None, 0 or >= D returns the features as fp32 (no projection). Rows are
    projected in chunks so a bf16/fp16 input is never copied to fp32 as a whole (nor, with ``device``, to
    the device as a whole). The output lives on ``device`` (default: ``x``'s device); the projection matrix
    is drawn on the CPU, so it is the same on every device. ``out``: an (M, proj_dim) fp32 tensor to write
    into (e.g. a memory-mapped shard, generalad.nn.sharded) instead of a new one.
    """
    x = _as_2d(x)
    m, dim = x.shape
    dev = x.device if device is None else resolve_device(device)
    if not proj_dim or proj_dim >= dim:
        if out is None:
            return x.to(dev, torch.float32).contiguous()
        for s in range(0, m, chunk):
            out[s : s + chunk] = x[s : s + chunk]
        return out
    gen = torch.Generator().manual_seed(int(seed))
    w = (torch.randn(dim, proj_dim, generator=gen, dtype=torch.float32) / math.sqrt(proj_dim)).to(dev)
    if out is None:
        out = torch.empty(m, proj_dim, dtype=torch.float32, device=dev)
    for s in range(0, m, chunk):
        torch.mm(x[s : s + chunk].to(dev, torch.float32), w, out=out[s : s + chunk])
    return out


def coverage_radius(x: torch.Tensor | np.ndarray, centers: torch.Tensor) -> float:
    """max_i min_j |x_i - x[centers_j]| (Euclidean) over the rows of ``x``: what greedy k-center minimises."""
    x = _as_2d(x)
    centers = torch.as_tensor(centers, dtype=torch.long).to(x.device)
    dist, _ = NearestNeighbours(x[centers], device=x.device).search(x, on_device=True)
    return float(dist.max())


def greedy_coreset(
    x: torch.Tensor | np.ndarray,
    *,
    ratio: float | None = 0.1,
    n: int | None = None,
    proj_dim: int | None = 128,
    seed: int = 0,
    start: int | None = None,
    method: str = "lazy",
    batch: int = 128,
    candidates: int = 1024,
    chunk: int = 32768,
    use_faiss: bool = True,
    progress: Callable[[int, int], None] | None = None,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Indices (LongTensor (n,), in selection order) of a greedy k-center coreset of the rows of ``x``.

    x: (M, D) features, any float dtype. ``n`` overrides ``ratio`` (fraction of M, rounded, at least 1).
    proj_dim: seeded Gaussian projection before selection (None/0: select on the raw features).
    seed: seeds the projection and, when ``start`` is None, the random first point.
    method: "lazy" (exact, batched refreshes, default) or "dense" (exact, textbook loop).
    batch / candidates: lazy method's most picks between refreshes and size of its candidate list.
    chunk: rows per matmul. use_faiss: dense method on the CPU only; False forces the numpy kernel.
    progress: optional callback(done, total), called every 1024 selections and at the end.
    device: where to select (default: ``x``'s device); ``x`` is moved there in chunks, projected.
    Returns CPU indices whatever the device.
    Selected points are never re-selected: once every distinct point is covered, remaining picks are
    unselected duplicates (distance 0), so the result always holds ``n`` unique indices.
    """
    if method not in ("lazy", "dense"):
        raise ConfigError(f"coreset: unknown method {method!r} (expected 'lazy' or 'dense')")
    if batch < 1 or candidates < 1:
        raise ConfigError(f"coreset: batch and candidates must be >= 1, got {batch} and {candidates}")
    z = random_projection(x, proj_dim, seed=seed, chunk=chunk, device=device)
    m = z.shape[0]
    k = _count(m, ratio, n)
    if start is None:
        start = int(torch.randint(m, (1,), generator=torch.Generator().manual_seed(int(seed) + 1)))
    if not 0 <= start < m:
        raise ConfigError(f"coreset: start must be in [0, {m}), got {start}")
    z = z - z.mean(0)  # centring shrinks the norms, so the ‖x‖² − 2x·q + ‖q‖² refresh cancels less
    if method == "dense" and z.device.type != "cpu":
        sel = _greedy_dense_torch(z, k, start, progress)
    elif method == "dense":
        sel = _greedy_dense(z.numpy(), k, start, _Kernels(use_faiss), progress)
    else:
        sel = _LazyGreedy(z, chunk).run(k, start, batch, candidates, progress)
    return torch.from_numpy(sel)


def _as_2d(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ConfigError(f"coreset: features must be a non-empty 2-D (M, D) array, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    return x


def _count(m: int, ratio: float | None, n: int | None) -> int:
    if n is None:
        if ratio is None or not 0.0 < ratio <= 1.0:
            raise ConfigError(f"coreset: ratio must be in (0, 1], got {ratio}")
        n = max(1, int(round(m * ratio)))
    if not 1 <= n <= m:
        raise ConfigError(f"coreset: n must be in [1, {m}] for {m} points, got {n}")
    return int(n)


class _Kernels:
    """Squared-L2 kernels: faiss SIMD routines, or numpy equivalents when faiss is unavailable."""

    def __init__(self, use_faiss: bool) -> None:
        self.faiss = use_faiss and faiss is not None

    def to_all(self, out: np.ndarray, q: np.ndarray, pts: np.ndarray) -> None:
        """out[i] = |pts[i] - q|²."""
        if self.faiss:
            faiss.fvec_L2sqr_ny(faiss.swig_ptr(out), faiss.swig_ptr(q), faiss.swig_ptr(pts), pts.shape[1], pts.shape[0])
        else:
            for s in range(0, pts.shape[0], 32768):  # chunked: no (M, d) temporary
                diff = pts[s : s + 32768] - q
                np.einsum("ij,ij->i", diff, diff, out=out[s : s + 32768])


def _report(progress: Callable[[int, int], None] | None, i: int, k: int) -> None:
    if progress is not None and (i % 1024 == 0 or i == k):
        progress(i, k)


def _greedy_dense(
    pts: np.ndarray, k: int, start: int, kern: _Kernels, progress: Callable[[int, int], None] | None
) -> np.ndarray:
    """Textbook loop: one full distance scan + minimum + argmax per selection."""
    m = pts.shape[0]
    mind = np.full(m, np.inf, dtype=np.float32)
    dist = np.empty(m, dtype=np.float32)
    sel = np.empty(k, dtype=np.int64)
    idx = start
    for i in range(k):
        sel[i] = idx
        kern.to_all(dist, pts[idx], pts)
        np.minimum(mind, dist, out=mind)
        mind[idx] = -1.0  # never pick a selected point again
        idx = int(mind.argmax())
        _report(progress, i + 1, k)
    return sel


def _greedy_dense_torch(
    pts: torch.Tensor, k: int, start: int, progress: Callable[[int, int], None] | None
) -> np.ndarray:
    """The textbook loop with torch ops on ``pts``' device, for devices faiss/numpy cannot reach.

    Squared distances by ‖x‖² − 2x·q + ‖q‖² (one matrix-vector product per pick: memory-bound, ~M·d·4
    bytes read, e.g. 146 MB for M = 286k, d = 128); the picks stay on the device, so the loop never waits
    for the host except when ``progress`` is reported.
    """
    m = pts.shape[0]
    sq = (pts * pts).sum(1)
    mind = torch.full((m,), float("inf"), device=pts.device)
    sel = torch.empty(k, dtype=torch.int64, device=pts.device)
    idx = torch.full((1,), start, dtype=torch.int64, device=pts.device)
    for i in range(k):
        sel[i : i + 1] = idx
        d2 = torch.addmv(sq, pts, pts.index_select(0, idx).squeeze(0), alpha=-2.0).add_(sq.index_select(0, idx))
        torch.minimum(mind, d2.clamp_min_(0.0), out=mind)
        mind.index_fill_(0, idx, -1.0)  # never pick a selected point again
        idx = mind.argmax().view(1)
        if progress is not None and ((i + 1) % 1024 == 0 or i + 1 == k):
            progress(i + 1, k)
    return sel.cpu().numpy()


class _LazyGreedy:
    """Greedy k-center with a stale (upper-bound) ``mind`` refreshed in batches; see the module docstring."""

    def __init__(self, pts: torch.Tensor, chunk: int) -> None:
        self.pts = pts
        self.sq = (pts * pts).sum(1)
        self.mind = torch.full((pts.shape[0],), float("inf"), device=pts.device)
        self.chunk = chunk

    def refresh(self, centres: list[int]) -> None:
        """mind = min(mind, |x - q|²) over the pending centres q; selected points get -1 (never re-picked)."""
        q = self.pts[centres]
        qq = (q * q).sum(1).unsqueeze(0)
        for s in range(0, self.pts.shape[0], self.chunk):
            d2 = torch.addmm(qq, self.pts[s : s + self.chunk], q.T, alpha=-2.0)
            d2 += self.sq[s : s + self.chunk].unsqueeze(1)
            part = self.mind[s : s + self.chunk]
            torch.minimum(part, d2.amin(1).clamp_min_(0.0), out=part)
        self.mind[centres] = -1.0

    def run(
        self, k: int, start: int, batch: int, candidates: int, progress: Callable[[int, int], None] | None
    ) -> np.ndarray:
        t = min(candidates, self.pts.shape[0] - 1)
        sel = np.empty(k, dtype=np.int64)
        sel[0], done, pending = start, 1, [start]
        while done < k:
            self.refresh(pending)
            vals, idx = ordered_top(self.mind, t + 1)  # t >= 1 here: k <= m and a second pick is due
            picks = pick_candidates(vals, self.pts[idx[:t]], done, k, batch, progress)
            pending = [int(idx[j]) for j in picks]
            sel[done : done + len(picks)] = pending
            done += len(picks)
        _report(progress, k, k)
        return sel


def ordered_top(values: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The n largest of ``values`` (1-D) as (values, indices), by value descending, equal values by index.

    torch.topk leaves the order of equal values unspecified; this defines it (lowest index first, also for
    which of several equal values at the boundary get in), so a sharded selection (generalad.nn.sharded)
    can merge per-shard lists into exactly this list. Without ties it is torch.topk's result. Extra cost:
    one comparison pass over ``values``.
    """
    top = torch.topk(values, n)
    low = top.values[-1]
    above = top.indices[top.values > low]
    at = (values == low).nonzero().squeeze(1)[: n - above.numel()]  # ascending indices
    idx = torch.cat([above, at])
    return order_desc(values[idx], idx, n)


def order_desc(vals: torch.Tensor, idx: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n of (vals, idx) ordered by value descending, then index ascending."""
    idx, o = idx.sort()
    vals, o2 = vals[o].sort(descending=True, stable=True)
    return vals[:n], idx[o2[:n]]


def pick_candidates(
    vals: torch.Tensor,
    cand: torch.Tensor,
    done: int,
    k: int,
    batch: int,
    progress: Callable[[int, int], None] | None,
) -> list[int]:
    """Positions (into the candidate list) of the next picks between two refreshes of the lazy method.

    vals: (t + 1,) the stale values of the t candidates and, last, the largest stale value outside the list
    (the bar); cand: (t, d) the candidates' points. A candidate is picked while its exact value (kept up to
    date against each pick by explicit differences) is at least the bar, at most ``batch`` picks. Shared by
    the in-process and the sharded selection, so both take the same decisions from the same list.
    """
    t = cand.shape[0]
    bar = float(vals[t])  # no point outside the list has a (stale) value above this
    exact = vals[:t].clone()
    picks: list[int] = []
    while done + len(picks) < k and len(picks) < batch:
        j = int(exact.argmax())
        if float(exact[j]) < bar:  # cannot prove this one farthest without a refresh
            break
        picks.append(j)
        torch.minimum(exact, ((cand - cand[j]) ** 2).sum(1), out=exact)
        exact[j] = -1.0
        if (done + len(picks)) % 1024 == 0:
            _report(progress, done + len(picks), k)
    return picks
