"""Patch-score grids → image-size anomaly maps (upsampling + Gaussian smoothing)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, radius: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps; ``radius`` defaults to the usual truncation at 4 sigma."""
    if radius is None:
        radius = max(1, int(math.ceil(4.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps with reflect borders, each map on its own.

    ``sigma <= 0`` returns the input unchanged. The radius is clipped so reflect padding stays valid on
    small maps.
    """
    if sigma <= 0:
        return maps
    taps = gaussian_kernel1d(sigma, radius).to(maps.device, maps.dtype)
    r = min(taps.numel() // 2, maps.shape[-2] - 1, maps.shape[-1] - 1)
    if r < taps.numel() // 2:  # map smaller than the kernel: keep the central taps, renormalised
        mid = taps.numel() // 2
        taps = taps[mid - r : mid + r + 1]
        taps = taps / taps.sum()
    x = maps.unsqueeze(1)
    x = F.pad(x, (r, r, 0, 0), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, r, r), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, -1, 1))
    return x.squeeze(1)


def upsample_maps(
    grid_scores: torch.Tensor,
    size: tuple[int, int],
    *,
    sigma: float = 0.0,
    radius: int | None = None,
    mode: str = "bilinear",
) -> torch.Tensor:
    """(B, h, w) patch scores → (B, H, W) maps: interpolate (align_corners=False), then blur."""
    x = grid_scores.unsqueeze(1).float()
    if mode == "nearest":
        x = F.interpolate(x, size=size, mode="nearest")
    else:
        x = F.interpolate(x, size=size, mode=mode, align_corners=False)
    return gaussian_blur(x.squeeze(1), sigma, radius)


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, H, W) float maps to ``size`` (evaluation or original resolution)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False).squeeze(1)
