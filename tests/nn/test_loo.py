import numpy as np
import pytest
import torch

from generalad.errors import ConfigError
from generalad.nn.loo import image_scores_from_patches, leave_one_out_distances


def _brute_force(x: torch.Tensor) -> torch.Tensor:
    """Nearest patch of any other image, float64, no projection, no coreset."""
    n, p, d = x.shape
    flat = x.reshape(n * p, d).double()
    dist = torch.cdist(flat, flat).view(n, p, n, p)
    own = torch.eye(n, dtype=torch.bool)[:, None, :, None].expand_as(dist)
    return dist.masked_fill(own, float("inf")).amin(-1).amin(-1).float()


def test_full_bank_equals_brute_force_leave_one_out():
    x = torch.randn(6, 9, 5, generator=torch.Generator().manual_seed(0))
    got = leave_one_out_distances(x, bank_ratio=1.0, proj_dim=None, images_per_chunk=4)
    torch.testing.assert_close(got, _brute_force(x), atol=1e-4, rtol=1e-4)


def test_own_image_never_counts_as_a_neighbour():
    # Image 0 holds the same odd patch twice: leaving the image out, nothing else is near it.
    x = torch.zeros(4, 3, 2)
    x[0, 0] = x[0, 1] = torch.tensor([10.0, 10.0])
    d = leave_one_out_distances(x, bank_ratio=1.0, proj_dim=None)
    assert d[0, 0] > 14.0 and d[0, 1] > 14.0
    assert float(d[1:].max()) == 0.0


def test_unique_defect_ranks_its_image_first_and_shared_defect_does_not():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20, 16, 8, generator=gen) * 0.1
    x[7, 3] += 5.0  # a defect found in no other image
    scores = image_scores_from_patches(leave_one_out_distances(x, bank_ratio=0.5, proj_dim=None, seed=0))
    assert int(np.argmax(scores)) == 7
    x[12, 5] = x[7, 3]  # the same defect in two images: each is the other's neighbour
    scores = image_scores_from_patches(leave_one_out_distances(x, bank_ratio=1.0, proj_dim=None))
    assert scores[7] < 1.0 and scores[12] < 1.0


def test_top_fraction_mean_and_validation():
    d = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert image_scores_from_patches(d, top_fraction=0.5)[0] == pytest.approx(3.5)
    assert image_scores_from_patches(d, top_fraction=0.01)[0] == pytest.approx(4.0)  # at least one patch
    with pytest.raises(ConfigError):
        image_scores_from_patches(d, top_fraction=0.0)
    with pytest.raises(ConfigError):
        leave_one_out_distances(torch.zeros(1, 4, 2))


def test_same_seed_same_distances():
    x = torch.randn(8, 10, 32, generator=torch.Generator().manual_seed(2))
    a = leave_one_out_distances(x, bank_ratio=0.3, proj_dim=8, seed=3)
    b = leave_one_out_distances(x, bank_ratio=0.3, proj_dim=8, seed=3)
    assert torch.equal(a, b)
