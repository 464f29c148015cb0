"""Sharded coreset / search (generalad.nn.sharded) give exactly the single-process results; IVF-PQ is sane.

Every ShardPool start costs ~2-4 s (spawn + import torch), so each test starts as few as it can.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generalad.errors import ConfigError
from generalad.nn.coreset import greedy_coreset, ordered_top
from generalad.nn.knn import IVFPQParams, NearestNeighbours
from generalad.nn.sharded import ShardedNearestNeighbours, ShardPool, shard_bounds, sharded_greedy_coreset


@pytest.fixture(scope="module")
def pool():
    """Three workers shared by the tests below (one ~3 s start instead of one per call)."""
    workers = ShardPool(3, threads=1)
    yield workers
    workers.close()


def _with_ties(m: int, d: int, seed: int) -> torch.Tensor:
    """Gaussian rows, a block of exact duplicates (equal distances) and integer rows (many equal values)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, d, generator=g)
    x[m // 2 : m // 2 + m // 10] = x[: m // 10]
    x[-m // 5 :] = torch.randint(0, 3, (m // 5, d), generator=g).float()
    return x


def test_ordered_top_defines_the_order_of_ties():
    v = torch.tensor([1.0, 3.0, 2.0, 3.0, 2.0, 2.0, 0.0])
    vals, idx = ordered_top(v, 4)
    assert vals.tolist() == [3.0, 3.0, 2.0, 2.0] and idx.tolist() == [1, 3, 2, 4]
    x = torch.randn(10000)  # no ties: exactly torch.topk
    assert all(torch.equal(a, b) for a, b in zip(ordered_top(x, 50), torch.topk(x, 50)))


def test_shard_bounds():
    assert shard_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert shard_bounds(1000, 2, align=256) == [(0, 512), (512, 1000)]
    assert shard_bounds(100, 4, align=64) == [(0, 64), (64, 100)]  # never an empty shard
    with pytest.raises(ConfigError):
        shard_bounds(10, 0)


def test_sharded_coreset_indices_equal_single_process(pool):
    x = _with_ties(6000, 24, seed=0)
    kw = dict(n=900, proj_dim=16, seed=5, chunk=512, candidates=48, batch=16)
    single = greedy_coreset(x, **kw)
    sharded = sharded_greedy_coreset(x, pool=pool, **kw)
    assert torch.equal(single, sharded)
    assert len(set(single.tolist())) == 900


def test_disk_backed_coreset_from_fp16_file(tmp_path, pool):
    x = _with_ties(3000, 20, seed=1).half()
    np.save(tmp_path / "feats.npy", x.numpy())
    bank_dir = tmp_path / "bank"
    kw = dict(ratio=0.1, proj_dim=None, chunk=256, candidates=32)  # no projection: z is x in fp32
    sharded = sharded_greedy_coreset(tmp_path / "feats.npy", pool=pool, bank_dir=bank_dir, **kw)
    assert torch.equal(sharded, greedy_coreset(x, **kw))
    assert np.load(bank_dir / "z.npy", mmap_mode="r").shape == (3000, 20)  # the centred points stay on disk


def test_sharded_search_equals_single_process(tmp_path, pool):
    g = torch.Generator().manual_seed(2)
    bank = torch.randn(5000, 40, generator=g)
    bank[2500:3000] = bank[:500]  # duplicates: equal distances, the lowest index must win
    queries = torch.cat([torch.randn(700, 40, generator=g), bank[:300]])
    np.save(tmp_path / "bank.npy", bank.half().numpy())
    single = NearestNeighbours(bank)
    index = ShardedNearestNeighbours(bank, pool=pool)
    try:
        d1, i1 = single.search(queries)
        d2, i2 = index.search(queries)
        assert torch.equal(d1, d2) and torch.equal(i1, i2)
        d1, i1 = single.search(queries, k=4)
        d2, i2 = index.search(queries, k=4)  # k > 1: equal distances may list their vectors in another order
        assert torch.equal(d1, d2) and torch.equal(bank[i1], bank[i2])
        assert (index.search(queries[700:])[0] == 0).all()
    finally:
        index.close()
    disk = ShardedNearestNeighbours(tmp_path / "bank.npy", pool=pool, bank_dir=tmp_path / "work")
    try:  # an fp16 file on disk: ranked in fp32 blocks, same as the fp32 bank in memory
        d1, i1 = NearestNeighbours(bank.half().float()).search(queries)
        d2, i2 = disk.search(queries)
        assert torch.equal(d1, d2) and torch.equal(i1, i2)
    finally:
        disk.close()


def test_ivfpq_recall_on_easy_data():
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(32, 32, generator=g) * 4
    bank = centres[torch.randint(32, (6000,), generator=g)] + 0.5 * torch.randn(6000, 32, generator=g)
    queries = centres[torch.randint(32, (500,), generator=g)] + 0.5 * torch.randn(500, 32, generator=g)
    exact, _ = NearestNeighbours(bank).search(queries)
    index = NearestNeighbours(bank, backend="ivfpq", ivf=IVFPQParams(nprobe=8, refine=8))
    assert index.ivf.nlist == 64 and index.ivf.pq_m == 8  # √6000 → 64 cells; 32 / 4 = 8 sub-vectors
    approx, idx = index.search(queries)
    assert (approx >= exact).all()  # distances are exact to the returned vector, never below the nearest
    assert (approx == exact).float().mean() >= 0.9
    # the returned distance is the exact one to the returned vector, bit for bit when computed as the search
    # does (a sum of squares: norm() reduces in another order on some CPUs, e.g. Zen 4)
    assert torch.equal((bank[idx[:, 0]] - queries).pow(2).sum(1).sqrt(), approx[:, 0])


@pytest.mark.parametrize(
    "params, message",
    [
        (IVFPQParams(pq_m=5), "ivf_m must divide the feature width 32"),
        (IVFPQParams(nlist=10**6), "ivf_nlist must be in"),
        (IVFPQParams(nprobe=0), "ivf_nprobe and ivf_refine must be >= 1"),
    ],
)
def test_ivfpq_config_errors_are_one_line(params, message):
    with pytest.raises(ConfigError, match=message) as err:
        params.resolved(6000, 32)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="needs at least 256"):
        IVFPQParams().resolved(100, 32)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"shards": 0}, "shards must be an integer >= 1"),
        ({"shards": 1.5}, "shards must be an integer >= 1"),
        ({"bank_dir": ""}, "bank_dir must be a folder path"),
        ({"knn_backend": "hnsw"}, "knn_backend must be one of auto, faiss, torch, ivfpq"),
        ({"knn_backend": "faiss", "shards": 2}, "knn_backend 'faiss' is single-process"),
        ({"ivf_m": 0}, "ivf_m must be an integer >= 1 or None"),
        ({"ivf_refine": 0}, "ivf_nprobe and ivf_refine must be >= 1"),
    ],
)
def test_patchcore_scale_options_are_one_line_config_errors(overrides, message):
    from generalad.methods.patchcore import PatchCore

    with pytest.raises(ConfigError, match=message) as err:
        PatchCore(**overrides)
    assert "\n" not in str(err.value)


def test_patchcore_shards_give_the_same_bank_and_scores(small_run, bottle):
    """The estimator's wiring: shards=2 refits the shared small PatchCore to the same bank and scores."""
    from generalad.methods.patchcore import PatchCore

    reference, _ = small_run
    model = PatchCore(backbone="efficientnet_lite0", image_size=64, device="cpu", precision="fp32",
                      calibration_min=2, shards=2)
    model.fit(bottle.train[:4])
    assert torch.equal(model.bank_, reference.bank_)
    assert isinstance(model._nn(), ShardedNearestNeighbours)
    assert model.fit_info_["coreset_shards"] == 1  # 200-odd patches: one 32768-row block, one shard
    images = bottle.test[:3]
    np.testing.assert_array_equal(model.score(images), reference.score(images))
    assert model.calibration_.threshold == reference.calibration_.threshold
