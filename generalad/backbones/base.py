"""What every backbone family shares: the ``Backbone`` module contract, its outputs, and pre-processing.

Kept apart from ``__init__`` so the family modules (``vit``, ``cnn``) can import it without a cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from generalad.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_INIT = "random-init"  # weights_sha256 of a backbone built with weights="random" (tests only)


@dataclass
class Features:
    """One batch of backbone output."""

    maps: list[torch.Tensor]  # each (B, C, h, w); ViT: patch tokens after the final LayerNorm
    attention: torch.Tensor | None = None  # (B, heads, h*w) CLS→patch attention of the last block (ViT only)


@dataclass
class FeatureSet:
    """Features of a whole sample list, float32 on the CPU, in sample order."""

    maps: list[torch.Tensor]  # each (N, C, h, w)
    attention: torch.Tensor | None = None  # (N, heads, h*w)

    def __len__(self) -> int:
        return self.maps[0].shape[0] if self.maps else 0


def as_hw(size: int | Sequence[int], flag: str = "--image-size") -> tuple[int, int]:
    """``518`` or ``(518, 518)`` → ``(518, 518)``; anything else is a one-line ConfigError."""
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in hw):
        raise ConfigError(f"image size must be a positive int or (height, width), got {size!r} ({flag})")
    return int(hw[0]), int(hw[1])


def _to_chw(image: np.ndarray) -> torch.Tensor:
    """HxWx3 float in [0, 1] → (1, 3, H, W) float32; grey or uint8 input is accepted and converted."""
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ConfigError(f"preprocess expects HxWx3 images, got an array of shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not arr.flags.writeable:  # decoders may hand out read-only views; torch wants to own writable memory
        arr = arr.copy()
    t = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)
    return t.expand(1, 3, *t.shape[-2:]) if t.shape[1] == 1 else t


def preprocess(
    images: Sequence[np.ndarray],
    size: int | Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Images (float32 HxWx3 in [0, 1]) → normalised (B, 3, H, W): exact resize, no crop, no aspect ratio kept.

    Bicubic with antialias (as PIL does when shrinking) and a clamp, because bicubic overshoots [0, 1] at edges.
    """
    hw = as_hw(size)
    if len(images) == 0:
        return torch.empty(0, 3, *hw)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    out = []
    for image in images:
        t = _to_chw(image)
        if tuple(t.shape[-2:]) != hw:
            t = F.interpolate(t, size=hw, mode="bicubic", antialias=True, align_corners=False).clamp_(0.0, 1.0)
        out.append(t)
    return (torch.cat(out) - mean_t) / std_t


class Backbone(nn.Module):
    """A frozen feature extractor: ``forward(x, with_attention=False) -> Features``.

    Families set ``kind``, ``layers``, ``strides``, ``channels`` (and ``num_heads``/``patch_size`` for ViTs).
    """

    kind: str = ""

    def __init__(
        self,
        *,
        name: str,
        arch: str,
        weights_sha256: str,
        weights_path: str | None,
        layers: list[str],
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        weights_label: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.arch = arch  # the timm / torchvision architecture behind the name
        self.weights_sha256 = weights_sha256
        self.weights_path = weights_path
        self.weights_label = weights_label
        self.layers = list(layers)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.num_heads: int | None = None
        self.patch_size: int | None = None
        self.strides: list[int] = []
        self.channels: list[int] = []

    def freeze(self) -> Backbone:
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> Backbone:
        # Frozen for good: a parent module's .train() must not switch BatchNorm statistics or dropout on.
        return super().train(False)

    def check_image_size(self, size: int | Sequence[int]) -> tuple[int, int]:
        """Validate an input size for this backbone; returns (H, W)."""
        return as_hw(size)

    def export_copy(self, size: int | Sequence[int]) -> nn.Module:
        """The module an exported graph traces for inputs of ``size`` (ViTs fold their position table; others: self)."""
        return self

    def forward(self, x: torch.Tensor, *, with_attention: bool = False) -> Features:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What a JSON record needs to say which features were used."""
        return {
            "name": self.name,
            "kind": self.kind,
            "arch": self.arch,
            "weights_sha256": self.weights_sha256,
            "weights_file": self.weights_path,
            "weights_label": self.weights_label,
            "layers": list(self.layers),
            "strides": list(self.strides),
            "channels": list(self.channels),
            "num_heads": self.num_heads,
            "patch_size": self.patch_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }
