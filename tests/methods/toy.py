"""A toy method in 30 lines: how a new method plugs into the frame (registry, estimator, CLI) unchanged.

Score = distance of each patch feature to the mean training feature at the same position.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from generalad.methods import AnomalyModel, BaseConfig


@dataclasses.dataclass
class ToyConfig(BaseConfig):
    power: float = 2.0  # distance exponent (a method-specific option, reachable through --set)


class MeanDistance(AnomalyModel):
    name: ClassVar[str] = "toy"
    Config: ClassVar[type[BaseConfig]] = ToyConfig

    def __init__(self, config: ToyConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.mean_: torch.Tensor | None = None

    def _is_fitted(self) -> bool:
        return self.mean_ is not None

    def _fit_features(self, features, samples, *, held_out=None) -> None:
        self.mean_ = features.maps[-1].mean(dim=0)  # (C, h, w)

    def _infer_features(self, features):
        grids = (features.maps[-1] - self.mean_).abs().pow(self.config.power).sum(dim=1)  # (N, h, w)
        return grids.flatten(1).amax(dim=1).numpy(), grids

    def _state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean_}

    def _load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.mean_ = tensors["mean"].float()
