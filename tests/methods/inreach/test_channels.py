"""InReaCh core (generalad.methods.inreach.channels): association, channels, filters, layout, 1-NN (docs/methods/inreach.md §13)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from generalad.errors import ConfigError
from generalad.methods.inreach.channels import (
    IMAGE_STAT_DOC,
    Channels,
    InReaChConfig,
    NearestBank,
    associate,
    bank_indices,
    best_rotation,
    build_bank,
    build_channels,
    filter_channels,
    gather_bank,
    image_nominal_fraction,
    layout_decision,
    nearest_distances,
    order_with_seeds,
    patch_labels_from_masks,
    positional_channels,
    append_positional,
    precision_recall_of_bank,
    rotate_images,
    rotate_masks,
    select_seeds,
    sigma_filter,
    span_filter,
    transpose_score,
)


# ------------------------------------------------------------------------------------------- helpers
def permuted_set(n: int, p: int, d: int, *, seed: int = 0, noise: float = 1e-3):
    """Image j's patches are a spatial permutation of one base set + tiny noise with a per-patch scale
    (log-uniform over two decades, so the σ filter's d_i are spread like real features, not isotropic).
    Returns X (n, p, d), perms (n, p): X[j, p] ≈ base[perms[j, p]], image 0 shifted by a roll."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(p, d, generator=g)
    perms = torch.stack([torch.randperm(p, generator=g) for _ in range(n)])
    perms[0] = torch.roll(torch.arange(p), 3)  # shifted, not the identity
    scale = noise * 10 ** (2 * torch.rand(n, p, 1, generator=g) - 1)
    X = base[perms] + scale * torch.randn(n, p, d, generator=g)
    return X, perms


def relu_features(n: int, h: int, d: int, *, noise: float = 0.6, seed: int = 0) -> torch.Tensor:
    """Realistic-ish ReLU descriptors (n, h·h, d): a shared spatially smooth layout plus per-image
    noise, locally averaged (like 3×3 aggregation) and rectified."""
    g = torch.Generator().manual_seed(seed)
    base = F.avg_pool2d(torch.randn(1, d, h, h, generator=g), 3, 1, 1) * 3
    x = base + noise * torch.randn(n, d, h, h, generator=g)
    x = F.relu(F.avg_pool2d(x, 3, 1, 1) * 2)
    return x.flatten(2).transpose(1, 2).contiguous()


def reference_association(X: torch.Tensor, order: np.ndarray, s_count: int):
    """Per-pair loop over torch.cdist (float64): the obvious implementation of docs/methods/inreach.md §5, steps 2–3."""
    n, p, _ = X.shape
    seed_rank = torch.full((n, p), -1)
    match = torch.full((n, p), -1)
    dist = torch.full((n, p), math.inf, dtype=torch.float64)
    mutual = torch.zeros((n, p), dtype=torch.bool)
    for r in range(1, n):
        j = int(order[r])
        for s in range(min(r, s_count)):
            dm = torch.cdist(X[j].double(), X[int(order[s])].double()) ** 2  # (p_j, p_s)
            dmin, q = dm.min(1)
            mut = dm.argmin(0)[q] == torch.arange(p)
            better = dmin < dist[j]
            dist[j] = torch.where(better, dmin, dist[j])
            match[j] = torch.where(better, q, match[j])
            mutual[j] = torch.where(better, mut, mutual[j])
            seed_rank[j] = torch.where(better, torch.full_like(q, s), seed_rank[j])
    return seed_rank, match, dist, mutual


def reference_sigma(vectors: torch.Tensor, k: float, rule: str) -> torch.Tensor:
    """Keep mask of one channel, computed the plain way (float64)."""
    v = vectors.double()
    d = (v - v.mean(0)).norm(dim=1)
    sd = d.std(unbiased=False)
    stat = d if rule == "spherical" else (d - d.mean()).abs()
    return stat < k * sd


# ---------------------------------------------------------------------------------------------- seeds
def test_select_seeds_is_seeded_permutation_with_seeds_first():
    order = select_seeds(50, 10, seed=3)
    assert sorted(order.tolist()) == list(range(50))
    assert np.array_equal(order, select_seeds(50, 10, seed=3))
    assert not np.array_equal(order[:10], select_seeds(50, 10, seed=4)[:10])
    assert np.all(np.diff(order[10:]) > 0)  # the rest keeps index order
    assert np.array_equal(select_seeds(7, 10), np.arange(7))  # N ≤ S: all-pairs, identity
    assert np.array_equal(order_with_seeds(5, [4, 1]), [4, 1, 0, 2, 3])
    with pytest.raises(ConfigError):
        order_with_seeds(5, [1, 1])


def test_all_pairs_rule_and_config_validation():
    cfg = InReaChConfig()
    assert cfg.seeds_for(30) == 30 and cfg.seeds_for(31) == 10 and cfg.seeds_for(5) == 5
    assert InReaChConfig(all_pairs_below=0).seeds_for(5) == 5  # never more seeds than images
    assert InReaChConfig(all_pairs_below=0).seeds_for(50) == 10
    for bad in ({"sigma_rule": "x"}, {"precision": "fp16"}, {"num_seeds": 0}, {"sigma_k": 0}):
        with pytest.raises(ConfigError):
            InReaChConfig(**bad)


def test_pairs_compared_grow_linearly_with_n():
    X = torch.randn(40, 9, 4)
    for n in (12, 25, 40):
        calls = []
        a = associate(X[:n], select_seeds(n, 5), 5, block_mb=1e-3, progress=lambda done, tot: calls.append((done, tot)))
        assert a.n_pairs == 5 * n - 5 * 6 // 2
        assert calls[-1] == (a.n_pairs, a.n_pairs)
    a16 = associate(X.half(), select_seeds(40, 5), 5)  # half-precision storage is accepted
    assert torch.equal(a16.order, a.order) and (a16.match == a.match).float().mean() > 0.95


def test_too_few_images_give_an_empty_bank_not_an_error():
    res = build_bank(torch.randn(3, 9, 4).relu())  # channels hold at most 3 entries ≤ min_channel_len
    assert res.bank_ids.shape == (0, 2) and res.stats["bank_size"] == 0


# ---------------------------------------------------------------------------------------- association
def test_association_matches_bruteforce_reference():
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(12, 16, generator=g) * 3  # clustered → many mutual and non-mutual pairs
    X = centers[torch.randint(0, 12, (9, 20), generator=g)] + torch.randn(9, 20, 16, generator=g)
    order = select_seeds(9, 4, seed=2)
    a = associate(X, order, 4)
    seed_rank, match, dist, mutual = reference_association(X, order, 4)
    assert torch.equal(a.seed_rank, seed_rank)
    assert torch.equal(a.match, match)
    assert torch.equal(a.mutual, mutual)
    finite = torch.isfinite(dist)
    assert torch.allclose(a.dist2[finite].double(), dist[finite], rtol=1e-4, atol=1e-4)
    assert torch.isinf(a.dist2[int(order[0])]).all()  # image order[0] is never a member
    assert 0 < mutual.float().mean() < 1
    assert ((~mutual) & (a.n_mutual > 0)).any()  # "mutual only with a worse seed" occurs and is not used


def test_block_size_does_not_change_the_result():
    X = torch.randn(11, 25, 8)
    order = select_seeds(11, 3, seed=5)
    big = associate(X, order, 3, block_mb=64)
    tiny = associate(X, order, 3, block_mb=1e-6)  # one image per block
    for name in ("seed_rank", "match", "mutual", "n_mutual", "dist2"):
        assert torch.equal(getattr(big, name), getattr(tiny, name)), name
    assert big.n_pairs == tiny.n_pairs


def test_channel_members_are_the_permuted_seed_patches_at_their_own_location():
    """docs/methods/inreach.md §5, the official code's index swap: each member (j, p) must be keyed by the seed patch it matches."""
    X, perms = permuted_set(10, 36, 24)
    order = select_seeds(10, 4, seed=1)
    assoc = associate(X, order, 4)
    ch = build_channels(assoc)
    assert assoc.mutual[assoc.seed_rank >= 0].all()  # exact copies: everything is mutual

    member = ~ch.entry_is_seed
    j, p, c = ch.entry_image[member], ch.entry_patch[member], ch.entry_channel[member]
    s, q = ch.keys[c, 0], ch.keys[c, 1]
    assert torch.equal(perms[j, p], perms[s, q])  # same underlying base patch
    assert ((X[j, p] - X[s, q]).norm(dim=1) < 0.1).all()
    # the upstream swapped reading (seed vector at the member's position and vice versa) pairs
    # unrelated patches on permuted images
    assert (perms[j, q] == perms[s, p]).float().mean() < 0.2
    # every non-order[0] patch joined exactly one channel, stored at its own (j, p)
    assert member.sum() == 36 * 9
    assert torch.equal(ch.member_channel[j, p], c)
    assert (ch.member_channel[int(order[0])] == -1).all()
    # seeds are entries of their own channels, keys are (seed image, seed patch)
    assert torch.equal(ch.keys[:36, 0], torch.full((36,), int(order[0])))
    assert torch.equal(ch.sizes().sum(), torch.tensor(ch.n_entries))


def test_outlier_patch_never_reaches_the_bank():
    X, _ = permuted_set(14, 36, 24, seed=3)
    order = select_seeds(14, 4, seed=0)
    seed_img, other_img = int(order[1]), int(order[9])
    X[seed_img, 5] = 10 * torch.randn(24)  # an idiosyncratic patch in a seed image ...
    X[other_img, 17] = 10 * torch.randn(24)  # ... and in a non-seed image
    res = build_bank(X, InReaChConfig(num_seeds=4, all_pairs_below=0))
    ids = {tuple(r) for r in res.bank_ids.tolist()}
    assert (seed_img, 5) not in ids and (other_img, 17) not in ids
    assert len(ids) > 0.7 * 14 * 36  # the nominal patches mostly survive
    assert res.stats["keep_total"] <= 1 and set(res.stats) >= {"keep_span1", "keep_sigma", "keep_span2"}
    assert torch.allclose(gather_bank(X, res.bank_ids), X[res.bank_ids[:, 0], res.bank_ids[:, 1]])
    flat = res.bank_ids[:, 0] * 36 + res.bank_ids[:, 1]
    assert torch.equal(flat, torch.unique(flat))  # unique and sorted


def test_contaminated_image_ranks_last_on_image_statistics():
    X, _ = permuted_set(16, 36, 24, seed=4)
    bad = 11
    X[bad, ::2] = 3 * torch.randn(18, 24)  # half of its patches are idiosyncratic
    res = build_bank(X, InReaChConfig(num_seeds=5, all_pairs_below=0))
    st = res.image_stats
    assert set(st) == set(IMAGE_STAT_DOC)
    assert all(v.shape == (16,) for v in st.values())
    assert np.nanargmin(st["nominal_fraction"]) == bad
    assert np.nanargmin(st["any_mnn_fraction"]) == bad
    assert np.nanargmax(st["nn_dist_mean"]) == bad
    assert st["nominal_fraction"][bad] <= 0.55
    assert np.allclose(st["nominal_fraction"], image_nominal_fraction(res.bank_ids, 16, 36))


# -------------------------------------------------------------------------------------------- filters
def test_span_filter_keeps_channels_with_more_than_min_len_entries():
    ch = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2])
    alive = torch.ones(12, dtype=torch.bool)
    alive[10] = False  # channel 2 has 4 alive entries
    kept = span_filter(ch, alive, 4, min_len=3)
    assert kept.tolist() == [False] * 3 + [True] * 4 + [True] * 3 + [False, True]
    assert not span_filter(ch, alive, 4, min_len=4)[:7].any()


def _single_channel_sigma(vectors: torch.Tensor, rule: str = "spherical", k: float = 5.0):
    n = vectors.shape[0]
    X = vectors[None]  # (1, n, D): entries are patches of one "image"
    zeros = torch.zeros(n, dtype=torch.long)
    return sigma_filter(X, zeros, torch.arange(n), zeros, torch.ones(n, dtype=torch.bool), 1, k=k, rule=rule)


def test_sigma_filter_removes_a_far_member_and_matches_reference():
    g = torch.Generator().manual_seed(0)
    # 39 members at heterogeneous radii along few directions (ReLU-like), one far outlier
    radii = torch.rand(39, 1, generator=g) ** 2
    members = radii * torch.randn(39, 3, generator=g) @ torch.randn(3, 64, generator=g)
    vecs = torch.cat([members, 60 * torch.randn(1, 64, generator=g)])
    out = _single_channel_sigma(vecs)
    assert not out.alive[-1] and out.alive[:-1].float().mean() > 0.9
    assert torch.equal(out.alive, reference_sigma(vecs, 5.0, "spherical"))
    assert torch.allclose(out.dist.double(), (vecs.double() - vecs.double().mean(0)).norm(dim=1), rtol=1e-5)

    # many channels at once, both rules, against the per-channel reference
    sizes = [4, 7, 12, 30, 5]
    vecs = torch.randn(sum(sizes), 16, generator=g).relu() * torch.rand(sum(sizes), 1, generator=g) * 4
    ch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    alive = torch.ones(len(ch), dtype=torch.bool)
    for rule in ("spherical", "centered"):
        res = sigma_filter(vecs[None], torch.zeros_like(ch), torch.arange(len(ch)), ch, alive, 5, k=1.0, rule=rule)
        expect = torch.cat([reference_sigma(vecs[ch == c], 1.0, rule) for c in range(len(sizes))])
        assert torch.equal(res.alive, expect), rule


def test_sigma_filter_isotropic_high_dim_channel_dies_under_spherical_rule():
    g = torch.Generator().manual_seed(0)
    vecs = 5.0 + torch.randn(20, 2000, generator=g)  # d_i ≈ √2000 with a tiny spread: all fail
    sph = _single_channel_sigma(vecs, "spherical")
    assert not sph.alive.any()
    cen = _single_channel_sigma(vecs, "centered")
    assert cen.alive.all()
    # through the full span → σ → span chain: the channel and its seed are gone
    X = vecs[None]
    chans = Channels(
        keys=torch.tensor([[0, 0]]),
        entry_image=torch.zeros(20, dtype=torch.long),
        entry_patch=torch.arange(20),
        entry_channel=torch.zeros(20, dtype=torch.long),
        entry_is_seed=torch.arange(20) == 0,
        member_channel=torch.full((1, 20), -1),
    )
    filt = filter_channels(X, chans, InReaChConfig())
    assert not filt.alive.any() and filt.stats["keep_sigma"] == 0 and filt.stats["channels_after_span2"] == 0
    assert bank_indices(chans, filt.alive).shape == (0, 2)
    filt_c = filter_channels(X, chans, InReaChConfig(sigma_rule="centered"))
    assert filt_c.alive.all() and filt_c.stats["keep_total"] == 1.0


def test_sigma_filter_keeps_identical_members():
    """[D] numerical floor: σ = 0 with d = 0 must not kill a channel through 0 < 0."""
    vecs = torch.full((6, 8), 0.3)
    assert _single_channel_sigma(vecs).alive.all()


def test_sigma_filter_ignores_dead_entries():
    g = torch.Generator().manual_seed(2)
    vecs = torch.randn(10, 6, generator=g)
    alive = torch.ones(10, dtype=torch.bool)
    alive[3] = False
    z = torch.zeros(10, dtype=torch.long)
    res = sigma_filter(vecs[None], z, torch.arange(10), z, alive, 1, k=1.5)
    assert not res.alive[3] and math.isnan(float(res.dist[3]))
    expect = reference_sigma(vecs[alive], 1.5, "spherical")
    assert torch.equal(res.alive[alive], expect)


# -------------------------------------------------------------------------------------------- bf16
def test_bf16_association_agrees_with_fp32():
    X = relu_features(10, 16, 258, noise=0.8)
    one = np.arange(10)  # one seed: the per-pair MNN sets between image 0 and every other image
    a, b = associate(X, one, 1), associate(X, one, 1, precision="bf16")
    pair_agree = ((a.match == b.match) & (a.mutual == b.mutual))[1:].float().mean()
    assert pair_agree >= 0.99
    order = select_seeds(10, 4)
    a, b = associate(X, order, 4), associate(X, order, 4, precision="bf16")
    valid = a.seed_rank >= 0
    full = ((a.seed_rank == b.seed_rank) & (a.match == b.match) & (a.mutual == b.mutual))[valid]
    assert full.float().mean() >= 0.97  # the rest are near-ties between seeds:
    rel = ((b.dist2 - a.dist2).abs() / a.dist2)[valid]
    assert rel.max() < 0.02  # bf16's choice is as close as fp32's


# --------------------------------------------------------------------------------------------- layout
def test_transpose_score_separates_symmetric_and_asymmetric_means():
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    radial = 255 * torch.exp(-((x - 31.5) ** 2 + (y - 31.5) ** 2) / 400)
    sym = torch.stack([radial, radial * 0.5, 255 - radial], dim=-1)
    asym = torch.stack([255 * x / 63, 255 * x / 63, torch.zeros_like(x)], dim=-1)
    assert transpose_score(sym) < 1e-6
    assert transpose_score(asym) > 600
    assert transpose_score(asym.numpy()) == pytest.approx(float(((asym - asym.transpose(0, 1)) ** 2).mean()))
    with pytest.raises(ConfigError):
        transpose_score(torch.zeros(10, 12, 3))


def _asymmetric_image(size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    img = F.avg_pool2d(torch.rand(1, 3, size, size, generator=g), 5, 1, 2)[0].permute(1, 2, 0) * 255
    img[10:22, 36:50] = torch.tensor([255.0, 0.0, 0.0])  # off-centre block breaks symmetries
    img[40:46, 16:30] = torch.tensor([0.0, 0.0, 255.0])
    return img


@pytest.mark.parametrize("angle", [37.0, 200.0])
def test_rotation_sweep_recovers_a_known_angle(angle):
    ref = _asymmetric_image()
    rotated = rotate_images(ref[None], [angle])
    found = best_rotation(rotated, ref)[0]
    expect = (360.0 - angle) % 360.0
    assert min(abs(found - expect), 360 - abs(found - expect)) <= 1.0
    # applying the found angle brings the central crop back to the reference
    back = rotate_images(rotated, [found])[0]
    crop = (slice(16, 48), slice(16, 48))
    assert (back[crop] - ref[crop]).abs().mean() < 25
    assert best_rotation(ref[None], ref)[0] == 0.0


def test_rotate_images_convention_and_masks():
    img = torch.zeros(1, 8, 8)
    img[0, 3:5, 6:8] = 1.0  # a block on the right
    up = rotate_images(img, [90.0])[0]  # CCW on screen: right → top
    assert up[0:2, 3:5].min() > 0.9 and up[6:8].max() < 0.1
    m = rotate_masks(img.bool(), [90.0])
    assert m.dtype == torch.bool and torch.equal(m[0], up >= 0.5)


def test_layout_decision_switches_positional_channels():
    ref = _asymmetric_image(48, seed=1)
    fixed = ref[None].repeat(4, 1, 1, 1)
    dec = layout_decision(fixed, threshold=600)
    assert dec.use_positional and dec.angles is None and dec.t_original > 600
    dec = layout_decision(fixed, threshold=1e9)  # fails even after alignment → reverted
    assert not dec.use_positional and dec.angles is None and dec.t_aligned <= 1e9
    dec = layout_decision(fixed, threshold=1e9, align=False)
    assert not dec.use_positional and math.isnan(dec.t_aligned)


def test_positional_channels():
    pos = positional_channels((3, 4), weight=5.0)
    assert pos.shape == (12, 2)
    assert torch.allclose(pos[5], torch.tensor([1 * 5 / 4, 1 * 5 / 4]))  # p = 5 → row 1, col 1
    assert torch.allclose(pos[7], torch.tensor([3 * 5 / 4, 1 * 5 / 4]))  # col 3, row 1
    X = append_positional(torch.zeros(2, 12, 3), (3, 4))
    assert X.shape == (2, 12, 5) and torch.equal(X[1, :, 3:], pos)


# ----------------------------------------------------------------------------------------- 1-NN + bank
@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_nearest_distances_are_squared_l2(backend):
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(300, 20, generator=g)
    queries = torch.cat([bank[:5], torch.randn(40, 20, generator=g) * 2])
    d2, idx = NearestBank(bank, backend=backend, block_mb=0.01).search(queries)
    ref = torch.cdist(queries.double(), bank.double()) ** 2
    assert torch.allclose(d2.double(), ref.min(1).values, rtol=1e-4, atol=1e-4)
    assert torch.equal(idx, ref.argmin(1))
    assert (d2[:5] < 1e-4).all()
    e = torch.zeros(1, 20)
    e[0, 0] = 3.0
    assert nearest_distances(torch.zeros(1, 20), e, backend=backend).item() == pytest.approx(9.0)


def test_precision_recall_of_bank_and_mask_labels():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[1, 0, 0] = True  # one pixel → the top-left 4×4 cell of image 1
    lab = patch_labels_from_masks(masks, (2, 2))
    assert lab.tolist() == [[False] * 4, [True, False, False, False]]
    ids = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 3]])
    pr = precision_recall_of_bank(ids, lab)
    assert pr["precision"] == pytest.approx(3 / 4) and pr["recall"] == pytest.approx(3 / 7)
