"""Exact nearest-neighbour search over a memory bank (torch GEMM blocks; faiss IndexFlatL2 on request).

Distances are Euclidean by default (PatchCore scores patches by the distance to the nearest bank vector);
``squared=True`` returns squared distances. Both backends rank with the expansion ‖q‖² − 2q·b + ‖b‖²,
whose rounding near zero is ~1e-6 in d², i.e. ~1e-3 after the square root. The k returned distances are
therefore recomputed from explicit differences (Q·k·D work, negligible next to the Q·M·D search), so a
query equal to a bank vector gets exactly 0 and both backends agree to fp32 rounding.

Backends: "auto" is torch everywhere. Measured on a 2-core Intel Xeon (AVX512F, no AMX; fp32, 2 threads),
3 136 queries: bank 3 528 × 1024 — faiss 2.08 s, torch 0.57 s; 3 528 × 152 — 0.40 / 0.30 s; 49 392 × 152 —
6.97 / 4.07 s with top-k, 2.10 s with the k = 1 argmin now used. faiss stays selectable (``backend="faiss"``).

Approximate backend ``"ivfpq"`` (docs/SCALE.md, "PatchCore banks beyond memory"): a faiss IndexIVFPQ trained
on the bank itself (k-means to ``nlist`` cells, product quantisation to ``pq_m`` bytes per vector); a query
scans its ``nprobe`` nearest cells and takes the ``refine`` best PQ candidates, whose distances are then
recomputed exactly like the other backends' (so a returned distance is always the true distance to the
returned vector, never below the exact nearest one). Recall@1 and the AUROC cost are measured in
docs/RESULTS.md, "Scale-out (issue 19)".

Devices: ``device=`` places the bank (and the search) on any torch device. faiss-cpu has no GPU build, so
off the CPU the torch backend runs there: one (chunk, M) GEMM block plus a top-k per chunk, and the exact
re-computation of the k distances, all on the device; ``device=None``/"cpu" is the CPU path as before
(faiss when importable). Results come back on the CPU unless ``search(..., on_device=True)``. The ranking
GEMM follows ``torch.backends.cuda.matmul.allow_tf32`` (off by default; with TF32 on, near-ties may rank
differently, the returned distances are still exact). Indices of ties may differ between devices.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
import torch.nn.functional as F

from generalad.device import resolve_device
from generalad.errors import ConfigError

try:  # faiss is a declared dependency; the torch backend keeps everything working without it
    import faiss
except ImportError:  # pragma: no cover - exercised through backend="torch" in tests
    faiss = None

__all__ = ["NearestNeighbours", "IVFPQParams", "argmin_rows", "patchcore_reweight", "BACKENDS"]

BACKENDS = ("auto", "faiss", "torch", "ivfpq")

_CPU = torch.device("cpu")
_DEVICE_BLOCK = 1 << 26  # off the CPU: entries of one (chunk, M) distance block, 256 MB in fp32


def _as_f32(x: torch.Tensor | np.ndarray, what: str, device: torch.device = _CPU) -> torch.Tensor:
    """(N, D) fp32 contiguous tensor on ``device`` (on the CPU faiss needs exactly that layout)."""
    x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ConfigError(f"nearest neighbours: {what} must be a 2-D (N, D) array, got shape {tuple(x.shape)}")
    return x.detach().to(device, torch.float32).contiguous()


class NearestNeighbours:
    """Exact k-NN index over ``bank`` (M, D).

    backend: "auto" (faiss when importable and the device is the CPU, else torch), "faiss" (CPU only) or
    "torch". device: where the bank is stored and searched (None = CPU; "cuda", "cuda:1", a
    ``torch.device``; resolved by :func:`generalad.device.resolve_device`). chunk: queries per search
    call (the torch backend lowers it so its (chunk, M) distance block stays near 64 MB on the CPU,
    256 MB on other devices). faiss uses ``torch.get_num_threads()`` threads at search time.
    ``bank`` is the (M, D) fp32 bank on ``device``.
    """

    def __init__(
        self,
        bank: torch.Tensor | np.ndarray,
        metric: str = "l2",
        *,
        backend: str = "auto",
        chunk: int = 4096,
        device: str | torch.device | None = None,
        ivf: IVFPQParams | None = None,
    ) -> None:
        if metric != "l2":
            raise ConfigError(f"nearest neighbours: unsupported metric {metric!r} (only 'l2')")
        if backend not in BACKENDS:
            raise ConfigError(
                f"nearest neighbours: unknown backend {backend!r} (expected {', '.join(BACKENDS)})"
            )
        if backend in ("faiss", "ivfpq") and faiss is None:
            raise ConfigError(f"nearest neighbours: backend {backend!r} needs faiss (pip install faiss-cpu)")
        if chunk < 1:
            raise ConfigError(f"nearest neighbours: chunk must be >= 1, got {chunk}")
        self.device = _CPU if device is None else resolve_device(device)
        if backend in ("faiss", "ivfpq") and self.device.type != "cpu":
            raise ConfigError(
                f"nearest neighbours: backend {backend!r} runs on the CPU only (faiss-cpu), not on {self.device}; "
                "use backend 'torch' or 'auto'"
            )
        self.bank = _as_f32(bank, "bank", self.device)
        if self.bank.shape[0] == 0:
            raise ConfigError("nearest neighbours: the bank is empty")
        if backend == "auto":  # torch's GEMM + min beat faiss' flat index on the CPU too (module docstring)
            backend = "torch"
        self.backend = backend
        self.chunk = int(chunk)
        if self.backend == "faiss":
            self._index = faiss.IndexFlatL2(self.bank.shape[1])
            self._index.add(self.bank.numpy())
        elif self.backend == "ivfpq":
            self.ivf = (ivf or IVFPQParams()).resolved(*self.bank.shape)
            self._index = _train_ivfpq(self.bank.numpy(), self.ivf)
        if self.backend != "faiss":  # ivfpq searches exactly the queries whose probed cells hold < k vectors
            self._bank_sq = (self.bank * self.bank).sum(1)

    def __len__(self) -> int:
        return self.bank.shape[0]

    @property
    def dim(self) -> int:
        return self.bank.shape[1]

    def search(
        self, queries: torch.Tensor | np.ndarray, k: int = 1, *, squared: bool = False, on_device: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances fp32 (Q, k), indices int64 (Q, k)) of the k nearest bank rows, nearest first.

        ``queries`` (Q, D) may live anywhere; they are searched on the index's device. The results are CPU
        tensors, or on the index's device with ``on_device=True`` (no device→host copy, no sync).
        """
        q = _as_f32(queries, "queries", self.device)
        if q.shape[1] != self.dim:
            raise ConfigError(f"nearest neighbours: queries have {q.shape[1]} dims, the bank has {self.dim}")
        if not 1 <= k <= len(self):
            raise ConfigError(f"nearest neighbours: k must be in [1, {len(self)}], got {k}")
        dist = torch.empty(q.shape[0], k, dtype=torch.float32, device=self.device)
        idx = torch.empty(q.shape[0], k, dtype=torch.int64, device=self.device)
        if self.backend == "faiss":
            search, step = self._search_faiss, self.chunk
        elif self.backend == "ivfpq":
            search, step = self._search_ivfpq, self.chunk
        else:  # the torch backend holds a (step, M) distance block: keep it near 64 MB (256 MB off the CPU)
            block = 1 << 24 if self.device.type == "cpu" else _DEVICE_BLOCK
            search, step = self._search_torch, min(self.chunk, max(16, block // len(self)))
        scratch = None  # the torch backend's (step, M) distance block, allocated once per call, not per chunk
        if self.backend == "torch":
            scratch = torch.empty(min(step, q.shape[0]), len(self), dtype=torch.float32, device=self.device)
        for s in range(0, q.shape[0], step):
            qc = q[s : s + step]
            found = search(qc, k) if scratch is None else search(qc, k, scratch[: len(qc)])
            dist[s : s + step], idx[s : s + step] = self._exact(qc, found)
        if not squared:
            dist.sqrt_()
        if self.device.type != "cpu" and not on_device:
            dist, idx = dist.cpu(), idx.cpu()
        return dist, idx

    def _exact(self, q: torch.Tensor, found: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared distances of the found neighbours from explicit differences, re-sorted ascending."""
        d2 = torch.empty(found.shape, dtype=torch.float32, device=self.device)
        step = max(1, (1 << 22) // (found.shape[1] * self.dim))  # bounds the (step, k, D) temporary
        for s in range(0, q.shape[0], step):
            diff = self.bank[found[s : s + step]] - q[s : s + step, None]
            d2[s : s + step] = diff.pow_(2).sum(2)
        d2, order = d2.sort(dim=1, stable=True)
        return d2, found.gather(1, order)

    def _search_faiss(self, q: torch.Tensor, k: int) -> torch.Tensor:
        faiss.omp_set_num_threads(torch.get_num_threads())
        return torch.from_numpy(self._index.search(q.numpy(), k)[1])

    def _search_ivfpq(self, q: torch.Tensor, k: int) -> torch.Tensor:
        """Indices (Q, k): the k exactly nearest of each query's ``refine``·k IVF-PQ candidates."""
        faiss.omp_set_num_threads(torch.get_num_threads())
        self._index.nprobe = self.ivf.nprobe
        n_cand = min(len(self), max(k, self.ivf.refine * k))
        cand = torch.from_numpy(self._index.search(q.numpy(), n_cand)[1])
        missing = cand < 0  # fewer than n_cand vectors in the probed cells
        if bool(missing[:, :k].any()):  # not even k found: those queries are searched exactly
            rows = missing[:, :k].any(1).nonzero().squeeze(1)
            cand[rows, :k] = self._search_torch(q[rows], k)
            missing[rows, :k] = False
        d2 = (self.bank[cand.clamp_min(0)] - q[:, None]).pow_(2).sum(2).masked_fill_(missing, float("inf"))
        return cand.gather(1, d2.topk(k, dim=1, largest=False, sorted=True).indices)

    def _search_torch(self, q: torch.Tensor, k: int, out: torch.Tensor | None = None) -> torch.Tensor:
        # (chunk, M) block of ‖b‖² − 2q·b (‖q‖² does not change the ranking); k smallest, nearest first
        d2 = torch.addmm(self._bank_sq, q, self.bank.T, alpha=-2.0, out=out)
        if k == 1:  # PatchCore / InReaCh: a min is one pass, top-k a partial sort
            return argmin_rows(d2)
        return d2.topk(k, dim=1, largest=False, sorted=True).indices


def argmin_rows(d2: torch.Tensor, group: int = 64) -> torch.Tensor:
    """``d2.argmin(1, keepdim=True)`` (Q, 1) int64 — the same indices, ties included — from group minima.

    On the CPU torch's ``argmin`` over rows runs scalar code while ``amin`` is vectorised: on a 2-core Xeon
    (AVX512F), 4 096 × 3 528 fp32 took 14–16 ms with ``argmin`` and 4.1 ms this way (docs/RESULTS.md,
    issue 17). The minimum of each run of ``group`` columns, then the first group holding the row minimum,
    then the first minimum inside that group: the first occurrence overall, as ``argmin`` returns.
    """
    q, m = d2.shape
    n_groups = m // group
    if n_groups < 2 or d2.device.type != "cpu":
        return d2.argmin(dim=1, keepdim=True)
    m0 = n_groups * group
    mins = torch.empty(q, n_groups + (m0 < m), dtype=d2.dtype, device=d2.device)
    torch.amin(d2[:, :m0].unflatten(1, (n_groups, group)), dim=2, out=mins[:, :n_groups])
    if m0 < m:  # the tail columns are one last (shorter) group
        torch.amin(d2[:, m0:], dim=1, out=mins[:, n_groups])
    first = mins.argmin(dim=1, keepdim=True) * group
    # columns past the end (tail group) repeat the last column after its real occurrence: first stays first
    cols = (first + torch.arange(group, device=d2.device)).clamp_max_(m - 1)
    return cols.gather(1, d2.gather(1, cols).argmin(dim=1, keepdim=True))


@dataclasses.dataclass(frozen=True)
class IVFPQParams:
    """faiss IVF-PQ settings. None = derived from the bank (``resolved``).

    nlist: k-means cells (default: the power of two nearest √M, at most M / 39 — faiss' advice of ≥ 39
    training points per cell). pq_m: PQ sub-vectors, one byte each (default: the divisor of D nearest D / 4,
    i.e. 4-dim sub-vectors; 38 for D = 152). nprobe: cells scanned per query. refine: PQ candidates per
    wanted neighbour whose exact distances decide.
    """

    nlist: int | None = None
    pq_m: int | None = None
    nprobe: int = 8
    refine: int = 8

    def resolved(self, m: int, d: int) -> IVFPQParams:
        """Defaults filled in and checked against a bank of M × D; one-line ConfigErrors."""
        if m < 256:
            raise ConfigError(f"ivfpq: the bank has {m} vectors; IVF-PQ (8-bit codes) needs at least 256")
        nlist = self.nlist or int(min(max(1, m // 39), 2 ** round(math.log2(math.sqrt(m)))))
        pq_m = self.pq_m or min((v for v in range(1, d + 1) if d % v == 0), key=lambda v: abs(v - d / 4))
        if not 1 <= nlist <= m:
            raise ConfigError(f"ivfpq: ivf_nlist must be in [1, {m}] for a bank of {m} vectors, got {nlist}")
        if d % pq_m:
            raise ConfigError(f"ivfpq: ivf_m must divide the feature width {d}, got {pq_m}")
        if self.nprobe < 1 or self.refine < 1:
            raise ConfigError(f"ivfpq: ivf_nprobe and ivf_refine must be >= 1, got {self.nprobe} and {self.refine}")
        return dataclasses.replace(self, nlist=nlist, pq_m=pq_m)


def _train_ivfpq(bank: np.ndarray, p: IVFPQParams):
    """IndexIVFPQ (nlist cells, pq_m bytes per vector) trained on and filled with the bank itself."""
    faiss.omp_set_num_threads(torch.get_num_threads())
    index = faiss.IndexIVFPQ(faiss.IndexFlatL2(bank.shape[1]), bank.shape[1], p.nlist, p.pq_m, 8)
    index.cp.min_points_per_centroid = 1  # small cells are fine: no warning spam on small banks
    # PQ k-means (pq_m codebooks of 256): faiss' 25 iterations on up to 65536 points took 27 s at 49k × 152
    # (1 thread); 10 iterations on ≤ 16384 points take a few seconds (recall: docs/RESULTS.md)
    index.pq.cp.niter, index.pq.cp.max_points_per_centroid, index.pq.cp.min_points_per_centroid = 10, 64, 1
    index.train(bank)
    index.add(bank)
    return index


def patchcore_reweight(
    patch_scores: torch.Tensor,
    nn_indices: torch.Tensor,
    features: torch.Tensor,
    index: NearestNeighbours,
    *,
    b: int = 9,
) -> torch.Tensor:
    """PatchCore image scores with the optional isolation re-weighting (Roth et al. 2022, eq. 7).

    patch_scores: (B, P) Euclidean distance of each test patch to its nearest bank vector.
    nn_indices: (B, P) index of that bank vector. features: (B, P, D) the test patch features.
    For each image take the patch m* with the largest score s*, its nearest bank vector m and m's b
    nearest bank neighbours N_b(m) (m itself first). Image score, as in the paper and anomalib:
    ``s = (1 - exp|m* - m| / Σ_{n ∈ N_b(m)} exp|m* - n|) * s*`` (a softmax over the b distances, not
    negated). b = 1 returns the plain maximum. Returns (B,) fp32 on ``patch_scores``' device; the inputs may
    live on any devices, the support search and its distances run on the index's device.
    """
    if patch_scores.ndim != 2 or nn_indices.shape != patch_scores.shape:
        raise ConfigError(
            f"patchcore_reweight: patch_scores and nn_indices must both be (B, P), got "
            f"{tuple(patch_scores.shape)} and {tuple(nn_indices.shape)}"
        )
    top = patch_scores.argmax(1)
    rows = torch.arange(patch_scores.shape[0], device=patch_scores.device)
    s_star = patch_scores[rows, top]
    b = min(b, len(index))
    if b <= 1:
        return s_star
    at = features.device
    m_star = features[rows.to(at), top.to(at)].to(index.device, torch.float32)
    at = nn_indices.device
    matched = nn_indices[rows.to(at), top.to(at)].to(index.device)
    _, support = index.search(index.bank[matched], k=b, on_device=True)  # (B, b), the matched vector first
    dist = (index.bank[support] - m_star.unsqueeze(1)).norm(dim=2)  # (B, b)
    weight = 1.0 - F.softmax(dist, dim=1)[:, 0]
    return weight.to(patch_scores.device) * s_star
