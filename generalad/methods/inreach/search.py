"""Exact 1-NN against the InReaCh bank and bank diagnostics (docs/methods/inreach.md §7).

Distances are SQUARED L2 throughout (faiss IndexFlatL2 convention, used by [C]); the image score is
computed by the estimator from these patch scores.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from generalad.errors import ConfigError

from generalad.nn.knn import NearestNeighbours

BACKENDS = ("auto", "faiss", "torch")


class NearestBank:
    """Exact squared-L2 1-NN over an InReaCh bank (M, D): the shared :class:`NearestNeighbours` index
    (faiss IndexFlatL2, or chunked torch) with InReaCh's conventions — squared distances, k = 1, and a
    query chunk sized so one (queries × bank) block stays within ``block_mb``."""

    def __init__(
        self, bank: torch.Tensor | np.ndarray, *, backend: str = "auto", block_mb: float = 128.0,
        device: torch.device | str | None = None,
    ):
        if backend not in BACKENDS:
            raise ConfigError(f"nearest-neighbour backend must be one of {BACKENDS}, got {backend!r}")
        b = torch.as_tensor(bank).float().cpu().contiguous()
        if b.ndim != 2 or b.shape[0] == 0:
            raise ConfigError(f"InReaCh bank must be a non-empty (M, D) array, got {tuple(b.shape)}")
        self.dim, self.size = int(b.shape[1]), int(b.shape[0])
        chunk = max(1, int(block_mb * 2**20 // (4 * self.size)))
        self._index = NearestNeighbours(b, backend=backend, chunk=chunk, device=device)
        self.backend = self._index.backend

    def search(self, queries: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries (Q, D) → (squared L2 to the nearest bank vector (Q,) fp32, its index (Q,) int64)."""
        q = torch.as_tensor(queries).float().cpu().contiguous()
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ConfigError(f"queries must be (Q, {self.dim}), got {tuple(q.shape)}")
        if q.shape[0] == 0:
            return torch.zeros(0), torch.zeros(0, dtype=torch.long)
        d2, idx = self._index.search(q, k=1, squared=True)
        return torch.as_tensor(d2)[:, 0].float().clamp_(min=0.0), torch.as_tensor(idx)[:, 0].long()


def nearest_distances(
    bank: torch.Tensor | np.ndarray, queries: torch.Tensor | np.ndarray, *, backend: str = "auto"
) -> torch.Tensor:
    """Squared L2 from each query (Q, D) to its nearest bank vector (M, D) → (Q,) fp32 (exact)."""
    return NearestBank(bank, backend=backend).search(queries)[0]


def patch_labels_from_masks(masks: torch.Tensor | np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Boolean masks (N, H, W) → (N, h·w): True where the patch's image cell holds any anomalous pixel
    (4×4 px cells at 224 px / 56×56 grid). Uses adaptive max pooling, so H, W need not divide evenly."""
    m = torch.as_tensor(np.asarray(masks)).float()
    if m.ndim != 3:
        raise ConfigError(f"masks must be (N, H, W), got {tuple(m.shape)}")
    pooled = F.adaptive_max_pool2d(m[:, None], grid)
    return (pooled[:, 0] > 0).reshape(m.shape[0], -1)


def precision_recall_of_bank(
    bank_ids: torch.Tensor | np.ndarray, patch_is_anomalous: torch.Tensor | np.ndarray
) -> dict[str, float]:
    """Channel precision / recall of the supplement (docs/methods/inreach.md §7, diagnostics).

    bank_ids: (M, 2) unique (image, patch) pairs in the bank; patch_is_anomalous: (N, P) bool.
    precision = fraction of bank patches whose cell holds no anomalous pixel;
    recall = nominal patches kept in the bank / all nominal patches of the training set.
    """
    ids = torch.as_tensor(np.asarray(bank_ids)).long().reshape(-1, 2)
    lab = torch.as_tensor(np.asarray(patch_is_anomalous)).bool()
    n_bank = int(ids.shape[0])
    kept_nominal = int((~lab[ids[:, 0], ids[:, 1]]).sum()) if n_bank else 0
    all_nominal = int((~lab).sum())
    return {
        "precision": kept_nominal / n_bank if n_bank else float("nan"),
        "recall": kept_nominal / all_nominal if all_nominal else float("nan"),
        "bank_size": float(n_bank),
        "bank_nominal": float(kept_nominal),
        "train_nominal": float(all_nominal),
    }
