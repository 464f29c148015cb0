"""PatchCore-style locally aware patch features and exact nearest-neighbour search (faiss).

``locally_aware_patches``: every map's 3×3 neighbourhood (stride 1, zero padding 1) is unfolded to a C·9
vector and adaptive-average-pooled to ``per_layer_dim`` (PatchCore's and InReaCh's aggregation); deeper maps
are resized bilinearly to the first map's grid; the per-layer vectors are stacked and pooled to ``out_dim``.
Adaptive average pooling of a vector is a fixed linear map, so it is applied as one matmul with a pooling
matrix instead of materialising pooled copies.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F


@lru_cache(maxsize=64)
def _pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_in, n_out) matrix equal to ``F.adaptive_avg_pool1d`` from n_in to n_out values."""
    eye = torch.eye(n_in).unsqueeze(1)  # (n_in, 1, n_in): pooling each basis vector gives one row
    return F.adaptive_avg_pool1d(eye, n_out).squeeze(1)


def _aggregate_layer(fmap: torch.Tensor, grid: tuple[int, int], dim: int, kernel: int) -> torch.Tensor:
    """(B, C, h, w) → (B, H*W, dim) on ``grid``: unfold k×k, pool the C·k² vector to ``dim``."""
    b, c, h, w = fmap.shape
    cols = F.unfold(fmap.float(), kernel_size=kernel, padding=kernel // 2)  # (B, C*k*k, h*w)
    if (h, w) != tuple(grid):  # resize the unfolded neighbourhoods, as PatchCore does
        cols = cols.reshape(b, c * kernel * kernel, h, w)
        cols = F.interpolate(cols, size=grid, mode="bilinear", align_corners=False).flatten(2)
    return cols.transpose(1, 2) @ _pool_matrix(c * kernel * kernel, dim)  # (B, P, dim)


def locally_aware_patches(
    maps: list[torch.Tensor],
    *,
    out_dim: int = 1024,
    per_layer_dim: int | None = None,
    kernel: int = 3,
    grid: tuple[int, int] | None = None,
    chunk: int = 16,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, P, out_dim) locally aware features on the first map's grid (or ``grid``), and that grid."""
    grid = tuple(grid or maps[0].shape[-2:])
    per_layer_dim = per_layer_dim or out_dim
    out = []
    for start in range(0, maps[0].shape[0], chunk):  # bounded memory: unfolded maps are 9× the features
        layers = [_aggregate_layer(m[start : start + chunk], grid, per_layer_dim, kernel) for m in maps]
        stacked = torch.stack(layers, dim=-1)  # (b, P, per_layer_dim, L)
        b, p = stacked.shape[:2]
        pooled = stacked.reshape(b, p, -1) @ _pool_matrix(per_layer_dim * len(maps), out_dim)
        out.append(pooled)
    return torch.cat(out), grid


class NearestNeighbours:
    """Exact L2 nearest neighbours over a fixed bank: faiss ``IndexFlatL2`` (torch fallback)."""

    def __init__(self, bank: torch.Tensor | np.ndarray, *, backend: str = "auto") -> None:
        self.bank = np.ascontiguousarray(np.asarray(bank, dtype=np.float32))
        self.backend = backend
        self._index = None
        if backend in ("auto", "faiss"):
            try:
                import faiss

                faiss.omp_set_num_threads(torch.get_num_threads())
                self._index = faiss.IndexFlatL2(self.bank.shape[1])
                self._index.add(self.bank)
                self.backend = "faiss"
            except ImportError:
                if backend == "faiss":
                    raise
                self.backend = "torch"

    def search(self, queries: torch.Tensor | np.ndarray, k: int = 1, *, squared: bool = False,
               chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) distances (Euclidean unless ``squared``) and bank indices, nearest first."""
        q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
        dists, idx = [], []
        for start in range(0, q.shape[0], chunk):
            d, i = self._search_chunk(q[start : start + chunk], k)
            dists.append(d)
            idx.append(i)
        d = np.concatenate(dists) if dists else np.zeros((0, k), np.float32)
        d = np.maximum(d, 0.0)
        return (d if squared else np.sqrt(d)), (np.concatenate(idx) if idx else np.zeros((0, k), np.int64))

    def _search_chunk(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._index is not None:
            return self._index.search(q, k)
        qt, bt = torch.from_numpy(q), torch.from_numpy(self.bank)
        d2 = (qt * qt).sum(1, keepdim=True) - 2 * qt @ bt.T + (bt * bt).sum(1)[None]
        vals, ids = torch.topk(d2, k, dim=1, largest=False)
        return vals.numpy(), ids.numpy()
