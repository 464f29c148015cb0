"""Leave-one-out patch distances: how anomalous each training image looks against all the *other* images.

For every patch of training image i, the distance to the nearest patch of any other training image (j ≠ i);
the image's score is the mean of its largest patch distances (top fraction, at least one patch). This is
PatchCore's own test score applied to each training image with that image left out of the memory bank, so
a contaminant whose defect recurs nowhere else in the set stands out, while normal patches find a close
match in some other image.

Comparing with every patch of every other image costs O((N·P)²·d). Instead all patches are projected to
``proj_dim`` dimensions (seeded Gaussian projection, distances kept in expectation) and reduced to a greedy
k-center coreset; the coreset's entries keep their image id, and a patch's leave-one-out neighbour is its
nearest coreset entry from another image. Because greedy k-center picks far-away points first, a
contaminant's defect patches are in the bank; they only lower the score of *other* images with a similar
defect. Cost for 770 images × 784 patches (magnetic tile): one coreset (~1 min) plus one masked
(N·P × M) distance pass in image chunks.
"""

from __future__ import annotations

import numpy as np
import torch

from generalad.errors import ConfigError
from generalad.nn.coreset import greedy_coreset, random_projection

__all__ = ["leave_one_out_distances", "image_scores_from_patches"]


def leave_one_out_distances(
    patches: torch.Tensor | np.ndarray,
    *,
    bank_ratio: float = 0.1,
    proj_dim: int | None = 128,
    seed: int = 0,
    images_per_chunk: int = 4,
) -> torch.Tensor:
    """(N, P) distance of every patch to its nearest coreset entry taken from a different image.

    patches: (N, P, D) patch features of N >= 2 training images. ``bank_ratio`` 1.0 is the exact leave-one-out
    nearest neighbour (in the projected space). Entries are +inf only if no other image reached the bank.
    """
    x = torch.as_tensor(patches)
    if x.ndim != 3 or x.shape[0] < 2:
        raise ConfigError(f"leave-one-out distances need (N >= 2, P, D) patches, got {tuple(x.shape)}")
    n, p, _ = x.shape
    flat = random_projection(x.reshape(n * p, -1), proj_dim, seed=seed)
    keep = greedy_coreset(flat, ratio=bank_ratio, proj_dim=None, seed=seed)
    keep = keep.sort().values  # rows are image-major, so sorted ids group each image's entries
    bank, owner = flat[keep], keep // p
    bank_sq = (bank * bank).sum(1)
    bounds = torch.searchsorted(owner, torch.arange(n + 1))  # image i's entries: bounds[i]:bounds[i+1]
    out = torch.empty(n, p)
    for start in range(0, n, images_per_chunk):
        stop = min(n, start + images_per_chunk)
        q = flat[start * p : stop * p]
        # ‖q‖² is constant along a row, so it is added after the min: one (rows, M) array, written once.
        partial = torch.addmm(bank_sq.expand(q.shape[0], -1), q, bank.T, alpha=-2.0).view(stop - start, p, -1)
        for k, i in enumerate(range(start, stop)):  # blank out the image's own entries (a slice, not a mask)
            partial[k, :, bounds[i] : bounds[i + 1]] = float("inf")
        d2 = partial.amin(-1) + (q * q).sum(1).view(stop - start, p)
        out[start:stop] = d2.clamp_min(0).sqrt()
    return out


def image_scores_from_patches(distances: torch.Tensor, *, top_fraction: float = 0.01) -> np.ndarray:
    """(N,) mean of each image's ``top_fraction`` largest patch distances (at least one patch)."""
    if not 0 < top_fraction <= 1:
        raise ConfigError(f"top_fraction must be in (0, 1], got {top_fraction}")
    k = max(1, int(round(top_fraction * distances.shape[1])))
    return distances.topk(k, dim=1).values.mean(1).double().numpy()
