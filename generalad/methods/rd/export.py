"""RD / ARD inference as a traceable module (docs/DEPLOY.md): teacher maps → student → Σ cosine distances.

``core.distance_maps`` on the student's reconstruction, as ``RD._infer_features``; the Gaussian that
``_grids_to_maps`` applies becomes a constant separable operator (``RD._export_maps``). The student is a deep
copy in eval mode (BatchNorm running statistics), so exporting never touches the model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from generalad.methods.rd.core import distance_maps


class RDHead(nn.Module):
    """(teacher maps, _) → (max of the unblurred map (B,), distance maps (B, S, S))."""

    def __init__(self, student: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.student = copy.deepcopy(student).float().eval()
        self.size = (int(size[0]), int(size[1]))

    def forward(self, maps: list[torch.Tensor], attention: torch.Tensor | None = None):
        teacher = [m.float() for m in maps]
        dist = distance_maps(teacher, self.student(teacher), self.size)
        return dist.flatten(1).amax(dim=1), dist
