"""Local edits of structure maps: where (regions) and what (operators) — docs/methods/anomalyhybrid.md §5.

Everything works on one image's maps as float32 numpy arrays (S, S) in [0, 1] and draws its randomness from
a ``numpy.random.Generator``: same seed → same edits.

Regions ``R`` (bool (S, S)), centred on the object: ``ellipse`` (random axes and angle) or ``perlin`` (one
connected blob of thresholded 2-D Perlin noise, as DRAEM's masks). ``foreground(rgb)`` estimates the object
(Otsu on blurred luminance, the class touching the border less is the object; textures → everywhere).

Operators (each returns the edited map; the decoder they drive is given in ``OPERATORS``):
``bump`` / ``dent`` raise / lower depth smoothly inside R (protrusion / dent); ``depth_patch`` /
``edge_patch`` transplant the map of another image inside R; ``strokes`` draws random thin curves on the
edge map inside R; ``erase`` removes edges inside R.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

#: operator → the decoder whose structure map it edits
OPERATORS = {"bump": "depth", "dent": "depth", "depth_patch": "depth",
             "edge_patch": "edges", "strokes": "edges", "erase": "edges"}
REGIONS = ("ellipse", "perlin")
#: the regions' area when ``region_area`` is None (the default): uniform in 0.3–3 % of the image
DEFAULT_AREA = (0.003, 0.03)


def draw_area(rng: np.random.Generator, area: tuple[float, float] | None) -> float:
    """One region area (fraction of the image): uniform in ``DEFAULT_AREA`` for None, else log-uniform in
    ``area`` = (low, high) — the option for ranges wider than a decade (docs/methods/anomalyhybrid.md §5)."""
    if area is None:
        return float(rng.uniform(*DEFAULT_AREA))
    low, high = area
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def otsu_threshold(values: np.ndarray, bins: int = 64) -> tuple[float, float]:
    """(threshold, effectiveness η = between-class / total variance); η → 1 for a clean two-level image."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    mu = np.cumsum(p * centres)
    between = (mu[-1] * w0 - mu) ** 2 / np.clip(w0 * (1 - w0), 1e-12, None)
    total = float((p * (centres - mu[-1]) ** 2).sum())
    k = int(np.argmax(between))
    return float(edges[1:][k]), float(between[k] / total) if total > 0 else 0.0


def foreground(rgb: np.ndarray, min_fraction: float = 0.1, max_fraction: float = 0.9,
               min_effectiveness: float = 0.8) -> np.ndarray:
    """Bool (S, S) object mask of an (S, S, 3) image: Otsu on blurred luminance, the class touching the border
    less, its largest connected component with holes filled. The whole image when there is no clear object —
    a weak two-level split (η < ``min_effectiveness``, e.g. a texture), a fragmented one (the largest component
    under half the class), or an object covering under ``min_fraction`` / over ``max_fraction`` of the image."""
    everywhere = np.ones(rgb.shape[:2], dtype=bool)
    grey = ndimage.gaussian_filter(rgb.mean(axis=2), sigma=max(1.0, rgb.shape[0] / 64))
    threshold, effectiveness = otsu_threshold(grey)
    if effectiveness < min_effectiveness:
        return everywhere
    bright = grey > threshold
    border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
    obj = ndimage.binary_opening(~bright if border.mean() > 0.5 else bright, iterations=2)
    labels, n = ndimage.label(obj)
    if n == 0:
        return everywhere
    sizes = ndimage.sum(obj, labels, index=np.arange(1, n + 1))
    largest = labels == (1 + int(np.argmax(sizes)))
    if sizes.max() < 0.5 * obj.sum():
        return everywhere
    largest = ndimage.binary_fill_holes(largest)
    return largest if min_fraction <= largest.mean() <= max_fraction else everywhere


def _centre(rng: np.random.Generator, where: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(where)
    k = int(rng.integers(0, len(ys)))
    return int(ys[k]), int(xs[k])


def ellipse_region(size: int, rng: np.random.Generator, where: np.ndarray, area: tuple[float, float] | None) -> np.ndarray:
    cy, cx = _centre(rng, where)
    a = np.sqrt(draw_area(rng, area) * size * size / np.pi)
    ratio = np.exp(rng.uniform(np.log(0.3), np.log(1.0)))
    ry, rx, theta = a * np.sqrt(ratio), a / np.sqrt(ratio), rng.uniform(0, np.pi)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def perlin_noise(size: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin noise (size, size) on a ``cells`` × ``cells`` lattice, vectorised."""
    angles = rng.uniform(0, 2 * np.pi, (cells + 1, cells + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    t = np.linspace(0, cells, size, endpoint=False)
    gy, gx = np.meshgrid(t, t, indexing="ij")
    iy, ix = gy.astype(int), gx.astype(int)
    fy, fx = gy - iy, gx - ix

    def dot(oy: int, ox: int) -> np.ndarray:
        g = grads[iy + oy, ix + ox]
        return g[..., 0] * (fx - ox) + g[..., 1] * (fy - oy)

    fade = lambda f: 6 * f**5 - 15 * f**4 + 10 * f**3  # noqa: E731
    uy, ux = fade(fy), fade(fx)
    top = dot(0, 0) * (1 - ux) + dot(0, 1) * ux
    bottom = dot(1, 0) * (1 - ux) + dot(1, 1) * ux
    return top * (1 - uy) + bottom * uy


def perlin_region(size: int, rng: np.random.Generator, where: np.ndarray, area: tuple[float, float] | None) -> np.ndarray:
    """The largest connected component of thresholded Perlin noise inside a box around a centre on the object.

    Default (``area`` None): the noise's top 4·a fraction (a uniform in 0.3–3 %) inside a box of half-side
    √a'·size (a fresh draw). With an ``area`` range: the noise above its median (as DRAEM's masks) inside a
    box of twice the drawn area, so about half the box is blob and the region covers up to the drawn area.
    """
    noise = perlin_noise(size, int(rng.choice([2, 4, 8])), rng)
    if area is None:
        blob = noise > np.quantile(noise, 1 - draw_area(rng, None) * 4)
        cy, cx = _centre(rng, where)
        half = int(np.sqrt(draw_area(rng, None)) * size)
    else:
        blob = noise > np.median(noise)
        cy, cx = _centre(rng, where)
        half = int(np.sqrt(2 * draw_area(rng, area)) * size / 2)
    box = np.zeros_like(blob)
    box[max(0, cy - half): cy + half + 1, max(0, cx - half): cx + half + 1] = True
    labels, n = ndimage.label(blob & box)
    if n == 0:
        return ellipse_region(size, rng, where, area)
    sizes = ndimage.sum(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def region(kind: str, size: int, rng: np.random.Generator, where: np.ndarray,
           area: tuple[float, float] | None = None) -> np.ndarray:
    """A bool (size, size) region of kind ``ellipse`` | ``perlin``; ``area``: None (the default sizes) or a
    (low, high) fraction of the image, drawn log-uniformly."""
    r = (ellipse_region if kind == "ellipse" else perlin_region)(size, rng, where, area)
    return r if r.sum() >= 4 else ellipse_region(size, rng, where, area)


def _soft(r: np.ndarray, sigma: float) -> np.ndarray:
    return np.clip(ndimage.gaussian_filter(r.astype(np.float32), sigma), 0, 1) if sigma > 0 else r.astype(np.float32)


def apply_operator(op: str, maps: np.ndarray, r: np.ndarray, rng: np.random.Generator,
                   donor: np.ndarray | None = None) -> np.ndarray:
    """Edited copy of ``maps`` (2, S, S) [depth, edges] inside ``r``; ``donor`` (2, S, S) for the patch operators."""
    out = maps.copy()
    size = maps.shape[-1]
    if op in ("bump", "dent"):
        sign = 1.0 if op == "bump" else -1.0
        dist = ndimage.distance_transform_edt(r)
        shape = np.sqrt(dist / max(float(dist.max()), 1.0))  # smooth dome, 0 on the region border
        out[0] = np.clip(out[0] + sign * rng.uniform(0.15, 0.5) * shape, 0, 1)
    elif op in ("depth_patch", "edge_patch"):
        c = 0 if op == "depth_patch" else 1
        alpha = _soft(r, 1.0)
        src = np.roll(donor[c], shift=(int(rng.integers(-size // 4, size // 4)), int(rng.integers(-size // 4, size // 4))), axis=(0, 1))
        out[c] = out[c] * (1 - alpha) + src * alpha
    elif op == "strokes":
        out[1] = np.maximum(out[1] * ~r, _strokes(r, rng) * r)
    elif op == "erase":
        out[1] = out[1] * (1 - _soft(r, 1.0))
    else:
        raise ValueError(f"unknown operator {op!r}")
    return out


def _strokes(r: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1–3 random polylines through the region's bounding box (PIL rasterises them), values in [0.6, 1]."""
    ys, xs = np.nonzero(r)
    canvas = Image.new("F", r.shape[::-1], 0.0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 4))):
        n = int(rng.integers(2, 5))
        pts = [(float(rng.uniform(xs.min(), xs.max() + 1)), float(rng.uniform(ys.min(), ys.max() + 1))) for _ in range(n)]
        draw.line(pts, fill=float(rng.uniform(0.6, 1.0)), width=int(rng.integers(1, 3)))
    return np.asarray(canvas, dtype=np.float32)
