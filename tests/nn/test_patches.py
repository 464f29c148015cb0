import numpy as np
import torch
import torch.nn.functional as F

from generalad.nn.patches import NearestNeighbours, locally_aware_patches


def test_locally_aware_matches_reference():
    torch.manual_seed(0)
    maps = [torch.rand(3, 5, 8, 8), torch.rand(3, 7, 4, 4)]
    ours, grid = locally_aware_patches(maps, out_dim=24, per_layer_dim=20, chunk=2)
    assert grid == (8, 8) and ours.shape == (3, 64, 24)
    ref = _reference(maps, 24, 20)
    assert torch.allclose(ours, ref, atol=1e-5)


def _reference(maps, out_dim, per_layer_dim):
    grid = maps[0].shape[-2:]
    layers = []
    for m in maps:
        b, c, h, w = m.shape
        cols = F.unfold(m, 3, padding=1)
        if (h, w) != tuple(grid):
            cols = F.interpolate(cols.reshape(b, c * 9, h, w), size=grid, mode="bilinear", align_corners=False).flatten(2)
        v = cols.transpose(1, 2).reshape(-1, 1, c * 9)
        layers.append(F.adaptive_avg_pool1d(v, per_layer_dim).reshape(b, -1, per_layer_dim))
    stacked = torch.stack(layers, dim=-1).reshape(maps[0].shape[0] * grid[0] * grid[1], 1, -1)
    return F.adaptive_avg_pool1d(stacked, out_dim).reshape(maps[0].shape[0], -1, out_dim)


def test_nearest_neighbours_faiss_equals_torch():
    rng = np.random.default_rng(0)
    bank, q = rng.normal(size=(500, 16)), rng.normal(size=(70, 16))
    d_f, i_f = NearestNeighbours(bank).search(q, k=2)
    d_t, i_t = NearestNeighbours(bank, backend="torch").search(q, k=2)
    assert np.array_equal(i_f, i_t)
    assert np.allclose(d_f, d_t, atol=1e-3)
    brute = np.sqrt(((q[:, None] - bank[None]) ** 2).sum(-1)).min(1)
    assert np.allclose(d_f[:, 0], brute, atol=1e-3)
    d2, _ = NearestNeighbours(bank).search(q, squared=True)
    assert np.allclose(d2[:, 0], brute**2, atol=1e-2)
