"""InReaCh layout helpers (docs/methods/inreach.md §4): transpose test, rotational alignment, positional channels.

Images here are channels-last float arrays on the 0–255 scale after resize/crop: (H, W, C) or
(N, H, W, C); the transpose test assumes square images (the preprocessing makes them square).
Rotation convention: ``rotate_images(x, a)`` turns the content counter-clockwise by ``a`` degrees on
screen (as OpenCV's getRotationMatrix2D with a positive angle) about the image centre, bilinear,
zeros outside. ``best_rotation`` returns the angle to APPLY to each image to match the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from generalad.errors import ConfigError


def _to_float(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()


def transpose_score(mean_image: torch.Tensor | np.ndarray) -> float:
    """T = mean over pixels and channels of (Ī − Īᵀ)², ᵀ swapping height and width (Ī on 0–255).

    Large T → the class has a consistent, non-transpose-symmetric layout → use positional channels.
    """
    m = _to_float(mean_image)
    if m.ndim == 2:
        m = m[..., None]
    if m.ndim != 3 or m.shape[0] != m.shape[1]:
        raise ConfigError(f"InReaCh transpose test needs a square (H, W, C) mean image, got {tuple(m.shape)}")
    return float(((m - m.transpose(0, 1)) ** 2).mean())


def _pixel_offsets(h: int, w: int, rows: slice, cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre offsets (u right, v down) from the image centre for the given rows/cols."""
    v = torch.arange(h, dtype=torch.float32)[rows] + 0.5 - h / 2.0
    u = torch.arange(w, dtype=torch.float32)[cols] + 0.5 - w / 2.0
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return uu, vv


def _rotation_grid(angles_deg: torch.Tensor, h: int, w: int, rows: slice, cols: slice) -> torch.Tensor:
    """grid_sample grid (A, h', w', 2) that rotates content CCW by each angle, for the chosen output
    window. Output pixel (u, v) samples the input at the inverse rotation (u c − v s, u s + v c)."""
    uu, vv = _pixel_offsets(h, w, rows, cols)
    t = torch.deg2rad(angles_deg.float())[:, None, None]
    c, s = torch.cos(t), torch.sin(t)
    u_in = uu * c - vv * s
    v_in = uu * s + vv * c
    # normalised coordinates, align_corners=False: pixel-centre offset / half size
    return torch.stack([u_in / (w / 2.0), v_in / (h / 2.0)], dim=-1)


def _nchw(images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(N, H, W[, C]) → (N, C, H, W); flag whether a channel axis was present."""
    if images.ndim == 3:
        return images[:, None], False
    if images.ndim == 4:
        return images.permute(0, 3, 1, 2), True
    raise ConfigError(f"InReaCh expects images shaped (N, H, W) or (N, H, W, C), got {tuple(images.shape)}")


def rotate_images(images: torch.Tensor | np.ndarray, angles: torch.Tensor | np.ndarray | list) -> torch.Tensor:
    """Rotate each image (N, H, W[, C]) CCW by its angle in degrees (N,) about the centre; bilinear,
    zeros outside. Returns fp32, same layout."""
    x = _to_float(images)
    a = _to_float(angles).reshape(-1)
    if a.numel() != x.shape[0]:
        raise ConfigError(f"InReaCh rotate_images: {x.shape[0]} images but {a.numel()} angles")
    nchw, has_c = _nchw(x)
    h, w = nchw.shape[-2:]
    grid = _rotation_grid(a, h, w, slice(None), slice(None))
    out = F.grid_sample(nchw, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.permute(0, 2, 3, 1) if has_c else out[:, 0]


def rotate_masks(masks: torch.Tensor | np.ndarray, angles: torch.Tensor | np.ndarray | list) -> torch.Tensor:
    """Rotate boolean masks (N, H, W) like the images and re-threshold at half (128 on 0–255)."""
    return rotate_images(torch.as_tensor(np.asarray(masks)).float(), angles) >= 0.5


def best_rotation(
    images: torch.Tensor | np.ndarray,
    reference: torch.Tensor | np.ndarray,
    *,
    angles: torch.Tensor | np.ndarray | None = None,
) -> np.ndarray:
    """For each image (N, H, W[, C]) the angle (from ``angles``, default 0..359) whose rotation best
    matches ``reference`` (H, W[, C]) by MSE over the central crop (half width × half height).

    Only the crop is resampled: its corners lie within 0.36·side of the centre, so rotated crops never
    leave the image and the zero padding never enters the score. All angles of one image are sampled in
    a single grid_sample call (angles stacked along the output height).
    """
    x = _to_float(images)
    ref = _to_float(reference)
    nchw, _ = _nchw(x)
    ref_chw, _ = _nchw(ref[None])
    n, c, h, w = nchw.shape
    if tuple(ref_chw.shape[1:]) != (c, h, w):
        raise ConfigError(f"InReaCh best_rotation: reference {tuple(ref.shape)} does not match images {tuple(x.shape)}")
    cand = torch.arange(360, dtype=torch.float32) if angles is None else _to_float(angles).reshape(-1)
    rows = slice(h // 4, h // 4 + h // 2)
    cols = slice(w // 4, w // 4 + w // 2)
    grid = _rotation_grid(cand, h, w, rows, cols)  # (A, hc, wc, 2)
    a, hc, wc, _ = grid.shape
    grid = grid.reshape(1, a * hc, wc, 2)
    ref_crop = ref_chw[0, :, rows, cols]  # (C, hc, wc)
    best = np.empty(n, dtype=np.float64)
    for i in range(n):  # one image at a time keeps memory at A·crop, not N·A·crop
        out = F.grid_sample(nchw[i : i + 1], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out = out.view(c, a, hc, wc)
        mse = ((out - ref_crop[:, None]) ** 2).mean(dim=(0, 2, 3))
        best[i] = float(cand[int(mse.argmin())])
    return best


def positional_channels(grid: tuple[int, int], weight: float = 5.0) -> torch.Tensor:
    """(P, 2) positional descriptor columns (col, row)·weight/grid_w for a row-major (h, w) grid."""
    h, w = grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=1).float() * (weight / w)


def append_positional(X: torch.Tensor, grid: tuple[int, int], weight: float = 5.0) -> torch.Tensor:
    """Append the two positional channels to descriptors (N, P, D) → (N, P, D + 2)."""
    h, w = grid
    if X.shape[1] != h * w:
        raise ConfigError(f"InReaCh positional channels: {X.shape[1]} patches do not fit grid {h}×{w}")
    pos = positional_channels(grid, weight).to(X.device, X.dtype)
    return torch.cat([X, pos.expand(X.shape[0], -1, -1)], dim=2)


@dataclass
class LayoutDecision:
    """Outcome of the layout test (docs/methods/inreach.md §4): use_positional; angles (N,) to apply to training images (None = not aligned);
    transpose scores before / after alignment (NaN when alignment was not tried)."""

    use_positional: bool
    angles: np.ndarray | None
    t_original: float
    t_aligned: float = math.nan


def layout_decision(
    images: torch.Tensor | np.ndarray, *, threshold: float = 600.0, align: bool = True
) -> LayoutDecision:
    """Transpose test on the mean training image; if it fails and ``align``, rotate every image to
    training image 0 and test again; keep the alignment only if the aligned set passes (docs/methods/inreach.md §4)."""
    x = _to_float(images)
    if x.ndim != 4:
        raise ConfigError(f"InReaCh layout test expects (N, H, W, C) images, got {tuple(x.shape)}")
    t0 = transpose_score(x.mean(0))
    if t0 >= threshold:
        return LayoutDecision(True, None, t0)
    if not align:
        return LayoutDecision(False, None, t0)
    angles = best_rotation(x, x[0])
    t1 = transpose_score(rotate_images(x, angles).mean(0))
    if t1 >= threshold:
        return LayoutDecision(True, angles, t0, t1)
    return LayoutDecision(False, None, t0, t1)
