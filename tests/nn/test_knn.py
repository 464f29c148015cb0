"""Exact nearest neighbours (faiss vs torch vs brute force) and PatchCore's image-score re-weighting."""

import numpy as np
import pytest
import torch

from generalad.errors import ConfigError
from generalad.nn.knn import NearestNeighbours, faiss, patchcore_reweight

needs_faiss = pytest.mark.skipif(faiss is None, reason="faiss not installed")


def _brute(bank: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d2 = ((q[:, None].astype(np.float64) - bank[None].astype(np.float64)) ** 2).sum(-1)
    idx = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return np.sqrt(np.take_along_axis(d2, idx, 1)), idx


@needs_faiss
@pytest.mark.parametrize("k", [1, 5])
def test_faiss_equals_torch_and_brute_force(k):
    rng = np.random.default_rng(0)
    bank, q = rng.normal(size=(700, 24)), rng.normal(size=(130, 24))
    d_f, i_f = NearestNeighbours(bank, chunk=37).search(q, k=k)
    d_t, i_t = NearestNeighbours(torch.from_numpy(bank), backend="torch", chunk=37).search(q, k=k)
    d_b, i_b = _brute(bank, q, k)
    assert d_f.shape == (130, k) and d_f.dtype == torch.float32 and i_f.dtype == torch.int64
    assert torch.equal(i_f, i_t) and np.array_equal(i_f.numpy(), i_b)
    assert np.allclose(d_f.numpy(), d_b, rtol=1e-5, atol=1e-5)
    assert np.allclose(d_t.numpy(), d_b, rtol=1e-5, atol=1e-5)
    assert torch.all(d_f[:, 1:] >= d_f[:, :-1])  # nearest first


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_squared_and_self_match(backend):
    rng = np.random.default_rng(1)
    bank = rng.normal(size=(300, 8)).astype(np.float32)
    nn = NearestNeighbours(bank, backend=backend)
    d, i = nn.search(bank[:50])
    d2, i2 = nn.search(bank[:50], squared=True)
    assert torch.equal(i[:, 0], torch.arange(50)) and torch.equal(i, i2)
    assert float(d.abs().max()) == 0.0  # a query equal to a bank vector is at distance exactly 0
    q = rng.normal(size=(40, 8))
    d, _ = nn.search(q, k=3)
    d2, _ = nn.search(q, k=3, squared=True)
    assert torch.allclose(d**2, d2, rtol=1e-5)


@needs_faiss
def test_faiss_uses_torch_thread_count():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        NearestNeighbours(np.eye(4)).search(np.eye(4))
        assert faiss.omp_get_max_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_inputs_are_converted():
    bank = torch.randn(64, 6, dtype=torch.float64)
    nn = NearestNeighbours(bank.T.contiguous().T)  # non-contiguous, float64
    d, i = nn.search(bank[:5].bfloat16(), k=2)
    assert nn.bank.dtype == torch.float32 and nn.bank.is_contiguous() and len(nn) == 64 and nn.dim == 6
    assert d.shape == (5, 2) and torch.equal(i[:, 0], torch.arange(5))


@pytest.mark.parametrize(
    "make",
    [
        lambda: NearestNeighbours(np.zeros((4, 3)), metric="cosine"),
        lambda: NearestNeighbours(np.zeros((4, 3)), backend="annoy"),
        lambda: NearestNeighbours(np.zeros((0, 3))),
        lambda: NearestNeighbours(np.zeros(3)),
        lambda: NearestNeighbours(np.zeros((4, 3))).search(np.zeros((2, 4))),
        lambda: NearestNeighbours(np.zeros((4, 3))).search(np.zeros((2, 3)), k=5),
    ],
)
def test_bad_input_is_config_error(make):
    with pytest.raises(ConfigError):
        make()


def _reweight_direct(scores, nn_idx, feats, bank, b):
    """Paper eq. 7 written out per image with explicit loops and float64."""
    out = []
    for s, ids, f in zip(scores, nn_idx, feats):
        p = int(np.argmax(s))
        m = bank[ids[p]]
        nb = np.argsort(((bank - m) ** 2).sum(1), kind="stable")[:b]
        dist = np.sqrt(((bank[nb] - f[p]) ** 2).sum(1))
        out.append((1 - np.exp(dist[0]) / np.exp(dist).sum()) * s[p])
    return np.array(out)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_patchcore_reweight_matches_formula(backend):
    rng = np.random.default_rng(2)
    bank = rng.normal(size=(200, 6)).astype(np.float32)
    feats = rng.normal(size=(3, 10, 6)).astype(np.float32)
    nn = NearestNeighbours(bank, backend=backend)
    d, i = nn.search(feats.reshape(-1, 6))
    scores, idx = d.reshape(3, 10), i.reshape(3, 10)
    got = patchcore_reweight(scores, idx, torch.from_numpy(feats), nn, b=9)
    want = _reweight_direct(scores.numpy(), idx.numpy(), feats, bank, 9)
    assert np.allclose(got.numpy(), want, rtol=1e-4)
    assert torch.all(got < scores.amax(1)) and torch.all(got > 0)
    assert torch.equal(patchcore_reweight(scores, idx, torch.from_numpy(feats), nn, b=1), scores.amax(1))


def test_reweight_favours_isolated_bank_vectors():
    """Same distance s* to the matched bank vector: an isolated match scores higher than one in a cluster."""
    cluster = np.array([[-0.1 * j, 0.0] for j in range(9)])  # bank[0] at the origin, 8 neighbours to its left
    bank = np.concatenate([cluster, [[10.0, 0.0]], cluster[1:] + [20.0, 0.0]]).astype(np.float32)
    nn = NearestNeighbours(bank)
    feats = torch.tensor([[[0.0, 1.0]], [[10.0, 1.0]]])  # each 1.0 away from bank[0] / the isolated bank[9]
    d, i = nn.search(feats.reshape(-1, 2))
    got = patchcore_reweight(d.reshape(2, 1), i.reshape(2, 1), feats, nn, b=9)
    assert torch.allclose(d[:, 0], torch.ones(2), atol=1e-5)
    assert got[1] > got[0]


@pytest.mark.parametrize("m", [1, 63, 64, 65, 128, 200, 3528])
def test_argmin_rows_equals_argmin_ties_included(m):
    from generalad.nn.knn import argmin_rows

    g = torch.Generator().manual_seed(m)
    for values in (torch.randn(37, m, generator=g), torch.randint(0, 3, (37, m), generator=g).float()):
        assert torch.equal(argmin_rows(values), values.argmin(dim=1, keepdim=True))
        block = torch.empty(40, m)[:37]  # a view into a larger scratch block, as search() passes it
        block.copy_(values)
        assert torch.equal(argmin_rows(block), values.argmin(dim=1, keepdim=True))


def test_ivfpq_searches_exactly_the_queries_its_cells_leave_short():
    from generalad.nn.knn import IVFPQParams

    g = torch.Generator().manual_seed(0)
    bank = torch.randn(512, 8, generator=g)
    q = torch.randn(20, 8, generator=g)
    # 64 cells of ~8 vectors, one probed: k = 40 neighbours cannot come from one cell
    index = NearestNeighbours(bank, backend="ivfpq", ivf=IVFPQParams(nlist=64, pq_m=4, nprobe=1, refine=1))
    dist, idx = index.search(q, k=40)
    exact_d, exact_i = NearestNeighbours(bank, backend="torch").search(q, k=40)
    assert torch.equal(idx, exact_i)
    torch.testing.assert_close(dist, exact_d)
