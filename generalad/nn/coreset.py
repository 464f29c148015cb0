"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling).

Greedy k-center (Gonzalez): start from one point, then repeatedly add the point farthest from the selected
set, keeping for every point its squared distance to the nearest selected point (``mind``). PatchCore runs
it on a seeded Gaussian random projection of the patch features (~128 dims).

Why it is written the way it is (measured on the 2-core AMD EPYC dev machine; ViT-S/14 patch tokens of
the 700 magnetic-tile training images, M = 548,800, D = 384, 10 % = 54,880 selections; see
benchmarks/bench_coreset.py):

* The textbook loop (``method="dense"``) reads the whole (M, d) matrix once per selection: 15 ms at
  d = 128 with faiss' SIMD kernel, i.e. ~820 s for 10 % (~350 s at d = 64). ``torch.mv`` is worse: it goes
  through MKL, which is 4-5x slower than a plain streaming read on this AMD CPU.
* ``method="pruned"`` (default) gives the same selection in 97 s (d = 128) / 75 s (d = 64). The projected
  points are centred and rotated onto their principal axes (orthogonal: distances unchanged). The
  distance in the first ``head_dim`` coordinates is a lower bound of the full distance, so a point whose
  head distance to the new center is already >= its ``mind`` cannot change and is skipped. Real patch
  features are strongly anisotropic (the top 8 of 128 axes hold ~80 % of the variance), so only ~0.2-5 %
  of the points survive the bound; their exact distances are computed by index. Per selection that is one
  scan of an (M, 8) array instead of (M, 128). Without such structure (isotropic noise) the bound prunes
  nothing and the loop costs ~13 % more than the dense one.
* The kernels are faiss' SIMD distance routines (explicit differences, no ‖a‖² − 2ab + ‖b‖²
  cancellation) on numpy arrays: numpy asks the kernel for transparent huge pages, torch does not, and
  random row gathers from a torch allocation paid a TLB walk per row (1.2 µs vs 0.09 µs per row).
  Without faiss, numpy kernels do the same work more slowly. The loop is single-threaded on purpose: a
  selection is ~1-2 ms of latency-bound work, too small to split across threads.

Both methods agree with a naive float64 loop up to fp32 rounding (near-ties may resolve differently).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from generalad.errors import ConfigError
from generalad.nn.knn import NearestNeighbours

try:  # faiss is a declared dependency; the fallback keeps the module importable without it
    import faiss
except ImportError:  # pragma: no cover - exercised by forcing use_faiss=False in tests
    faiss = None

__all__ = ["greedy_coreset", "random_projection", "coverage_radius"]


def random_projection(
    x: torch.Tensor | np.ndarray, proj_dim: int | None, *, seed: int = 0, chunk: int = 65536
) -> torch.Tensor:
    """Seeded Gaussian random projection (M, D) → (M, proj_dim), fp32, entries N(0, 1/proj_dim).

    Johnson-Lindenstrauss scaling as in sklearn's GaussianRandomProjection, so distances are preserved in
    expectation. ``proj_dim`` None, 0 or >= D returns the features as fp32 (no projection). Rows are
    projected in chunks so a bf16/fp16 input is never copied to fp32 as a whole.
    """
    x = _as_2d(x)
    m, dim = x.shape
    if not proj_dim or proj_dim >= dim:
        return x.to(torch.float32).contiguous()
    gen = torch.Generator().manual_seed(int(seed))
    w = torch.randn(dim, proj_dim, generator=gen, dtype=torch.float32) / math.sqrt(proj_dim)
    out = torch.empty(m, proj_dim, dtype=torch.float32)
    for s in range(0, m, chunk):
        torch.mm(x[s : s + chunk].to(torch.float32), w, out=out[s : s + chunk])
    return out


def coverage_radius(x: torch.Tensor | np.ndarray, centers: torch.Tensor) -> float:
    """max_i min_j |x_i - x[centers_j]| (Euclidean) over the rows of ``x``: what greedy k-center minimises."""
    x = _as_2d(x)
    dist, _ = NearestNeighbours(x[torch.as_tensor(centers, dtype=torch.long)]).search(x)
    return float(dist.max())


def greedy_coreset(
    x: torch.Tensor | np.ndarray,
    *,
    ratio: float | None = 0.1,
    n: int | None = None,
    proj_dim: int | None = 128,
    seed: int = 0,
    start: int | None = None,
    method: str = "pruned",
    head_dim: int = 8,
    chunk: int = 65536,
    use_faiss: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Indices (LongTensor (n,), in selection order) of a greedy k-center coreset of the rows of ``x``.

    x: (M, D) features, any float dtype. ``n`` overrides ``ratio`` (fraction of M, rounded, at least 1).
    proj_dim: seeded Gaussian projection before selection (None/0: select on the raw features).
    seed: seeds the projection and, when ``start`` is None, the random first point.
    method: "pruned" (exact, lower-bound pruning, default) or "dense" (exact, textbook loop).
    head_dim: principal axes used for the pruning bound (8 hits faiss' specialised kernel).
    chunk: rows per projection/rotation matmul. use_faiss: False forces the numpy fallback kernels.
    progress: optional callback(done, total), called every 1024 selections.
    Selected points are never re-selected: once every distinct point is covered, remaining picks are
    unselected duplicates (distance 0), so the result always holds ``n`` unique indices.
    """
    if method not in ("pruned", "dense"):
        raise ConfigError(f"coreset: unknown method {method!r} (expected 'pruned' or 'dense')")
    z = random_projection(x, proj_dim, seed=seed, chunk=chunk)
    m, d = z.shape
    k = _count(m, ratio, n)
    if start is None:
        start = int(torch.randint(m, (1,), generator=torch.Generator().manual_seed(int(seed) + 1)))
    if not 0 <= start < m:
        raise ConfigError(f"coreset: start must be in [0, {m}), got {start}")
    pts = _principal_axes(z, chunk)
    del z
    kern = _Kernels(use_faiss)
    with kern.single_threaded():
        if method == "dense" or head_dim >= d:
            sel = _greedy_dense(pts, k, start, kern, progress)
        else:
            sel = _greedy_pruned(pts, k, start, max(1, head_dim), kern, progress)
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


def _principal_axes(z: torch.Tensor, chunk: int) -> np.ndarray:
    """Centre and rotate onto the principal axes (descending variance) into a numpy (huge-page) array.

    Centring shrinks the coordinates (less fp32 rounding); the rotation puts most of the variance in the
    leading coordinates, which is what makes the head lower bound tight. Both preserve distances.
    """
    m, d = z.shape
    mu = z.mean(0, dtype=torch.float64)
    cov = torch.zeros(d, d, dtype=torch.float64)
    for s in range(0, m, chunk):
        c = z[s : s + chunk].double() - mu
        cov += c.T @ c
    _, vec = torch.linalg.eigh(cov)
    rot = vec.flip(1).to(torch.float32)
    mu32 = mu.to(torch.float32)
    out = np.empty((m, d), dtype=np.float32)  # numpy madvises huge pages for big buffers; torch does not
    out_t = torch.from_numpy(out)
    for s in range(0, m, chunk):
        torch.mm(z[s : s + chunk] - mu32, rot, out=out_t[s : s + chunk])
    return out


class _Kernels:
    """Squared-L2 kernels: faiss SIMD routines, or numpy equivalents when faiss is unavailable."""

    def __init__(self, use_faiss: bool) -> None:
        self.faiss = use_faiss and faiss is not None

    @contextlib.contextmanager
    def single_threaded(self) -> Iterator[None]:
        """faiss opens an OpenMP region in ``fvec_L2sqr_by_idx``; on a busy 2-core machine its start-up
        and barrier cost ~4-8 ms per call (measured), far more than the work, so run it on one thread."""
        if not self.faiss:
            yield
            return
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)

    def to_all(self, out: np.ndarray, q: np.ndarray, pts: np.ndarray) -> None:
        """out[i] = |pts[i] - q|²."""
        if self.faiss:
            faiss.fvec_L2sqr_ny(faiss.swig_ptr(out), faiss.swig_ptr(q), faiss.swig_ptr(pts), pts.shape[1], pts.shape[0])
        else:
            for s in range(0, pts.shape[0], 32768):  # chunked: no (M, d) temporary
                diff = pts[s : s + 32768] - q
                np.einsum("ij,ij->i", diff, diff, out=out[s : s + 32768])

    def to_rows(self, out: np.ndarray, q: np.ndarray, pts: np.ndarray, rows: np.ndarray) -> None:
        """out[j] = |pts[rows[j]] - q|² (rows int64)."""
        if self.faiss:
            faiss.fvec_L2sqr_by_idx(
                faiss.swig_ptr(out), faiss.swig_ptr(q), faiss.swig_ptr(pts), faiss.swig_ptr(rows),
                pts.shape[1], 1, rows.size,
            )
        else:
            diff = pts[rows] - q
            np.einsum("ij,ij->i", diff, diff, out=out[: rows.size])


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


def _greedy_pruned(
    pts: np.ndarray,
    k: int,
    start: int,
    head_dim: int,
    kern: _Kernels,
    progress: Callable[[int, int], None] | None,
) -> np.ndarray:
    """Greedy k-center where the head-coordinate lower bound skips points that cannot change."""
    m = pts.shape[0]
    head = np.ascontiguousarray(pts[:, :head_dim])
    mind = np.full(m, np.inf, dtype=np.float32)
    bound = np.empty(m, dtype=np.float32)
    live = np.empty(m, dtype=bool)
    dist = np.empty(m, dtype=np.float32)
    sel = np.empty(k, dtype=np.int64)
    idx = start
    for i in range(k):
        sel[i] = idx
        kern.to_all(bound, head[idx], head)
        np.less(bound, mind, out=live)  # head distance >= mind: the full distance is too, skip
        rows = np.flatnonzero(live)
        if rows.size * 2 > m:  # early selections touch most points: one full scan is cheaper
            kern.to_all(dist, pts[idx], pts)
            np.minimum(mind, dist, out=mind)
        elif rows.size:
            kern.to_rows(dist, pts[idx], pts, rows)
            mind[rows] = np.minimum(mind[rows], dist[: rows.size])
        mind[idx] = -1.0  # never pick a selected point again
        idx = int(mind.argmax())
        _report(progress, i + 1, k)
    return sel
