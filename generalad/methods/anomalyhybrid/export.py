"""The AnomalyHybrid detector as a traceable module (docs/DEPLOY.md): pixels → UNet → softmax → pooled max.

Only the detector is exported (the generator is a training-time tool). Same steps as
``AnomalyHybrid._probabilities`` + ``_pooled``: the anomalous-class softmax at the working size, and the image
score as the max of its ``window``×``window`` average (``detector.pooled_max``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from generalad.methods.anomalyhybrid.detector import pooled_max


class DetectorHead(nn.Module):
    """([images (B, 3, S, S) in [0, 1]], _) → (pooled-max score (B,), anomaly probability (B, S, S))."""

    def __init__(self, detector: nn.Module, window: int) -> None:
        super().__init__()
        self.detector = copy.deepcopy(detector).float().eval()
        self.window = int(window)

    def forward(self, maps: list[torch.Tensor], attention: torch.Tensor | None = None):
        prob = torch.softmax(self.detector(maps[0].float()).float(), dim=1)[:, 1]
        return pooled_max(prob, self.window), prob
