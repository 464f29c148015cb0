"""Overlays at display size, shared by the report gallery and ``generalad serve``.

A 900 x 900 test image shown as a 320 px thumbnail would lose its 3 px contours to downscaling, so the
image, the raw map and the mask are shrunk first and the overlay (``generalad.report.render_overlay``: fixed
colour scale, predicted-region and ground-truth contours, caption strip) is drawn at the display size.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from generalad.report import render_overlay


def display_size(hw: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(h, w) scaled so that the longer side is at most ``max_side`` (never enlarged)."""
    h, w = int(hw[0]), int(hw[1])
    scale = min(1.0, max_side / float(max(h, w)))
    return max(1, round(h * scale)), max(1, round(w * scale))


def shrink(image: np.ndarray, amap: np.ndarray, mask: np.ndarray | None, hw: tuple[int, int]):
    """Image (float (H, W, 3) in [0, 1] → uint8, bilinear antialiased), raw map (bilinear) and bool mask
    (nearest) resized to ``hw``; unchanged when already that size."""
    if tuple(image.shape[:2]) == tuple(hw):
        return image, amap, mask
    size = (hw[1], hw[0])  # PIL takes (W, H)
    img = Image.fromarray(np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)).resize(size, Image.BILINEAR)
    small = Image.fromarray(np.asarray(amap, dtype=np.float32), mode="F").resize(size, Image.BILINEAR)
    m = None if mask is None else np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
    return np.asarray(img), np.asarray(small), m


def display_range(model: Any) -> tuple[float, float]:
    """The run's fixed heat-map scale (from the pixel calibration), the same for every image."""
    return model.pixel_calibration_.display_range()


def overlay_at_display_size(model: Any, image: np.ndarray, amap: np.ndarray, score: float, *, max_side: int,
                            mask: np.ndarray | None = None, caption: str = "") -> np.ndarray:
    """(h', w' + caption strip, 3) uint8 overlay of one image, its longer side at most ``max_side``.

    ``image``: float (H, W, 3) in [0, 1]; ``amap``: raw (H, W) map at the image size; ``mask``: bool (H, W)
    ground truth or None. ``model``: anything with threshold_, pixel_threshold_, pixel_calibration_.
    """
    img, small, m = shrink(image, amap, mask, display_size(image.shape[:2], max_side))
    vmin, vmax = display_range(model)
    return render_overlay(img, small, vmin=vmin, vmax=vmax, threshold=model.threshold_, score=float(score),
                          pixel_threshold=model.pixel_threshold_, gt_mask=m, caption=caption)


def png_bytes(array: np.ndarray, compress_level: int = 3) -> bytes:
    """PNG of a uint8 array (level 3: about 3x faster than Pillow's default 6, a few % larger)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
