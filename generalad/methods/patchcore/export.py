"""PatchCore's inference as a traceable module (docs/DEPLOY.md): the memory bank inside the graph.

``_infer_features`` searches the bank with faiss; here the exact nearest neighbour is one GEMM + min over
the bank (``generalad.export.graph.nearest_distances``), which needs no custom operator in ONNX / OpenVINO.
Memory per image: P × M fp32 distances (784 patches × a 3 500-patch bank ≈ 11 MB at 224 px).
"""

from __future__ import annotations

import torch
from torch import nn

from generalad.export.graph import nearest_distances
from generalad.nn.patches import PatchEmbedding


class PatchCoreHead(nn.Module):
    """(maps, attention) → (max patch distance (B,), distance grid (B, h, w))."""

    def __init__(self, channels: list[int], bank: torch.Tensor, *, out_dim: int) -> None:
        super().__init__()
        self.embed = PatchEmbedding(list(channels), out_dim=out_dim)
        bank = bank.float().contiguous()
        self.register_buffer("bank", bank.clone())
        self.register_buffer("bank_sq", (bank * bank).sum(dim=1))

    def forward(self, maps: list[torch.Tensor], attention: torch.Tensor | None = None):
        h, w = maps[0].shape[-2:]
        dist = nearest_distances(self.embed(maps), self.bank, self.bank_sq)
        return dist.amax(dim=1), dist.reshape(dist.shape[0], h, w)
