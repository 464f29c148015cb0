"""Exact nearest-neighbour search over a memory bank (faiss IndexFlatL2, torch fallback).

Distances are Euclidean by default (PatchCore scores patches by the distance to the nearest bank vector);
``squared=True`` returns what faiss computes natively. Both backends use the expansion
‖q‖² − 2q·b + ‖b‖², so tiny negative squared distances from rounding are clamped to 0.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from generalad.errors import ConfigError

try:  # faiss is a declared dependency; the torch backend keeps everything working without it
    import faiss
except ImportError:  # pragma: no cover - exercised through backend="torch" in tests
    faiss = None

__all__ = ["NearestNeighbours", "patchcore_reweight"]


def _as_f32(x: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    """(N, D) fp32 contiguous CPU tensor (faiss needs exactly that layout)."""
    x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ConfigError(f"nearest neighbours: {what} must be a 2-D (N, D) array, got shape {tuple(x.shape)}")
    return x.detach().to("cpu", torch.float32).contiguous()


class NearestNeighbours:
    """Exact k-NN index over ``bank`` (M, D).

    backend: "auto" (faiss when importable, else torch), "faiss" or "torch".
    chunk: queries per search call (bounds the (chunk, M) distance block of the torch backend and the
    result buffers of faiss). faiss uses ``torch.get_num_threads()`` threads at search time.
    """

    def __init__(
        self,
        bank: torch.Tensor | np.ndarray,
        metric: str = "l2",
        *,
        backend: str = "auto",
        chunk: int = 4096,
    ) -> None:
        if metric != "l2":
            raise ConfigError(f"nearest neighbours: unsupported metric {metric!r} (only 'l2')")
        if backend not in ("auto", "faiss", "torch"):
            raise ConfigError(f"nearest neighbours: unknown backend {backend!r} (expected auto, faiss or torch)")
        if backend == "faiss" and faiss is None:
            raise ConfigError("nearest neighbours: backend 'faiss' requested but faiss is not installed (pip install faiss-cpu)")
        if chunk < 1:
            raise ConfigError(f"nearest neighbours: chunk must be >= 1, got {chunk}")
        self.bank = _as_f32(bank, "bank")
        if self.bank.shape[0] == 0:
            raise ConfigError("nearest neighbours: the bank is empty")
        self.backend = "faiss" if backend == "auto" and faiss is not None else ("torch" if backend == "auto" else backend)
        self.chunk = int(chunk)
        if self.backend == "faiss":
            self._index = faiss.IndexFlatL2(self.bank.shape[1])
            self._index.add(self.bank.numpy())
        else:
            self._bank_sq = (self.bank * self.bank).sum(1)

    def __len__(self) -> int:
        return self.bank.shape[0]

    @property
    def dim(self) -> int:
        return self.bank.shape[1]

    def search(
        self, queries: torch.Tensor | np.ndarray, k: int = 1, *, squared: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances fp32 (Q, k), indices int64 (Q, k)) of the k nearest bank rows, nearest first."""
        q = _as_f32(queries, "queries")
        if q.shape[1] != self.dim:
            raise ConfigError(f"nearest neighbours: queries have {q.shape[1]} dims, the bank has {self.dim}")
        if not 1 <= k <= len(self):
            raise ConfigError(f"nearest neighbours: k must be in [1, {len(self)}], got {k}")
        dist = torch.empty(q.shape[0], k, dtype=torch.float32)
        idx = torch.empty(q.shape[0], k, dtype=torch.int64)
        search = self._search_faiss if self.backend == "faiss" else self._search_torch
        for s in range(0, q.shape[0], self.chunk):
            dist[s : s + self.chunk], idx[s : s + self.chunk] = search(q[s : s + self.chunk], k)
        dist.clamp_(min=0)
        return (dist, idx) if squared else (dist.sqrt_(), idx)

    def _search_faiss(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        faiss.omp_set_num_threads(torch.get_num_threads())
        d, i = self._index.search(q.numpy(), k)
        return torch.from_numpy(d), torch.from_numpy(i)

    def _search_torch(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        # (chunk, M) block of squared distances; topk of the negated values = k smallest, sorted
        d2 = torch.addmm(self._bank_sq, q, self.bank.T, alpha=-2.0).add_((q * q).sum(1, keepdim=True))
        neg, i = d2.neg_().topk(k, dim=1, largest=True, sorted=True)
        return neg.neg_(), i


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
    negated). b = 1 returns the plain maximum. Returns (B,) fp32.
    """
    if patch_scores.ndim != 2 or nn_indices.shape != patch_scores.shape:
        raise ConfigError(
            f"patchcore_reweight: patch_scores and nn_indices must both be (B, P), got "
            f"{tuple(patch_scores.shape)} and {tuple(nn_indices.shape)}"
        )
    top = patch_scores.argmax(1)
    rows = torch.arange(patch_scores.shape[0])
    s_star = patch_scores[rows, top]
    b = min(b, len(index))
    if b <= 1:
        return s_star
    m_star = features[rows, top].to(torch.float32)
    _, support = index.search(index.bank[nn_indices[rows, top]], k=b)  # (B, b), the matched vector first
    dist = (index.bank[support] - m_star.unsqueeze(1)).norm(dim=2)  # (B, b)
    weight = 1.0 - F.softmax(dist, dim=1)[:, 0]
    return weight * s_star
