import numpy as np
import pytest
import torch

from generalad.errors import ConfigError
from generalad.nn.loo import image_scores_from_patches, kth_image_distances, leave_one_out_distances, per_image_coreset


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


def _brute_force_kth(x: torch.Tensor, kth: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """k-th smallest over the other (non-excluded) images of the per-image nearest-patch distance."""
    n, p, d = x.shape
    flat = x.reshape(n * p, d).double()
    per_image = torch.cdist(flat, flat).view(n, p, n, p).amin(-1)  # (N, P, N)
    per_image[torch.arange(n), :, torch.arange(n)] = float("inf")
    if exclude is not None:
        per_image[:, :, exclude] = float("inf")
    return per_image.sort(-1).values[..., kth - 1].float()


@pytest.mark.parametrize("kth", [1, 2, 3])
def test_kth_image_with_exclusion_equals_brute_force(kth):
    x = torch.randn(9, 7, 5, generator=torch.Generator().manual_seed(3))
    exclude = torch.zeros(9, dtype=torch.bool)
    exclude[[2, 5]] = True
    got = kth_image_distances(x, bank_ratio=1.0, proj_dim=None, kth=kth, exclude=exclude,
                                  images_per_chunk=2, max_entries=30)  # several bank blocks per query chunk
    torch.testing.assert_close(got, _brute_force_kth(x, kth, exclude), atol=1e-4, rtol=1e-4)


def test_kth_image_unmasks_a_defect_shared_by_two_images():
    # The same defect in images 3 and 8: with kth=1 each masks the other; kth=2 asks for a second image.
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(12, 16, 8, generator=gen) * 0.1
    x[3, 5] += 5.0
    x[8, 2] = x[3, 5]
    nearest = image_scores_from_patches(kth_image_distances(x, bank_ratio=1.0, proj_dim=None, kth=1))
    second = image_scores_from_patches(kth_image_distances(x, bank_ratio=1.0, proj_dim=None, kth=2))
    assert nearest[3] < 1.0 and nearest[8] < 1.0
    assert set(np.argsort(-second)[:2]) == {3, 8} and second[3] > 4.0


def test_per_image_coreset_keeps_each_images_outlier_patch():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5, 40, 6, generator=gen) * 0.1
    x[:, 17] += 10.0  # one far-away patch per image: greedy k-center takes it among the first picks
    sel = per_image_coreset(x, 4, seed=0)
    assert sel.shape == (5, 4) and bool((sel == 17).any(1).all())
    assert all(len(set(row.tolist())) == 4 for row in sel)


def test_kth_and_exclude_validation():
    x = torch.zeros(4, 3, 2)
    with pytest.raises(ConfigError):
        kth_image_distances(x, kth=4)
    with pytest.raises(ConfigError):
        kth_image_distances(x, exclude=np.zeros(3, dtype=bool))
    with pytest.raises(ConfigError):
        kth_image_distances(x, bank_ratio=0.0)


def test_kth_image_bf16_close_to_fp32():
    x = torch.randn(6, 20, 16, generator=torch.Generator().manual_seed(6)) + 3.0  # off-centre, as real features
    exact = kth_image_distances(x, bank_ratio=1.0, proj_dim=None, kth=2)
    fast = kth_image_distances(x, bank_ratio=1.0, proj_dim=None, kth=2, bf16=True)
    assert float(((fast - exact).abs() / exact).quantile(0.99)) < 0.02
