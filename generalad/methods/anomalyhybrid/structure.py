"""Structure maps — edges and depth — of images at the working size (docs/methods/anomalyhybrid.md §2).

Every function takes and returns batched tensors: RGB ``(N, 3, S, S)`` in [0, 1] → maps ``(N, 1, S, S)``
in [0, 1]. The sources, each named in the run record (``StructureSources.describe``):

* edges ``"sobel_nms"`` (default): Gaussian σ = 1, Sobel gradients, non-maximum suppression along the
  quantised gradient direction, magnitudes scaled by the image's 99th percentile — a thin, soft edge map
  standing in for PiDiNet; ``"onnx:<file>"``: a user-exported edge network (e.g. PiDiNet) run by
  onnxruntime.
* depth ``"sensor"``: MVTec 3D-AD's z channel (generalad.data.read_depth), per-image normalised, invalid
  points in-painted; ``"pseudo"`` (default on 2-D data): luminance blurred with σ = S/16 and min-max
  normalised — a smooth shading proxy, *not* depth; ``"onnx:<file>"``: a user-exported monocular depth
  network (e.g. DepthAnythingV2); ``"none"``: the depth decoder is switched off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from generalad.errors import ConfigError, InputError
from generalad.nn.maps import gaussian_blur

EDGE_SOURCES = ("sobel_nms",)  # plus "onnx:<file>"
DEPTH_SOURCES = ("pseudo", "sensor", "none")  # plus "onnx:<file>"
_LUMA = (0.299, 0.587, 0.114)
_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
# neighbour offsets (dy, dx) across the edge for gradient directions 0°, 45°, 90°, 135°
_ACROSS = ((0, 1), (1, 1), (1, 0), (1, -1))


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) → (N, 1, H, W) Rec. 601 luma."""
    w = torch.tensor(_LUMA, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * w).sum(1, keepdim=True)


def _normalise(x: torch.Tensor, q: float | None = None) -> torch.Tensor:
    """Per image to [0, 1]: min-max, or divide by the ``q`` quantile and clip (edges)."""
    flat = x.flatten(1)
    if q is not None:
        top = torch.quantile(flat, q, dim=1).clamp_min(1e-6).view(-1, 1, 1, 1)
        return (x / top).clamp_(0.0, 1.0)
    lo, hi = flat.amin(1).view(-1, 1, 1, 1), flat.amax(1).view(-1, 1, 1, 1)
    return torch.where(hi - lo > 1e-6, (x - lo) / (hi - lo).clamp_min(1e-6), torch.full_like(x, 0.5))


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x moved by (dy, dx) with replicated borders (value at p is x[p + (dy, dx)])."""
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    h, w = x.shape[-2:]
    return p[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]


def sobel_nms_edges(rgb: torch.Tensor, sigma: float = 1.0, quantile: float = 0.99) -> torch.Tensor:
    """Thin soft edges (N, 1, H, W) in [0, 1]: Sobel magnitude kept only at local maxima across the edge."""
    grey = gaussian_blur(luminance(rgb)[:, 0], sigma)[:, None]
    k = _SOBEL.to(rgb.device, rgb.dtype)
    g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), torch.stack([k, k.t()])[:, None])
    gx, gy = g[:, :1], g[:, 1:]
    mag = torch.hypot(gx, gy)
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180.0
    sector = ((angle + 22.5) // 45.0).long() % 4  # 0: horizontal gradient … 3: 135°
    keep = torch.zeros_like(mag, dtype=torch.bool)
    for s, (dy, dx) in enumerate(_ACROSS):  # four direction classes, each one vectorised over all pixels
        peak = (mag >= _shift(mag, dy, dx)) & (mag >= _shift(mag, -dy, -dx))
        keep |= (sector == s) & peak
    return _normalise(mag * keep, quantile)


def pseudo_depth(rgb: torch.Tensor) -> torch.Tensor:
    """Heavily smoothed luminance (σ = S/16), min-max per image — a shading proxy, named as such."""
    sigma = max(1.0, rgb.shape[-1] / 16.0)
    return _normalise(gaussian_blur(luminance(rgb)[:, 0], sigma)[:, None])


class OnnxMapNet:
    """A user-exported structure network (PiDiNet, DepthAnythingV2, …) run by onnxruntime.

    Input: ImageNet-normalised (N, 3, S, S) float32 (the usual export); output: the first output, resized to
    (N, 1, S, S) and min-max normalised per image. The file's path is recorded in the run.
    """

    def __init__(self, path: str) -> None:
        if not Path(path).is_file():
            raise InputError(f"structure network not found: {path}")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("onnx structure networks need onnxruntime: pip install 'generalad[export]'") from None
        try:
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 — onnxruntime raises its own types
            raise InputError(f"cannot load structure network {path}: {str(err).splitlines()[0]}") from None
        self.input = self.session.get_inputs()[0].name
        self.path = path

    def __call__(self, rgb: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
        std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
        x = ((rgb.float().cpu() - mean) / std).numpy()
        out = torch.from_numpy(self.session.run(None, {self.input: x})[0]).float()
        out = out.view(out.shape[0], -1, *out.shape[-2:])[:, :1]
        return _normalise(F.interpolate(out, size=rgb.shape[-2:], mode="bilinear", align_corners=False))


@dataclasses.dataclass
class StructureSources:
    """Which edge and depth source a run uses; ``maps(rgb, samples)`` → (N, 2, S, S) [depth, edges]."""

    edges: str = "sobel_nms"
    depth: str = "pseudo"

    def __post_init__(self) -> None:
        if self.edges not in EDGE_SOURCES and not self.edges.startswith("onnx:"):
            raise ConfigError(f"edges must be one of {', '.join(EDGE_SOURCES)} or onnx:<file>, got {self.edges!r}")
        if self.depth not in DEPTH_SOURCES and not self.depth.startswith("onnx:"):
            raise ConfigError(f"depth must be one of {', '.join(DEPTH_SOURCES)} or onnx:<file>, got {self.depth!r}")
        self._nets: dict[str, OnnxMapNet] = {}

    @property
    def uses_depth(self) -> bool:
        return self.depth != "none"

    def _net(self, source: str) -> OnnxMapNet:
        if source not in self._nets:
            self._nets[source] = OnnxMapNet(source.removeprefix("onnx:"))
        return self._nets[source]

    def edge_maps(self, rgb: torch.Tensor) -> torch.Tensor:
        return sobel_nms_edges(rgb) if self.edges == "sobel_nms" else self._net(self.edges)(rgb)

    def depth_maps(self, rgb: torch.Tensor, samples: Sequence[Any] | None = None) -> torch.Tensor:
        if self.depth == "none":
            return torch.zeros_like(rgb[:, :1])
        if self.depth == "pseudo":
            return pseudo_depth(rgb)
        if self.depth == "sensor":
            return sensor_depth(samples, rgb.shape[-2:])
        return self._net(self.depth)(rgb)

    def maps(self, rgb: torch.Tensor, samples: Sequence[Any] | None = None) -> torch.Tensor:
        """(N, 2, S, S): channel 0 depth, channel 1 edges, both in [0, 1]."""
        return torch.cat([self.depth_maps(rgb, samples), self.edge_maps(rgb)], dim=1)

    def describe(self) -> dict[str, str]:
        names = {
            "sobel_nms": "Sobel + non-maximum suppression (PiDiNet stand-in)",
            "pseudo": "pseudo-depth: luminance blurred with sigma = S/16 (not depth; DepthAnythingV2 stand-in)",
            "sensor": "sensor depth: z channel of the xyz map, normalised per image, invalid points in-painted",
            "none": "none (depth decoder off)",
        }
        return {"edges": names.get(self.edges, self.edges), "depth": names.get(self.depth, self.depth)}


def sensor_depth(samples: Sequence[Any] | None, size: Sequence[int]) -> torch.Tensor:
    """MVTec 3D-AD depth of each sample at ``size``: (N, 1, H, W) in [0, 1]."""
    from generalad.data import read_depth

    if not samples:
        raise ConfigError("depth='sensor' needs MVTec 3D-AD samples (with xyz maps)")
    maps = [torch.from_numpy(read_depth(s, tuple(int(v) for v in size))) for s in samples]
    return torch.stack(maps)[:, None].float()
