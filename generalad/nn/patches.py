"""PatchCore's locally aware patch features (also docs/methods/inreach.md §3), plus the bank tools re-exported.

Reference recipe (patchcore-inspection ``PatchCore._embed``), per layer l with C_l channels:
unfold 3×3 neighbourhoods (stride 1, zero padding 1) → a C_l·9 vector per position (channel-major:
index c·9 + tap); bilinear resize (align_corners=False) of every map to the first map's grid; adaptive 1-D
average pooling of each vector to ``per_layer_dim``; stack the L layers layer-major (``torch.stack(dim=1)``,
so each layer feeds its own block of outputs) → adaptive average pooling of the L·per_layer_dim vector to
``out_dim``.

Every step after the unfold is linear: the two poolings act on channels only, the resize on space only,
so they commute, and unfold + pool + pool collapses to one fixed linear map per layer from the C_l·9
vector to the ``out_dim`` outputs that layer feeds (about out_dim / L of them). That map is a 3×3
convolution whose weights are products of pooling fractions, and it is very sparse: each output row reads
a contiguous run of the C_l·9 vector, i.e. only W ≈ 1-13 consecutive channels. It is evaluated as one
grouped convolution over those gathered channel windows: no B×C·9×h×w unfold and no dense (R × C·9)
kernel. The deeper maps are resized after this channel map, so only R ≈ out_dim / L channels are
interpolated instead of C·9. Measured on the dev CPU (1 thread, ms per image; unfold + pool reference /
dense conv of the same linear map / this): WRN-50 layer2+3 → 1024: 220 / 55 / 6.8; ViT-S 384@28² → 1024:
26 / 55 / 10.8; → 384: 25 / 20 / 0.9; InReaCh's 13 WRN blocks at 56² → 1024: 6896 / 90 / 53. Results
match the reference to ~3e-7 (tests: 1e-5).

Devices: the maps may live on any device (all on the same one); the plans are built once on the CPU and
cached per device, and the output is on the maps' device. On CUDA the grouped convolutions follow
``torch.backends.cudnn.allow_tf32`` (PyTorch's default: on, i.e. TF32 products with fp32 sums); switch it
off for fp32 agreement with the CPU (tests/test_device.py compares at 1e-5 that way).
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


def _bins(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and length of each ``adaptive_avg_pool1d`` bin: bin i covers
    [floor(i·n_in/n_out), ceil((i+1)·n_in/n_out)), so bins overlap when n_out does not divide n_in and
    repeat entries when n_out > n_in (PyTorch's rule)."""
    i = torch.arange(n_out)
    lo = (i * n_in) // n_out
    return lo, ((i + 1) * n_in + n_out - 1) // n_out - lo


def _expand(start: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(owner, index) pairs enumerating the ranges [start[r], start[r] + size[r])."""
    owner = torch.repeat_interleave(torch.arange(len(size)), size)
    offset = torch.arange(int(size.sum())) - torch.repeat_interleave(size.cumsum(0) - size, size)
    return owner, start[owner] + offset


def adaptive_pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Dense (n_out, n_in) float64 M with ``M @ v == adaptive_avg_pool1d(v, n_out)`` (inspection, tests)."""
    lo, size = _bins(n_in, n_out)
    row, col = _expand(lo, size)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m[row, col] = 1.0 / size[row].to(torch.float64)
    return m


@dataclass(frozen=True)
class _LayerPlan:
    """One layer's share of the output: out[:, rows[r]] += Σ_j conv3x3(x[:, chan[r, j]], weight[r, j])."""

    rows: torch.Tensor  # (R,) output dims this layer contributes to
    chan: torch.Tensor  # (R, W) input channel read by output row r in its j-th window slot
    weight: torch.Tensor  # (R, W, k, k) fp32 taps (zero where a slot is unused)


@lru_cache(maxsize=64)
def _layer_plan(
    channels: int, kernel: int, layer: int, n_layers: int, per_layer_dim: int, out_dim: int, aggregate: str
) -> _LayerPlan:
    """Compose (this layer's block of the second pool) ∘ (first pool) and lay it out as grouped-conv taps.

    Every first-pool bin reads a contiguous run of the flattened (c, tap) vector with one weight, so the
    composition is an enumeration of runs: no dense (out_dim × C·k²) matrix is ever built.
    """
    taps = kernel * kernel
    lo1, size1 = _bins(channels * taps if aggregate == "unfold" else channels, per_layer_dim)
    if aggregate != "unfold":  # avgpool: a bin of channels reads all taps of each (each tap 1/taps)
        lo1, size1 = lo1 * taps, size1 * taps
    lo2, size2 = _bins(n_layers * per_layer_dim, out_dim)
    touch = ((lo2 + size2 > layer * per_layer_dim) & (lo2 < (layer + 1) * per_layer_dim)).nonzero().squeeze(1)
    out_row, i = _expand(lo2[touch], size2[touch])  # only the output rows that read this layer's block
    out_row = touch[out_row]
    mine = (i >= layer * per_layer_dim) & (i < (layer + 1) * per_layer_dim)
    out_row, i = out_row[mine], i[mine] - layer * per_layer_dim
    w2 = 1.0 / size2[out_row].to(torch.float64)
    k, j = _expand(lo1[i], size1[i])  # entry k of (out_row, i) reads flattened index j
    key = out_row[k] * (channels * taps) + j
    keys, inv = torch.unique(key, return_inverse=True)  # several (row, i) pairs may hit the same j
    val = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, inv, w2[k] / size1[i[k]].to(torch.float64))
    rows, pos = torch.unique(keys // (channels * taps), return_inverse=True)
    c, t = (keys % (channels * taps)) // taps, keys % taps
    lo = torch.full((len(rows),), channels).scatter_reduce(0, pos, c, "amin")
    hi = torch.zeros(len(rows), dtype=torch.long).scatter_reduce(0, pos, c, "amax")
    width = int((hi - lo).max()) + 1
    weight = torch.zeros(len(rows), width, taps, dtype=torch.float64)
    weight[pos, c - lo[pos], t] = val
    chan = (lo[:, None] + torch.arange(width)).clamp(max=channels - 1)  # clamped slots carry zero weight
    return _LayerPlan(rows, chan, weight.to(torch.float32).view(len(rows), width, kernel, kernel))


@lru_cache(maxsize=64)
def _device_plan(
    channels: int, kernel: int, layer: int, n_layers: int, per_layer_dim: int, out_dim: int, aggregate: str,
    device: torch.device,
) -> _LayerPlan:
    """:func:`_layer_plan` with its tensors on ``device`` (not the CPU), cached so they are copied once."""
    plan = _layer_plan(channels, kernel, layer, n_layers, per_layer_dim, out_dim, aggregate)
    return _LayerPlan(plan.rows.to(device), plan.chan.to(device), plan.weight.to(device))


def _plan_on(device: torch.device, *args) -> _LayerPlan:
    return _layer_plan(*args) if device.type == "cpu" else _device_plan(*args, device)


def _apply_plan(x: torch.Tensor, plan: _LayerPlan, kernel: int) -> torch.Tensor:
    """(B, C, h, w) → (B, R, h, w): gather each row's channel window, then one grouped conv (a group per
    output row, W input channels each). One op per layer on purpose: W separate depthwise convs were ~2x
    faster on one quiet thread but up to 40x slower with 2 threads on a busy machine (measured), where
    every small parallel op waits for a descheduled OpenMP thread."""
    rows, _ = plan.chan.shape
    return F.conv2d(x.index_select(1, plan.chan.reshape(-1)), plan.weight, padding=kernel // 2, groups=rows)


def _check(maps: list[torch.Tensor], out_dim: int, kernel: int, per_layer_dim: int, aggregate: str) -> None:
    if not maps:
        raise ConfigError("locally_aware_patches: no feature maps given")
    if any(m.ndim != 4 for m in maps):
        raise ConfigError(f"locally_aware_patches: maps must be (B, C, h, w), got {[tuple(m.shape) for m in maps]}")
    if len({m.shape[0] for m in maps}) != 1:
        raise ConfigError(f"locally_aware_patches: maps disagree on batch size: {[m.shape[0] for m in maps]}")
    if len({m.device for m in maps}) != 1:
        raise ConfigError(f"locally_aware_patches: maps are on different devices: {[str(m.device) for m in maps]}")
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
    """PatchCore locally aware patch features: ((B, h·w, out_dim) fp32 on the maps' device, (h, w)),
    positions row-major.

    maps: per-layer (B, C_l, h_l, w_l) features, shallowest first. kernel: neighbourhood size (odd;
    1 = no aggregation). grid: output (h, w), default the first map's grid. per_layer_dim: pooled width
    per layer before stacking (default out_dim). aggregate: "unfold" (PatchCore's code and InReaCh: pool
    the unfolded C·k² vector) or "avgpool" (the paper's wording: k×k average pooling, zero padding counted,
    then pool the C channels). chunk: images per pass (bounds the temporaries).
    """
    per_layer_dim = out_dim if per_layer_dim is None else per_layer_dim
    _check(maps, out_dim, kernel, per_layer_dim, aggregate)
    h, w = grid if grid is not None else tuple(maps[0].shape[-2:])
    dev = maps[0].device
    plans = [
        _plan_on(dev, m.shape[1], kernel, i, len(maps), per_layer_dim, out_dim, aggregate) for i, m in enumerate(maps)
    ]
    b = maps[0].shape[0]
    out = torch.empty(b, h * w, out_dim, dtype=torch.float32, device=dev)
    for s in range(0, b, chunk):
        acc = torch.zeros(min(chunk, b - s), out_dim, h, w, device=dev)
        for m, plan in zip(maps, plans):
            y = _apply_plan(m[s : s + chunk].to(torch.float32), plan, kernel)
            if y.shape[-2:] != (h, w):  # resizing after the channel map equals resizing the unfolded map
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
            acc.index_add_(1, plan.rows, y)
        out[s : s + chunk] = acc.flatten(2).transpose(1, 2)
    return out, (h, w)


class PatchEmbedding(torch.nn.Module):
    """:func:`locally_aware_patches` as a module with its plans as buffers, for one fixed list of layer widths.

    Same arithmetic (``_apply_plan``, resize after the channel map, ``index_add`` into the output rows), so an
    exported graph (``generalad export``, docs/DEPLOY.md) computes what the estimator computes; the plans are
    built here, outside the traced forward, because building them needs data-dependent shapes.
    forward: per-layer (B, C_l, h_l, w_l) maps → (B, h·w, out_dim) fp32, grid = the first map's.
    """

    def __init__(self, channels: list[int], *, out_dim: int = 1024, kernel: int = 3, per_layer_dim: int | None = None,
                 aggregate: str = "unfold") -> None:
        super().__init__()
        per_layer_dim = out_dim if per_layer_dim is None else per_layer_dim
        self.out_dim, self.kernel = out_dim, kernel
        for i, c in enumerate(channels):
            plan = _layer_plan(c, kernel, i, len(channels), per_layer_dim, out_dim, aggregate)
            self.register_buffer(f"rows{i}", plan.rows.clone())
            self.register_buffer(f"chan{i}", plan.chan.reshape(-1).clone())
            self.register_buffer(f"weight{i}", plan.weight.clone())
        self.n_layers = len(channels)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        h, w = maps[0].shape[-2:]
        acc = torch.zeros(maps[0].shape[0], self.out_dim, h, w, dtype=torch.float32, device=maps[0].device)
        for i, m in enumerate(maps[: self.n_layers]):
            weight = getattr(self, f"weight{i}")
            y = F.conv2d(m.float().index_select(1, getattr(self, f"chan{i}")), weight, padding=self.kernel // 2,
                         groups=weight.shape[0])
            if y.shape[-2:] != (h, w):
                y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
            acc = acc.index_add(1, getattr(self, f"rows{i}"), y)
        return acc.flatten(2).transpose(1, 2)
