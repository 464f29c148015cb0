"""Greedy k-center coreset selection (PatchCore's memory-bank subsampling).

Greedy k-center (Gonzalez): start from one point, then repeatedly add the point farthest from the selected
set. PatchCore runs it on a seeded random projection of the patch features (~128 dims). The textbook loop
is memory-bound: every selection reads the whole (M, d) matrix once, so at M = 550k, d = 128 it costs
~6-15 ms per selection on a 2-core CPU, i.e. 6-14 minutes for 10 %.

``method="blocked"`` (the default for large M) returns the *same* selection much faster. The points are
sorted into equal-size blocks by a balanced PCA tree; each block keeps its centroid, its radius and the
largest min-distance of its points. A new center q can only lower the min-distance of a point x in block b
if ``|q - c_b| - r_b <= |q - x| < mindist(x) <= blockmax_b``, so every block failing that test is skipped
exactly (triangle inequality). Once the coverage radius shrinks below the block radii, only the blocks
around q are touched. Distances inside a block are taken relative to the block centroid, which keeps the
‖a‖² − 2a·b + ‖b‖² expansion accurate in fp32 (small norms, little cancellation).

Selections agree with a naive float64 loop up to fp32 rounding (near-ties may resolve differently).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from generalad.errors import ConfigError

__all__ = ["greedy_coreset", "random_projection", "coverage_radius"]

# Relative slack on the pruning test: distances are fp32 expansions, so a block whose lower bound sits
# within rounding of blockmax is visited rather than skipped.
_PRUNE_SLACK = 1e-3


def random_projection(
    x: torch.Tensor | np.ndarray, proj_dim: int | None, *, seed: int = 0, chunk: int = 65536
) -> torch.Tensor:
    """Seeded Gaussian random projection (M, D) → (M, proj_dim), fp32, entries N(0, 1/proj_dim).

    Johnson-Lindenstrauss scaling as in sklearn's GaussianRandomProjection, so distances are preserved in
    expectation. ``proj_dim`` None, 0 or >= D returns the features as contiguous fp32 (no projection).
    Rows are projected in chunks so a bf16/fp16 input is never copied to fp32 as a whole.
    """
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ConfigError(f"coreset: features must be 2-D (M, D), got shape {tuple(x.shape)}")
    m, dim = x.shape
    if not proj_dim or proj_dim >= dim:
        return x.to(torch.float32).contiguous()
    gen = torch.Generator().manual_seed(int(seed))
    w = torch.randn(dim, proj_dim, generator=gen, dtype=torch.float32) / math.sqrt(proj_dim)
    out = torch.empty(m, proj_dim, dtype=torch.float32)
    for s in range(0, m, chunk):
        torch.mm(x[s : s + chunk].to(torch.float32), w, out=out[s : s + chunk])
    return out


def coverage_radius(x: torch.Tensor, centers: torch.Tensor, *, chunk: int = 8192) -> float:
    """max_i min_j |x_i - x[centers_j]| (Euclidean), computed exactly in chunks."""
    x = torch.as_tensor(x, dtype=torch.float32)
    c = x[torch.as_tensor(centers, dtype=torch.long)]
    c_sq = (c * c).sum(1)
    worst = 0.0
    for s in range(0, x.shape[0], chunk):
        q = x[s : s + chunk]
        d2 = (q * q).sum(1, keepdim=True) - 2.0 * q @ c.T + c_sq
        worst = max(worst, float(d2.min(1).values.clamp_min(0).max()))
    return math.sqrt(worst)


def _count(m: int, ratio: float | None, n: int | None) -> int:
    if n is None:
        if ratio is None or not 0.0 < ratio <= 1.0:
            raise ConfigError(f"coreset: ratio must be in (0, 1], got {ratio}")
        n = max(1, int(round(m * ratio)))
    if not 1 <= n <= m:
        raise ConfigError(f"coreset: n must be in [1, {m}] for {m} points, got {n}")
    return int(n)


def greedy_coreset(
    x: torch.Tensor | np.ndarray,
    *,
    ratio: float | None = 0.1,
    n: int | None = None,
    proj_dim: int | None = 128,
    seed: int = 0,
    start: int | None = None,
    method: str = "auto",
    block_size: int = 256,
    chunk: int = 65536,
) -> torch.Tensor:
    """Indices (LongTensor, selection order) of a greedy k-center coreset of the rows of ``x``.

    x: (M, D) features (any float dtype). ``n`` overrides ``ratio`` (fraction of M, rounded, at least 1).
    proj_dim: seeded Gaussian projection before selection (None/0: use the raw features).
    seed: seeds the projection and, when ``start`` is None, the random first point.
    method: "blocked" (exact, pruned; fast at large M), "dense" (exact, textbook loop), "auto" (blocked
    when M >= 16 blocks). block_size: points per pruning block. chunk: rows per projection matmul.
    Selected points are never re-selected: once every distinct point is covered, remaining picks are
    unselected duplicates (min-distance 0), so the result always holds ``n`` unique indices.
    """
    z = random_projection(x, proj_dim, seed=seed, chunk=chunk)
    m = z.shape[0]
    k = _count(m, ratio, n)
    if start is None:
        start = int(torch.randint(m, (1,), generator=torch.Generator().manual_seed(int(seed) + 1)))
    if not 0 <= start < m:
        raise ConfigError(f"coreset: start must be in [0, {m}), got {start}")
    if method == "auto":
        method = "blocked" if m >= 16 * block_size else "dense"
    if method == "dense":
        return _greedy_dense(z, k, start)
    if method == "blocked":
        return _greedy_blocked(z, k, start, block_size)
    raise ConfigError(f"coreset: unknown method {method!r} (expected 'auto', 'blocked' or 'dense')")


def _greedy_dense(z: torch.Tensor, k: int, start: int) -> torch.Tensor:
    """Textbook loop: one (M, d) matvec + minimum + argmax per selection, all in preallocated buffers."""
    z = z - z.mean(0)  # centring shrinks the norms, so the fp32 expansion cancels less
    sq = (z * z).sum(1)
    mind = torch.full_like(sq, math.inf)
    dist = torch.empty_like(sq)
    out = torch.empty(k, dtype=torch.long)
    idx = start
    for i in range(k):
        out[i] = idx
        q = z[idx]
        torch.mv(z, q, out=dist)
        dist.mul_(-2.0).add_(sq).add_(sq[idx])  # |x|² - 2 x·q + |q|²
        torch.minimum(mind, dist, out=mind)
        mind[idx] = -1.0  # never pick a selected point again
        idx = int(mind.argmax())
    return out


@dataclass
class _Blocks:
    """Points regrouped into nb equal blocks of s rows (padded), coordinates relative to the block centroid."""

    pts: torch.Tensor  # (nb, s, d) x - centroid
    sq: torch.Tensor  # (nb, s) |x - centroid|²
    cen: torch.Tensor  # (nb, d) centroids
    cen_sq: torch.Tensor  # (nb,) |centroid|²
    rad: torch.Tensor  # (nb,) block radius
    order: torch.Tensor  # (nb*s,) original row of each slot (pads repeat row 0)
    slot: torch.Tensor  # (M,) slot of each original row
    valid: torch.Tensor  # (nb, s) False for padding slots


def _pca_tree_order(z: torch.Tensor, levels: int, padded: int, gen: torch.Generator) -> torch.Tensor:
    """Slot order of a balanced binary PCA tree: each level splits every node at the median along its
    leading principal direction (3 batched power iterations), so nodes stay equal-sized and compact."""
    m, d = z.shape
    order = torch.cat([torch.arange(m), torch.zeros(padded - m, dtype=torch.long)])
    for level in range(levels):
        nodes = 1 << level
        pts = z[order].view(nodes, -1, d)
        mu = pts.mean(1, keepdim=True)
        v = torch.randn(nodes, d, 1, generator=gen)
        for _ in range(3):  # power iteration on the node covariance without forming it
            w = torch.bmm(pts, v) - torch.bmm(mu, v)
            v = torch.bmm(pts.transpose(1, 2), w) - mu.transpose(1, 2) * w.sum(1, keepdim=True)
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
        key = torch.bmm(pts, v).squeeze(2)
        perm = key.argsort(dim=1, stable=True)
        order = order.view(nodes, -1).gather(1, perm).reshape(-1)
    return order


def _make_blocks(z: torch.Tensor, block_size: int) -> _Blocks:
    m, d = z.shape
    levels = max(0, int(math.floor(math.log2(max(1, m // block_size)))))
    nb = 1 << levels
    s = -(-m // nb)
    s += s % 2 if levels else 0  # nodes above the leaves must split evenly
    order = _pca_tree_order(z, levels, nb * s, torch.Generator().manual_seed(12345))
    valid = torch.ones(nb * s, dtype=torch.bool)
    valid[(order == 0).nonzero().squeeze(1)[1:]] = False  # padding slots repeat row 0; keep one of them
    pts = z[order].view(nb, s, d)
    valid = valid.view(nb, s)
    cen = (pts * valid.unsqueeze(2)).sum(1) / valid.sum(1, keepdim=True).clamp_min(1)
    pts -= cen.unsqueeze(1)
    sq = (pts * pts).sum(2)
    rad = (sq * valid).amax(1).sqrt()
    slot = torch.empty(m, dtype=torch.long)
    first = valid.view(-1)
    slot[order[first]] = torch.arange(nb * s)[first]
    return _Blocks(pts, sq, cen, (cen * cen).sum(1), rad, order, slot, valid)


def _greedy_blocked(z: torch.Tensor, k: int, start: int, block_size: int) -> torch.Tensor:
    """Exact greedy k-center with block pruning (see the module docstring)."""
    z = z - z.mean(0)
    b = _make_blocks(z, block_size)
    nb, s, d = b.pts.shape
    mind = torch.full((nb, s), math.inf)
    mind[~b.valid] = -math.inf  # padding never wins the argmax
    bmax = mind.amax(1)
    out = torch.empty(k, dtype=torch.long)
    slot = int(b.slot[start])
    slack = 1.0 + _PRUNE_SLACK
    for i in range(k):
        out[i] = b.order[slot]
        bi, si = divmod(slot, s)
        q = b.pts[bi, si] + b.cen[bi]
        # lower bound on |q - x| for x in each block; visit only blocks where it can beat blockmax
        dc = (b.cen_sq - 2.0 * (b.cen @ q) + q @ q).clamp_min_(0).sqrt_()
        hit = ((dc - b.rad) < bmax.sqrt() * slack).nonzero().squeeze(1)
        qc = q.unsqueeze(0) - b.cen[hit]  # q relative to each visited centroid
        dist = torch.baddbmm(
            b.sq[hit].unsqueeze(2), b.pts[hit], qc.unsqueeze(2), alpha=-2.0
        ).squeeze(2)
        dist += (qc * qc).sum(1, keepdim=True)
        md = torch.minimum(mind[hit], dist)
        mind[hit] = md
        bmax[hit] = md.amax(1)
        mind[bi, si] = -1.0  # never pick a selected point again
        bmax[bi] = mind[bi].amax()
        bstar = int(bmax.argmax())
        slot = bstar * s + int(mind[bstar].argmax())
    return out
