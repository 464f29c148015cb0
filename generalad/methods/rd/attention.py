"""Channel / spatial attention blocks for ARD's one-class embedding (docs/methods/ard.md §3).

Pure ``nn.Module``s that keep the input's shape: ``(B, C, H, W) -> (B, C, H, W)``, a multiplicative gate on
the features (so a block near its initial state passes features through scaled by ~0.5, never zeroed).

* ``CBAM`` (Woo et al., 2018): channel gate ``sigmoid(MLP(avgpool F) + MLP(maxpool F))`` with a shared
  C → C/r → C MLP, then spatial gate ``sigmoid(conv7×7([mean_c F'; max_c F']))``. ≈ 2C²/r + 98 parameters
  (33 k for C = 512, r = 16).
* ``SE`` (Hu et al., 2018): channel gate ``sigmoid(MLP(avgpool F))``.
* ``ECA`` (Wang et al., 2020): channel gate from a 1-D convolution over the pooled channel vector, kernel size
  adapted to C (``k = |log2(C)/2 + 1/2|`` rounded to odd); a handful of parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from generalad.errors import ConfigError

ATTENTIONS = ("cbam", "se", "eca")


def _hidden(channels: int, reduction: int) -> int:
    return max(1, channels // reduction)


class ChannelGate(nn.Module):
    """CBAM's channel attention (``pools=("avg", "max")``) or SE's (``pools=("avg",)``)."""

    def __init__(self, channels: int, reduction: int = 16, pools: tuple[str, ...] = ("avg", "max")) -> None:
        super().__init__()
        self.pools = pools
        hidden = _hidden(channels, reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=True), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1, bias=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        if "max" in self.pools:
            logits = logits + self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(logits)


class SpatialGate(nn.Module):
    """CBAM's spatial attention: a 7×7 conv over the channel-mean and channel-max maps."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, reduction, pools=("avg", "max"))
        self.spatial = SpatialGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class SE(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, reduction, pools=("avg",))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel(x)


class ECA(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:  # reduction unused: ECA has no bottleneck
        super().__init__()
        k = int(abs(math.log2(channels) / 2 + 0.5))
        k = k if k % 2 else k + 1
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.mean(dim=(2, 3)).unsqueeze(1))  # (B, 1, C)
        return x * torch.sigmoid(y).transpose(1, 2).unsqueeze(-1)


_BY_NAME = {"cbam": CBAM, "se": SE, "eca": ECA}


def make_attention(kind: str, channels: int, reduction: int = 16) -> nn.Module:
    """An attention block by name (``cbam`` | ``se`` | ``eca``); one-line ConfigError otherwise."""
    if kind not in _BY_NAME:
        raise ConfigError(f"unknown attention {kind!r}; choose one of {', '.join(ATTENTIONS)} (--attention)")
    return _BY_NAME[kind](channels, reduction)
