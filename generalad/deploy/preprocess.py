"""Pre- and post-processing of deployed models in numpy + Pillow (no torch), equal to the torch path.

* :func:`resize_image` is ``generalad.backbones.base.preprocess``' resize: Pillow's float ("F" mode) bicubic
  resampling uses the same separable kernel (a = −0.5, support widened by the scale when shrinking) as torch's
  ``interpolate(mode="bicubic", antialias=True)``; measured difference ≤ 2e-5 on [0, 1] images, then the same
  clamp to [0, 1].
* :func:`resize_maps` is ``generalad.nn.maps.resize_maps`` (bilinear, ``align_corners=False``, no antialias) as
  two small interpolation matrices: ``M_h @ map @ M_wᵀ``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image


def resize_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] → (h, w, 3) float32, bicubic with antialias, clamped to [0, 1]."""
    if image.shape[:2] == tuple(hw):
        return np.ascontiguousarray(image, dtype=np.float32)
    size = (int(hw[1]), int(hw[0]))  # Pillow takes (width, height)
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32), mode="F")
                           .resize(size, Image.Resampling.BICUBIC)) for c in range(image.shape[2])]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def to_batch(images: Sequence[np.ndarray], hw: tuple[int, int], mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Decoded (H, W, 3) images → (B, 3, h, w) float32 resized and normalised: the exported graph's input."""
    out = np.empty((len(images), 3, int(hw[0]), int(hw[1])), dtype=np.float32)
    m = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    for i, image in enumerate(images):
        out[i] = (resize_image(image, hw).transpose(2, 0, 1) - m) / s
    return out


@lru_cache(maxsize=64)
def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 M with ``M @ v`` = torch's 1-D linear interpolation (align_corners=False)."""
    # torch: a float32 scale, then scale·(i + 0.5) − 0.5 fused (one rounding to float32); the float64 product of
    # two float32 values is exact, so rounding once at the end reproduces it bit for bit
    scale = np.float64(np.float32(n_in) / np.float32(n_out))
    src = np.maximum((scale * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5).astype(np.float32), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - frac)
    np.add.at(m, (rows, i1), frac)
    return m.astype(np.float32)


def resize_map(amap: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(h, w) float32 map → ``hw`` by bilinear interpolation (identity when the size already matches)."""
    if amap.shape == tuple(hw):
        return amap
    return bilinear_matrix(amap.shape[0], int(hw[0])) @ amap.astype(np.float32) @ bilinear_matrix(amap.shape[1], int(hw[1])).T
