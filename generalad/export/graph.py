"""One module from pre-processed images to raw scores and maps: what ``generalad export`` writes (docs/DEPLOY.md).

``InferenceGraph(x)`` with ``x`` (B, 3, S, S) float32, already resized and normalised with the backbone's
mean / std, returns ``(scores (B,), maps (B, S, S))`` — the *raw* image scores and anomaly maps at the working
size that ``AnomalyModel.infer_batches`` yields for the same images. Nothing user-facing is baked in: no
threshold, no normalisation of scores, no resize to the original image size (those live in the export's
``deploy.json`` and in ``generalad.deploy``, which runs without torch).

The pieces a method supplies (``AnomalyModel._export_head`` and friends):

* a *head* ``(maps: list[Tensor], attention: Tensor | None) -> (scores (B,), grids (B, h, w))`` that is the
  method's ``_infer_features`` on one batch, written with fixed-shape tensor ops only (no faiss, no Python
  loops over data-dependent sizes);
* a *map step* grids → (B, S, S): :class:`SeparableMaps` (interpolation + Gaussian as two constant matrices,
  exactly ``generalad.nn.maps.upsample_maps``) unless the method's maps are already at the working size;
* a *score rule*: the head's scores, :class:`MaxOfMap` (PatchCore, InReaCh, RD) or the method's own module.
"""

from __future__ import annotations

import torch
from torch import nn

from generalad.nn.maps import _axis_operator, _clipped_radius


class SeparableMaps(nn.Module):
    """(B, h, w) grids → (B, S, S) maps as ``A_h @ grid @ A_wᵀ`` (``upsample_maps``' own operators)."""

    def __init__(self, grid: tuple[int, int], size: tuple[int, int], *, sigma: float, radius: int | None,
                 mode: str) -> None:
        super().__init__()
        r = _clipped_radius(sigma, radius, size[0], size[1])
        self.register_buffer("a_h", _axis_operator(grid[0], size[0], mode, float(sigma), r).clone())
        self.register_buffer("a_w_t", _axis_operator(grid[1], size[1], mode, float(sigma), r).T.contiguous())

    def forward(self, grids: torch.Tensor) -> torch.Tensor:
        return self.a_h @ grids.float() @ self.a_w_t


class Identity2(nn.Module):
    """Maps that are already at the working size (RD's distance maps before their blur is folded in, AnomalyHybrid)."""

    def forward(self, grids: torch.Tensor) -> torch.Tensor:
        return grids.float()


class MaxOfMap(nn.Module):
    """Image score = max of the (smoothed) map, as ``_final_scores`` of PatchCore / InReaCh / RD."""

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return maps.flatten(1).amax(dim=1)


class InferenceGraph(nn.Module):
    """Backbone → method head → map step → score rule, all frozen, in fp32."""

    def __init__(self, backbone: nn.Module, head: nn.Module, maps: nn.Module, score: nn.Module | None = None, *,
                 with_attention: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.maps = maps
        self.score = score
        self.with_attention = with_attention
        self.requires_grad_(False)
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(images, with_attention=self.with_attention)
        scores, grids = self.head(features.maps, features.attention)
        maps = self.maps(grids)
        if self.score is not None:
            scores = self.score(maps)
        return scores.float(), maps


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor, *,
                      squared: bool = False) -> torch.Tensor:
    """Exact nearest-neighbour L2 distance of each (B, P, D) query to a (M, D) bank → (B, P), as one GEMM + min.

    ‖q − b‖² = ‖q‖² − 2 q·b + ‖b‖², the expansion faiss' flat index uses for batches too; clamped at 0 before
    the square root (rounding can make it slightly negative). ``bank_sq`` = ‖b‖² (M,), computed once at export.
    """
    q_sq = (queries * queries).sum(dim=-1, keepdim=True)
    d2 = (q_sq - 2.0 * (queries @ bank.T) + bank_sq).amin(dim=-1).clamp_min(0.0)
    return d2 if squared else d2.sqrt()
