"""PatchCore's locally aware patch features (also InReaCh §3), plus the bank tools re-exported.

Reference recipe (patchcore-inspection ``PatchCore._embed``), per layer l with C_l channels:
unfold 3×3 neighbourhoods (stride 1, zero padding 1) → a C_l·9 vector per position (channel-major:
index c·9 + tap); bilinear resize (align_corners=False) of every map to the first map's grid; adaptive 1-D
average pooling of each vector to ``per_layer_dim``; stack the L layers → adaptive average pooling of the
L·per_layer_dim vector to ``out_dim``.

Every step after the unfold is linear: the two poolings act on channels only, the resize on space only,
so they commute, and unfold + pool + pool collapses to one fixed linear map per layer from the C_l·9
vector to the ``out_dim`` outputs that layer feeds (about out_dim / L of them). That map is a convolution
with a 3×3 kernel whose weights are products of pooling fractions, and it is extremely sparse: each
output row reads a contiguous run of the C_l·9 vector, i.e. only W ≈ 1-13 consecutive channels. It is
evaluated as W depthwise 3×3 convolutions over gathered channels (no B×C·9×h×w unfold, no dense
(R × C·9) conv). Measured on the dev CPU, per image: WRN-50 layer2+3 → 1024: 224 ms (reference) /
57 ms (dense conv) / ~30-40 ms (depthwise); ViT-S 384@28×28 → 1024: 61 / 103 / 11 ms; InReaCh's 13 WRN
blocks → 1024 at 56×56: 11 s / 420 / 30 ms. Results match the reference to ~3e-7.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from generalad.errors import ConfigError
from generalad.nn.coreset import coverage_radius, greedy_coreset, random_projection
from generalad.nn.knn import NearestNeighbours, patchcore_reweight

__all__ = [
    "locally_aware_patches",
    "adaptive_pool_matrix",
    "greedy_coreset",
    "random_projection",
    "coverage_radius",
    "NearestNeighbours",
    "patchcore_reweight",
]


def adaptive_pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) float64 matrix M with ``M @ v == adaptive_avg_pool1d(v, n_out)``.

    Bin i covers [floor(i·n_in/n_out), ceil((i+1)·n_in/n_out)) — PyTorch's rule, so bins overlap when
    n_out does not divide n_in and repeat entries when n_out > n_in.
    """
    i = torch.arange(n_out)
    lo = (i * n_in) // n_out
    hi = ((i + 1) * n_in + n_out - 1) // n_out
    j = torch.arange(n_in)
    m = ((j >= lo[:, None]) & (j < hi[:, None])).to(torch.float64)
    return m / (hi - lo)[:, None].to(torch.float64)


@dataclass(frozen=True)
class _LayerPlan:
    """One layer's share of the output: out[:, rows] += Σ_j dwconv(x[:, chan[:, j]], weight[:, j])."""

    rows: torch.Tensor  # (R,) output dims this layer contributes to
    chan: torch.Tensor  # (R, W) input channel read by output row r in its j-th window slot
    weight: torch.Tensor  # (R, W, k, k) fp32 taps (zero where a slot is unused)


@lru_cache(maxsize=64)
def _layer_plan(
    channels: int, kernel: int, layer: int, n_layers: int, per_layer_dim: int, out_dim: int, aggregate: str
) -> _LayerPlan:
    taps = kernel * kernel
    if aggregate == "unfold":  # pool the channel-major unfolded vector (c·taps + t)
        first = adaptive_pool_matrix(channels * taps, per_layer_dim)
    else:  # avgpool: 3×3 mean per channel (taps share 1/taps), then pool the C channels
        first = adaptive_pool_matrix(channels, per_layer_dim).repeat_interleave(taps, dim=1) / taps
    second = adaptive_pool_matrix(n_layers * per_layer_dim, out_dim)[:, layer * per_layer_dim : (layer + 1) * per_layer_dim]
    comp = torch.sparse.mm(second.to_sparse(), first)  # (out_dim, C·taps); sparse @ dense keeps this cheap
    rows = comp.abs().sum(1).nonzero().squeeze(1)
    comp = comp[rows].view(len(rows), channels, taps)
    used = comp.abs().sum(2) > 0  # (R, C)
    lo = used.to(torch.int8).argmax(1)
    hi = channels - 1 - used.flip(1).to(torch.int8).argmax(1)
    width = int((hi - lo).max()) + 1
    chan = lo[:, None] + torch.arange(width)
    slot_used = chan <= hi[:, None]
    chan = chan.clamp(max=channels - 1)
    weight = comp.gather(1, chan[:, :, None].expand(-1, -1, taps)) * slot_used[:, :, None]
    return _LayerPlan(rows, chan, weight.to(torch.float32).view(len(rows), width, kernel, kernel))


def _apply_plan(x: torch.Tensor, plan: _LayerPlan, kernel: int) -> torch.Tensor:
    """(B, C, h, w) → (B, R, h, w): W depthwise convolutions over gathered channels, summed."""
    r, width = plan.chan.shape
    out = None
    for j in range(width):
        y = F.conv2d(x.index_select(1, plan.chan[:, j]), plan.weight[:, j : j + 1], padding=kernel // 2, groups=r)
        out = y if out is None else out.add_(y)
    return out


def _check(maps: list[torch.Tensor], out_dim: int, kernel: int, per_layer_dim: int, aggregate: str) -> None:
    if not maps:
        raise ConfigError("locally_aware_patches: no feature maps given")
    if any(m.ndim != 4 for m in maps):
        raise ConfigError(f"locally_aware_patches: maps must be (B, C, h, w), got {[tuple(m.shape) for m in maps]}")
    if len({m.shape[0] for m in maps}) != 1:
        raise ConfigError(f"locally_aware_patches: maps disagree on batch size: {[m.shape[0] for m in maps]}")
    if kernel < 1 or kernel % 2 == 0:
        raise ConfigError(f"locally_aware_patches: kernel must be odd and >= 1, got {kernel}")
    if out_dim < 1 or per_layer_dim < 1:
        raise ConfigError(f"locally_aware_patches: out_dim/per_layer_dim must be >= 1, got {out_dim}/{per_layer_dim}")
    if aggregate not in ("unfold", "avgpool"):
        raise ConfigError(f"locally_aware_patches: aggregate must be 'unfold' or 'avgpool', got {aggregate!r}")


def locally_aware_patches(
    maps: list[torch.Tensor],
    *,
    out_dim: int = 1024,
    kernel: int = 3,
    grid: tuple[int, int] | None = None,
    per_layer_dim: int | None = None,
    aggregate: str = "unfold",
    chunk: int = 16,
) -> tuple[torch.Tensor, tuple[int, int]]:
    """PatchCore locally aware patch features: ((B, h·w, out_dim) fp32, (h, w)), positions row-major.

    maps: per-layer (B, C_l, h_l, w_l) features, shallowest first. kernel: neighbourhood size (odd;
    1 = no aggregation). grid: output (h, w), default the first map's grid. per_layer_dim: pooled width
    per layer before stacking (default out_dim). aggregate: "unfold" (PatchCore's code and InReaCh: pool
    the unfolded C·k² vector) or "avgpool" (the paper's wording: k×k average pooling, zero padding counted,
    then pool the C channels). chunk: images per pass (bounds the temporaries).
    """
    per_layer_dim = out_dim if per_layer_dim is None else per_layer_dim
    _check(maps, out_dim, kernel, per_layer_dim, aggregate)
    h, w = grid if grid is not None else tuple(maps[0].shape[-2:])
    plans = [
        _layer_plan(m.shape[1], kernel, i, len(maps), per_layer_dim, out_dim, aggregate) for i, m in enumerate(maps)
    ]
    b = maps[0].shape[0]
    out = torch.empty(b, h * w, out_dim, dtype=torch.float32)
    for s in range(0, b, chunk):
        acc = torch.zeros(min(chunk, b - s), out_dim, h, w)
        for m, plan in zip(maps, plans):
            y = _apply_plan(m[s : s + chunk].to(torch.float32), plan, kernel)
            if y.shape[-2:] != (h, w):  # resizing after the channel map equals resizing the unfolded map
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
            acc.index_add_(1, plan.rows, y)
        out[s : s + chunk] = acc.flatten(2).transpose(1, 2)
    return out, (h, w)
