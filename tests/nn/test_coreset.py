"""Greedy k-center coreset: equals a naive float64 loop, covers better than random, deterministic."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from generalad.errors import ConfigError
from generalad.nn.coreset import coverage_radius, greedy_coreset, random_projection


def _naive(z: np.ndarray, k: int, start: int) -> list[int]:
    """Textbook greedy k-center in float64 with explicit differences."""
    z = z.astype(np.float64)
    mind = np.full(len(z), np.inf)
    sel = [start]
    for _ in range(k - 1):
        mind = np.minimum(mind, ((z - z[sel[-1]]) ** 2).sum(1))
        mind[sel] = -1.0
        sel.append(int(mind.argmax()))
    return sel


def _assert_greedy(z: np.ndarray, sel: torch.Tensor, rtol: float = 1e-5) -> None:
    """Teacher-forced check: every pick is a farthest point (within fp32 rounding) from the ones before."""
    z = z.astype(np.float64)
    mind = np.full(len(z), np.inf)
    for i, idx in enumerate(sel.tolist()):
        if i:
            assert mind[idx] >= mind.max() * (1 - rtol), f"pick {i} is not a farthest point"
        mind = np.minimum(mind, ((z - z[idx]) ** 2).sum(1))
        mind[idx] = -1.0


def _anisotropic(m: int, d: int, seed: int) -> torch.Tensor:
    """Points with a decaying spectrum, like real patch features (few directions hold most variance)."""
    g = torch.Generator().manual_seed(seed)
    scale = 1.0 / torch.arange(1, d + 1, dtype=torch.float32) ** 0.8
    return torch.randn(m, d, generator=g) * scale @ torch.linalg.qr(torch.randn(d, d, generator=g))[0]


def _pixel_patches(root: Path, n_images: int = 24, size: int = 96, p: int = 8) -> torch.Tensor:
    """Real data: non-overlapping 8×8 grey-level patches of magnetic-tile training images, (M, 64)."""
    files = sorted((root / "train" / "good").iterdir())[:n_images]
    rows = []
    for f in files:
        a = np.asarray(Image.open(f).convert("L").resize((size, size), Image.BILINEAR), np.float32) / 255.0
        rows.append(a.reshape(size // p, p, size // p, p).transpose(0, 2, 1, 3).reshape(-1, p * p))
    return torch.from_numpy(np.concatenate(rows))


@pytest.mark.parametrize("method, use_faiss", [("lazy", True), ("dense", True), ("dense", False)])
def test_equals_naive_reference(method, use_faiss):
    x = _anisotropic(1500, 40, seed=0)
    sel = greedy_coreset(x, n=150, proj_dim=16, seed=3, start=7, method=method, use_faiss=use_faiss)
    z = random_projection(x, 16, seed=3).numpy()
    assert sel.dtype == torch.int64
    assert sel.tolist() == _naive(z, 150, 7)


@pytest.mark.parametrize("batch, candidates", [(128, 1024), (1, 1), (7, 3), (512, 20000)])
def test_lazy_equals_dense_at_scale(batch, candidates):
    """Every batch/candidate setting gives the textbook selection, from one pick per refresh to huge lists."""
    x = _anisotropic(30000, 64, seed=1)
    lazy = greedy_coreset(x, ratio=0.05, proj_dim=32, seed=0, batch=batch, candidates=candidates)
    dense = greedy_coreset(x, ratio=0.05, proj_dim=32, seed=0, method="dense")
    assert len(lazy) == 1500 and lazy.unique().numel() == 1500
    agree = (lazy == dense).float().mean().item()
    if agree < 1.0:  # a near-tie may resolve differently in fp32; then every pick must still be greedy
        _assert_greedy(random_projection(x, 32, seed=0).numpy(), lazy)
    assert agree > 0.5


def test_isotropic_data_still_exact():
    """No low-dimensional structure (the worst case for any pruning): still the greedy selection."""
    x = torch.randn(3000, 32, generator=torch.Generator().manual_seed(5))
    sel = greedy_coreset(x, n=300, proj_dim=None, seed=0)
    _assert_greedy(x.numpy(), sel)


def test_input_is_not_modified():
    x = _anisotropic(500, 16, seed=4) + 3.0
    before = x.clone()
    greedy_coreset(x, n=50, proj_dim=None)
    assert torch.equal(x, before)


def test_whole_set_selects_every_point_once():
    x = _anisotropic(300, 8, seed=6)
    sel = greedy_coreset(x, ratio=1.0, proj_dim=None, candidates=16, batch=5)
    assert sorted(sel.tolist()) == list(range(300))


def test_real_patches_cover_better_than_random(magnetic_tile_dir):
    x = _pixel_patches(magnetic_tile_dir)
    n = len(x) // 10
    sel = greedy_coreset(x, n=n, proj_dim=None, seed=0)
    assert sel.unique().numel() == n
    _assert_greedy(x.numpy(), sel, rtol=1e-4)
    greedy_r = coverage_radius(x, sel)
    rand_r = [coverage_radius(x, torch.randperm(len(x), generator=torch.Generator().manual_seed(s))[:n])
              for s in range(3)]
    assert greedy_r <= min(rand_r)
    # with the default projection the radius in the original space stays close to exact selection's
    projected = greedy_coreset(x, n=n, proj_dim=32, seed=0)
    assert coverage_radius(x, projected) < min(rand_r)


def test_deterministic_and_seeded():
    x = _anisotropic(4000, 48, seed=2)
    a = greedy_coreset(x, ratio=0.1, proj_dim=16, seed=0)
    b = greedy_coreset(x.numpy(), ratio=0.1, proj_dim=16, seed=0)
    c = greedy_coreset(x, ratio=0.1, proj_dim=16, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert greedy_coreset(x, n=5, start=123).tolist()[0] == 123


def test_duplicates_give_unique_indices_and_progress():
    base = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    x = base.repeat(20, 1)  # 100 rows, 5 distinct points
    calls = []
    sel = greedy_coreset(x, n=12, proj_dim=None, progress=lambda i, k: calls.append((i, k)))
    assert sel.unique().numel() == 12
    assert len({tuple(r) for r in x[sel[:5]].tolist()}) == 5  # the first 5 picks cover the 5 points
    assert calls[-1] == (12, 12)


def test_low_precision_input_and_ratio_rounding():
    x = _anisotropic(1001, 24, seed=3)
    assert len(greedy_coreset(x.half(), ratio=0.1, proj_dim=8)) == 100
    assert len(greedy_coreset(x, ratio=1e-6)) == 1


@pytest.mark.parametrize(
    "x, kwargs",
    [
        (torch.zeros(10), {}),
        (torch.zeros(0, 4), {}),
        (torch.zeros(10, 4), {"ratio": 0.0}),
        (torch.zeros(10, 4), {"n": 11}),
        (torch.zeros(10, 4), {"start": 10}),
        (torch.zeros(10, 4), {"method": "fast"}),
        (torch.zeros(10, 4), {"batch": 0}),
    ],
)
def test_bad_input_is_config_error(x, kwargs):
    with pytest.raises(ConfigError):
        greedy_coreset(x, **kwargs)
