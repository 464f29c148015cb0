"""Locally aware patch features: the fused depthwise formulation equals PatchCore's unfold + pool recipe."""

import pytest
import torch
import torch.nn.functional as F

from generalad.errors import ConfigError
from generalad.nn.patches import adaptive_pool_matrix, locally_aware_patches


def _reference(maps, out_dim, per_layer_dim=None, grid=None, kernel=3, aggregate="unfold"):
    """PatchCore's order of operations (patchcore-inspection ``_embed`` + Preprocessing + Aggregator):
    unfold → resize the unfolded map → pool each position's vector → stack layers (layer-major) → pool."""
    per_layer_dim = per_layer_dim or out_dim
    grid = tuple(grid or maps[0].shape[-2:])
    layers = []
    for m in maps:
        b, c, h, w = m.shape
        if aggregate == "unfold":
            cols = F.unfold(m, kernel, padding=kernel // 2).reshape(b, c * kernel * kernel, h, w)
        else:
            cols = F.avg_pool2d(m, kernel, stride=1, padding=kernel // 2)
        if (h, w) != grid:
            cols = F.interpolate(cols, size=grid, mode="bilinear", align_corners=False)
        v = cols.permute(0, 2, 3, 1).reshape(-1, 1, cols.shape[1])
        layers.append(F.adaptive_avg_pool1d(v, per_layer_dim).squeeze(1))
    stacked = torch.stack(layers, dim=1).reshape(len(layers[0]), 1, -1)  # (N, L, D) → layer-major
    return F.adaptive_avg_pool1d(stacked, out_dim).reshape(maps[0].shape[0], grid[0] * grid[1], out_dim)


@pytest.mark.parametrize(
    "shapes, out_dim, per_layer_dim, kernel, grid",
    [
        ([(5, 8, 9), (7, 4, 5)], 24, 20, 3, None),  # two layers, deeper one resized, bins overlap
        ([(5, 8, 9), (7, 4, 5), (3, 3, 3)], 50, 7, 3, (6, 5)),  # explicit grid, up-pooling in the second stage
        ([(16, 6, 7), (33, 3, 4)], 13, None, 5, None),  # 5×5 neighbourhoods
        ([(4, 5, 6)], 100, None, 3, None),  # out_dim > C·9: bins repeat entries
        ([(6, 5, 5)], 6, None, 1, None),  # kernel 1 = plain channel pooling
        ([(64, 7, 7), (128, 4, 4)], 128, None, 3, None),  # WRN-like ratios (C·9 / out_dim = 4.5 and 9)
    ],
)
def test_matches_patchcore_reference(shapes, out_dim, per_layer_dim, kernel, grid):
    torch.manual_seed(0)
    maps = [torch.randn(3, c, h, w) for c, h, w in shapes]
    ours, got_grid = locally_aware_patches(
        maps, out_dim=out_dim, per_layer_dim=per_layer_dim, kernel=kernel, grid=grid, chunk=2
    )
    ref = _reference(maps, out_dim, per_layer_dim, grid, kernel)
    assert got_grid == tuple(grid or shapes[0][1:])
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)


def test_avgpool_variant_matches_reference():
    torch.manual_seed(1)
    maps = [torch.randn(2, 10, 6, 6), torch.randn(2, 20, 3, 3)]
    ours, _ = locally_aware_patches(maps, out_dim=12, aggregate="avgpool")
    assert torch.allclose(ours, _reference(maps, 12, aggregate="avgpool"), atol=1e-5, rtol=0)
    # avgpool and unfold differ in general (unfold pools across neighbouring channels' taps)
    unfold, _ = locally_aware_patches(maps, out_dim=12)
    assert not torch.allclose(ours, unfold, atol=1e-3)


def test_layers_stack_layer_major():
    """PatchCore stacks (N, L, D) and pools: with two layers the first half of the output comes only from
    the first layer, the second half only from the second (not interleaved)."""
    shallow, deep = torch.zeros(1, 4, 4, 4), torch.randn(1, 4, 2, 2)
    out, _ = locally_aware_patches([shallow, deep], out_dim=8)
    assert torch.count_nonzero(out[..., :4]) == 0
    assert torch.count_nonzero(out[..., 4:]) > 0


def test_wrn_layer2_weights_are_patchcore_kernel():
    """Known closed form: 512·9 → 1024 then pairs averaged gives, per channel, a 3×3 kernel of 0.1 with 0.2
    in the centre (the centre tap sits in both overlapping pooling bins)."""
    x = torch.zeros(1, 512, 5, 5)
    x[0, 3, 2, 2] = 1.0
    other = torch.zeros(1, 1024, 3, 3)
    out, _ = locally_aware_patches([x, other], out_dim=1024)
    col = out[0, :, 3].reshape(5, 5)
    expected = torch.zeros(5, 5)
    expected[1:4, 1:4] = 0.1
    expected[2, 2] = 0.2
    assert torch.allclose(col, expected, atol=1e-7)


def test_low_precision_input_and_pool_matrix():
    torch.manual_seed(2)
    x = torch.randn(2, 8, 4, 4)
    a, _ = locally_aware_patches([x.bfloat16()], out_dim=16)
    b, _ = locally_aware_patches([x.bfloat16().float()], out_dim=16)
    assert a.dtype == torch.float32 and torch.equal(a, b)
    v = torch.randn(1, 1, 37, dtype=torch.float64)
    for n_out in (5, 37, 50):
        assert torch.allclose(adaptive_pool_matrix(37, n_out) @ v[0, 0], F.adaptive_avg_pool1d(v, n_out)[0, 0])


@pytest.mark.parametrize(
    "maps, kwargs",
    [
        ([], {}),
        ([torch.zeros(2, 3, 4)], {}),
        ([torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 2, 2)], {}),
        ([torch.zeros(1, 3, 4, 4)], {"kernel": 2}),
        ([torch.zeros(1, 3, 4, 4)], {"aggregate": "max"}),
        ([torch.zeros(1, 3, 4, 4)], {"out_dim": 0}),
    ],
)
def test_bad_input_is_config_error(maps, kwargs):
    with pytest.raises(ConfigError):
        locally_aware_patches(maps, **kwargs)
