"""InReaCh inference as a traceable module (docs/DEPLOY.md): descriptors → squared L2 to the nominal bank.

``InReaCh.descriptors`` (locally aware patches, optional grid pooling, optional positional channels) and the
flat-index search as one GEMM + min (squared distances, as the paper's index). Models fitted with rotational
alignment rotate every test image onto the reference first; that search is not part of the graph, so
``InReaCh._export_head`` refuses them with one line.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from generalad.export.graph import nearest_distances
from generalad.methods.inreach.layout import positional_channels
from generalad.nn.patches import PatchEmbedding


class InReaChHead(nn.Module):
    """(maps, _) → (max squared distance (B,), squared-distance grid (B, h, w))."""

    def __init__(self, channels: list[int], bank: torch.Tensor, *, out_dim: int, grid_pool: int,
                 grid: tuple[int, int], positional_weight: float | None) -> None:
        super().__init__()
        self.embed = PatchEmbedding(list(channels), out_dim=out_dim)
        self.grid_pool, self.grid = int(grid_pool), (int(grid[0]), int(grid[1]))
        bank = bank.float().contiguous()
        self.register_buffer("bank", bank.clone())
        self.register_buffer("bank_sq", (bank * bank).sum(dim=1))
        pos = positional_channels(self.grid, positional_weight) if positional_weight is not None else torch.zeros(0)
        self.register_buffer("positions", pos.float().reshape(1, -1, pos.shape[-1]) if pos.numel() else pos)

    def forward(self, maps: list[torch.Tensor], attention: torch.Tensor | None = None):
        patches = self.embed(maps)
        if self.grid_pool > 1:
            n, _, d = patches.shape
            x = patches.transpose(1, 2).reshape(n, d, *maps[0].shape[-2:])
            patches = F.avg_pool2d(x, self.grid_pool).flatten(2).transpose(1, 2)
        if self.positions.numel():
            patches = torch.cat([patches, self.positions.expand(patches.shape[0], -1, -1)], dim=2)
        dist2 = nearest_distances(patches, self.bank, self.bank_sq, squared=True)
        return dist2.amax(dim=1), dist2.reshape(dist2.shape[0], *self.grid)
