"""GeneralAD cross-patch discriminator (docs/methods/generalad.md §5, the official code's structure).

```
x0 = F + E                                  # learned positional table E (N, D), init N(0, 1)
x1 = LN(x0 + Drop(MHA(x0, x0, x0)))         # post-norm around attention: the block's only LayerNorm
x2 = x1 + Drop(W2 · Drop(GELU(W1 · x1)))    # MLP D → hidden → D, no norm
s  = w · x2                                 # bias-free linear D → 1: raw per-patch logits (B, N)
```

Dropout (all three sites, attention weights included) draws its masks from 16-bit slices of 64-bit random
words. ``torch.bernoulli_`` took ~18 % of a training step on CPU (8.8 s of 49.7 s in a profile of 16 steps, bottle
subset, ViT-S/14 at 224 px); drawing the words and comparing took 2.0 s in the same profile. The drop rate is p rounded to a multiple of 2⁻¹⁶ (0.1 → 0.100006).
In training the attention is therefore written out (same parameters and state-dict keys as
``nn.MultiheadAttention``); inference uses the fused kernel.

The table ``E`` is tied to one patch grid. ``resize_positions`` resamples it as a 2-D image (bicubic) for
another grid, and ``load_state_dict`` does the same when a stored table has a different shape; the grid is
kept in the persistent buffer ``grid_shape`` so it travels with every saved state dict.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
from collections.abc import Iterator
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from generalad.errors import InputError

__all__ = ["Discriminator", "MLP", "Dropout", "dropout", "dropout_rows", "resample_positions"]

# random_() draws int64 words in [0, 2**63): the low three 16-bit slices are uniform, the top one lacks
# its sign bit. Slicing (not a list index) keeps the selection a cheap strided view.
_LOW_SLICES = slice(0, 3) if sys.byteorder == "little" else slice(1, 4)


#: (rows, full) while a rank computes ``rows`` (an index into ``full`` leading rows) of a global forward
_DROPOUT_ROWS: contextvars.ContextVar[tuple[torch.Tensor, int] | None] = contextvars.ContextVar(
    "generalad_dropout_rows", default=None)


@contextlib.contextmanager
def dropout_rows(rows: torch.Tensor, full: int) -> Iterator[None]:
    """Dropout inside the block draws the masks of a ``full``-row forward and keeps ``rows`` (1-D index).

    ``generalad fit --distributed`` (docs/SCALE.md §9): a rank forwards its rows of the global batch, and its
    dropout masks must be the rows of the masks one process draws for the whole batch, from the same global
    RNG, so that the run matches one process (and every rank's RNG stays in step).
    """
    token = _DROPOUT_ROWS.set((rows, int(full)))
    try:
        yield
    finally:
        _DROPOUT_ROWS.reset(token)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout whose Bernoulli mask comes from 16-bit slices of 64-bit random words.

    Uses the global torch generator (so ``torch.manual_seed`` makes it reproducible). ``p`` is rounded
    to a multiple of 2⁻¹⁶; kept values are scaled by 1 / (1 − p). Inside :func:`dropout_rows` the mask is
    drawn for the full leading dimension and indexed.
    """
    if not training or p <= 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    selected = _DROPOUT_ROWS.get()
    shape = x.shape if selected is None else (selected[1], *x.shape[1:])
    n = math.prod(shape)
    words = torch.empty((n + 2) // 3, dtype=torch.int64, device=x.device).random_()
    slices = words.view(torch.int16).view(-1, 4)[:, _LOW_SLICES]  # uniform on [-32768, 32767]
    cut = round(p * 65536)
    drop = (slices < cut - 32768).reshape(-1)[:n].view(shape)  # P(drop) = cut / 65536
    if selected is not None:
        drop = drop.index_select(0, selected[0].to(x.device))
    return x.masked_fill(drop, 0.0).mul_(65536.0 / (65536 - cut))


class Dropout(nn.Module):
    """``nn.Dropout`` with the cheap mask of :func:`dropout` (no parameters, no state-dict entries)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def resample_positions(table: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> torch.Tensor:
    """(h*w, D) positional table → (h'*w', D), treating it as a D-channel h×w image (bicubic).

    align_corners=False keeps the patch centres of both grids aligned with the image, as timm does for
    ViT position tables. Interpolation runs in fp32 whatever the table's dtype.
    """
    src_grid, dst_grid = _as_grid(src_grid), _as_grid(dst_grid)
    (h, w), (nh, nw) = src_grid, dst_grid
    if table.shape[0] != h * w:
        raise InputError(f"positional table has {table.shape[0]} rows but grid {h}x{w} needs {h * w}")
    if src_grid == dst_grid:
        return table.clone()
    img = table.float().T.reshape(1, table.shape[1], h, w)
    out = F.interpolate(img, size=(nh, nw), mode="bicubic", align_corners=False)
    return out.reshape(table.shape[1], nh * nw).T.contiguous().to(table.dtype)


def _as_grid(grid: int | tuple[int, int] | list[int] | torch.Tensor) -> tuple[int, int]:
    if isinstance(grid, torch.Tensor):
        grid = grid.tolist()
    if isinstance(grid, int):
        return (grid, grid)
    h, w = (int(v) for v in grid)
    if h < 1 or w < 1:
        raise InputError(f"patch grid must be positive, got {h}x{w}")
    return (h, w)


class MLP(nn.Sequential):
    """W1 → GELU → Dropout → W2 (the official block's ``linear``); the outer dropout lives in the block."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), Dropout(dropout), nn.Linear(hidden, dim))


class Discriminator(nn.Module):
    """Per-patch real/distorted discriminator over a fixed patch grid.

    Args:
        dim: feature width D of the backbone tokens.
        grid: patch grid (h, w); the input must have N = h*w tokens in row-major order.
        num_heads: attention heads (4 in every published setting).
        hidden: MLP width (2048).
        dropout: rate of all three dropouts (attention weights, attention output, MLP).

    ``forward(features (B, N, D)) -> logits (B, N)`` (raw logits, no sigmoid).
    """

    def __init__(
        self,
        dim: int,
        grid: tuple[int, int] | int = (37, 37),
        num_heads: int = 4,
        hidden: int = 2048,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.dim, self.num_heads, self.hidden, self.dropout = int(dim), int(num_heads), int(hidden), float(dropout)
        h, w = _as_grid(grid)
        # N(0, 1) init as in the official code (not the 0.02 of ViTs): the table is as loud as the LN'd
        # features, which makes position a strong cue for the discriminator from the first step.
        self.pos_embed = nn.Parameter(torch.randn(h * w, self.dim))
        self.attn = nn.MultiheadAttention(self.dim, self.num_heads, dropout=self.dropout, batch_first=True)
        self.attn_drop = Dropout(self.dropout)
        self.norm = nn.LayerNorm(self.dim)
        self.mlp = MLP(self.dim, self.hidden, self.dropout)
        self.mlp_drop = Dropout(self.dropout)
        self.head = nn.Linear(self.dim, 1, bias=False)
        # Persistent so a saved state dict knows its grid (needed to resample E on load).
        self.register_buffer("grid_shape", torch.tensor([h, w], dtype=torch.int64))

    # ------------------------------------------------------------------ grid
    @property
    def grid(self) -> tuple[int, int]:
        return (int(self.grid_shape[0]), int(self.grid_shape[1]))

    @property
    def num_patches(self) -> int:
        return self.pos_embed.shape[0]

    def resize_positions(self, grid: tuple[int, int] | int) -> "Discriminator":
        """Resample the positional table to ``grid`` in place (bicubic on the 2-D grid); returns self.

        The parameter object is replaced: build optimisers after resizing.
        """
        grid = _as_grid(grid)
        if grid != self.grid:
            table = resample_positions(self.pos_embed.detach(), self.grid, grid)
            self.pos_embed = nn.Parameter(table, requires_grad=self.pos_embed.requires_grad)
            self.grid_shape = torch.tensor(grid, dtype=torch.int64, device=self.grid_shape.device)
        return self

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # A table stored for another grid is resampled to this module's grid instead of failing on shape.
        key, gkey = prefix + "pos_embed", prefix + "grid_shape"
        table = state_dict.get(key)
        if table is not None and table.dim() == 2 and table.shape[1] == self.dim:
            if gkey in state_dict:
                src = _as_grid(state_dict[gkey])
            elif table.shape[0] == self.num_patches:
                src = self.grid
            else:  # files without the grid: only a square grid can be inferred
                side = math.isqrt(table.shape[0])
                if side * side != table.shape[0]:
                    raise InputError(
                        f"cannot infer the patch grid of a {table.shape[0]}-row positional table; store grid_shape"
                    )
                src = (side, side)
            if src != self.grid:
                state_dict[key] = resample_positions(table, src, self.grid)
            state_dict[gkey] = self.grid_shape.clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def from_state_dict(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        *,
        num_heads: int = 4,
        dropout: float = 0.1,
        grid: tuple[int, int] | int | None = None,
    ) -> "Discriminator":
        """Build a discriminator whose sizes (D, hidden, grid) are read from ``state_dict``.

        ``num_heads`` cannot be read from the weights and must match training. With ``grid`` the table
        is then resampled to that grid.
        """
        dim = state_dict["pos_embed"].shape[1]
        hidden = state_dict["mlp.0.weight"].shape[0]
        if "grid_shape" in state_dict:
            src = _as_grid(state_dict["grid_shape"])
        else:
            side = math.isqrt(state_dict["pos_embed"].shape[0])
            src = (side, side)
        model = cls(dim, src, num_heads=num_heads, hidden=hidden, dropout=dropout)
        model.load_state_dict(dict(state_dict))
        if grid is not None:
            model.resize_positions(grid)
        return model

    def config(self) -> dict[str, Any]:
        """Constructor arguments as JSON-friendly values (for the model's config.json)."""
        return {
            "dim": self.dim,
            "grid": list(self.grid),
            "num_heads": self.num_heads,
            "hidden": self.hidden,
            "dropout": self.dropout,
        }

    # --------------------------------------------------------------- forward
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 3 or features.shape[1] != self.num_patches or features.shape[2] != self.dim:
            raise InputError(
                f"discriminator expects (B, {self.num_patches}, {self.dim}) features for grid "
                f"{self.grid[0]}x{self.grid[1]}, got {tuple(features.shape)}; "
                "call resize_positions() for another grid"
            )
        # fp16 cached features are promoted to the parameters' dtype; autocast (if on) handles the matmuls.
        x = features.to(self.pos_embed.dtype) + self.pos_embed
        x = self.norm(x + self.attn_drop(self._attention(x)))
        x = x + self.mlp_drop(self.mlp(x))
        return self.head(x).squeeze(-1)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.dropout > 0):
            # need_weights=False selects the fused scaled-dot-product kernel; nobody reads the weights.
            return self.attn(x, x, x, need_weights=False)[0]
        # Training: the same computation written out, so the weight dropout uses the cheap mask.
        b, n, d = x.shape
        h = self.num_heads
        qkv = F.linear(x, self.attn.in_proj_weight, self.attn.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)  # each (B, H, N, d/h)
        weights = (q * (d // h) ** -0.5) @ k.transpose(-2, -1)
        weights = dropout(weights.softmax(dim=-1), self.dropout)
        out = (weights @ v).transpose(1, 2).reshape(b, n, d)
        return F.linear(out, self.attn.out_proj.weight, self.attn.out_proj.bias)
