"""GeneralAD distortions: label masks, k ranges, top-k attention, permutations, reproducibility."""

from __future__ import annotations

import pytest
import torch

from generalad.errors import ConfigError
from generalad.methods.generalad import distortions as dist
from generalad.methods.generalad.distortions import (
    DISTORTIONS,
    PARTIAL_DISTORTIONS,
    Distortion,
    apply_distortion,
    attention_noise,
    attention_shuffle,
    copy_out,
    make_generator,
    noise_all,
    noise_random_subset,
    random_shuffle,
)

B, N, D, H = 512, 12, 6, 3


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def feats() -> torch.Tensor:
    # distinct rows (continuous random values), so "row changed" is exactly "row moved/noised"
    return torch.randn(B, N, D, generator=make_generator(123))


@pytest.fixture(scope="module")
def attn() -> torch.Tensor:
    return torch.rand(B, H, N, generator=make_generator(7)).softmax(-1)


def changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a != b).any(-1)


def is_top_k_of_some_head(mask: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """(B,) True where the mask is exactly the k most attended patches of at least one head."""
    k = mask.sum(1)
    ranks = attn.argsort(-1, descending=True).argsort(-1)  # (B, H, N)
    return ((ranks < k[:, None, None]) == mask[:, None, :]).all(-1).any(-1)


def same_rows(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Each image of ``a`` holds the same multiset of rows as in ``b``."""
    key = lambda x: x.sort(dim=1).values  # noqa: E731  (sort each column; equal multisets ⇒ equal)
    return torch.equal(key(a), key(b))


def test_noise_all(feats: torch.Tensor) -> None:
    out, labels = noise_all(feats, 0.25, generator=make_generator(0))
    assert labels.dtype == torch.bool and labels.all() and labels.shape == (B, N)
    assert changed(out, feats).all()
    assert abs((out - feats).std().item() - 0.25) < 0.01  # sigma is a standard deviation


def test_random_subset_labels_and_k_range(feats: torch.Tensor) -> None:
    out, labels = noise_random_subset(feats, 0.25, generator=make_generator(0))
    k = labels.sum(1)
    assert k.min() >= 1 and k.max() <= N
    assert set(k.tolist()) == set(range(1, N + 1))  # U{1..N}, inclusive ends, per-sample k
    assert torch.equal(changed(out, feats), labels)  # labels exactly where features changed
    assert torch.equal(out[~labels], feats[~labels])  # untouched rows bit-identical


def test_reproducible_with_same_generator(feats: torch.Tensor, attn: torch.Tensor) -> None:
    for name in DISTORTIONS:
        a = apply_distortion(name, feats, generator=make_generator(5), attention=attn)
        b = apply_distortion(name, feats, generator=make_generator(5), attention=attn)
        c = apply_distortion(name, feats, generator=make_generator(6), attention=attn)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), name
        assert not torch.equal(a[0], c[0]), name


def test_attention_shuffle_derangement(feats: torch.Tensor, attn: torch.Tensor) -> None:
    out, labels = attention_shuffle(feats, attn, generator=make_generator(1))
    k = labels.sum(1)
    assert k.min() >= 2 and k.max() <= N and set(k.tolist()) == set(range(2, N + 1))
    assert is_top_k_of_some_head(labels, attn).all()
    assert torch.equal(changed(out, feats), labels)  # no fixed points: every positive moved
    assert same_rows(out, feats)  # a permutation within the image
    assert torch.equal(out[~labels], feats[~labels])


def test_attention_shuffle_head_is_random(attn: torch.Tensor) -> None:
    # Build attention whose heads rank patches differently; every head must get picked sometimes.
    b = 600
    base = torch.arange(N, dtype=torch.float32)
    a = torch.stack([base, base.flip(0), base.roll(N // 2)]).expand(b, H, N).contiguous()
    f = torch.randn(b, N, D, generator=make_generator(3))
    _, labels = attention_shuffle(f, a, generator=make_generator(4), k_max=2)
    firsts = {tuple(row.nonzero().flatten().tolist()) for row in labels}
    assert firsts == {(N - 2, N - 1), (0, 1), (N // 2 - 2, N // 2 - 1)}


def test_attention_shuffle_k_max(feats: torch.Tensor, attn: torch.Tensor) -> None:
    _, labels = attention_shuffle(feats, attn, generator=make_generator(1), k_max=3)
    assert set(labels.sum(1).tolist()) == {2, 3}
    with pytest.raises(ConfigError):
        attention_shuffle(feats, attn, generator=make_generator(1), k_max=1)  # derangement needs k >= 2
    with pytest.raises(ConfigError):
        attention_shuffle(feats, attn, generator=make_generator(1), k_max=N + 1)


def test_attention_shuffle_parity_mode(feats: torch.Tensor, attn: torch.Tensor) -> None:
    out, labels = attention_shuffle(feats, attn, generator=make_generator(2), derangement=False)
    k = labels.sum(1)
    assert set(k.tolist()) == set(range(1, N + 1))  # k = 1 allowed (a no-op, as upstream)
    assert is_top_k_of_some_head(labels, attn).all()
    moved = changed(out, feats)
    assert not (moved & ~labels).any()  # only labelled rows can move
    assert (labels & ~moved).sum() > 0  # fixed points exist and stay labelled 1 ([C])
    assert same_rows(out, feats)
    # a uniform permutation has on average one fixed point per image
    fixed = (labels & ~moved).sum(1).float()
    assert 0.8 < fixed.mean().item() < 1.2


def test_random_shuffle(feats: torch.Tensor) -> None:
    out, labels = random_shuffle(feats, generator=make_generator(3), k_max=5)
    assert set(labels.sum(1).tolist()) == {2, 3, 4, 5}
    assert torch.equal(changed(out, feats), labels)
    assert same_rows(out, feats)
    out, labels = random_shuffle(feats, generator=make_generator(3), derangement=False)
    assert set(labels.sum(1).tolist()) == set(range(1, N + 1))
    assert same_rows(out, feats) and not (changed(out, feats) & ~labels).any()


def test_attention_noise(feats: torch.Tensor, attn: torch.Tensor) -> None:
    out, labels = attention_noise(feats, attn, 0.25, generator=make_generator(4))
    assert set(labels.sum(1).tolist()) == set(range(1, N + 1))  # ignores the k cap: U{1..N}
    assert is_top_k_of_some_head(labels, attn).all()
    assert torch.equal(changed(out, feats), labels)


def _row_sources(out: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """(B, N) index of the original row equal to each output row."""
    eq = (out[:, :, None, :] == feats[:, None, :, :]).all(-1)  # (B, N, N)
    assert (eq.sum(-1) == 1).all()
    return eq.float().argmax(-1)


def test_copy_out(feats: torch.Tensor, attn: torch.Tensor) -> None:
    out, labels = copy_out(feats, attn, generator=make_generator(5), k_max=6)
    assert set(labels.sum(1).tolist()) == set(range(1, 7))
    assert is_top_k_of_some_head(labels, attn).all()
    assert torch.equal(changed(out, feats), labels)  # no self-copies by default
    src = _row_sources(out, feats)
    assert torch.equal(src[~labels], torch.arange(N).expand(B, N)[~labels])
    # parity: k distinct sources, self-copies possible (and still labelled 1)
    out, labels = copy_out(feats, attn, generator=make_generator(5), derangement=False)
    src = _row_sources(out, feats)
    for b in range(0, B, 37):  # spot check distinctness
        s = src[b][labels[b]]
        assert s.unique().numel() == s.numel()
    assert (labels & ~changed(out, feats)).any()


def test_registry_and_dispatch(feats: torch.Tensor, attn: torch.Tensor) -> None:
    assert set(DISTORTIONS) == {d.value for d in Distortion}
    assert "noise_all" not in PARTIAL_DISTORTIONS and "random" in PARTIAL_DISTORTIONS
    assert [n for n, s in DISTORTIONS.items() if s.paper] == ["noise_all", "random", "attn_shuffle"]
    out, labels = apply_distortion(Distortion.RANDOM, feats, generator=make_generator(0))
    ref = noise_random_subset(feats, 0.25, generator=make_generator(0))
    assert torch.equal(out, ref[0]) and torch.equal(labels, ref[1])
    with pytest.raises(ConfigError, match="unknown distortion"):
        apply_distortion("cutpaste", feats, generator=make_generator(0))
    with pytest.raises(ConfigError, match="attention"):
        apply_distortion("attn_shuffle", feats, generator=make_generator(0))
    with pytest.raises(ConfigError, match="attention"):
        apply_distortion("attn_shuffle", feats, generator=make_generator(0), attention=attn[:, :, :5])


def test_dtype_and_small_inputs() -> None:
    f = torch.randn(4, 2, 3).half()
    a = torch.rand(4, 1, 2)
    out, labels = attention_shuffle(f, a, generator=make_generator(0))
    assert out.dtype == torch.float16 and labels.all()  # N = 2 ⇒ k = 2, a swap
    assert torch.equal(out, f.flip(1))
    out, _ = noise_random_subset(f, 0.25, generator=make_generator(0))
    assert out.dtype == torch.float16


def test_no_python_loop_in_hot_paths() -> None:
    # Guard against per-image loops creeping back in: no loop or comprehension in any distortion function.
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(dist))
    loops = (ast.For, ast.While, ast.ListComp, ast.GeneratorExp, ast.SetComp, ast.DictComp)
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        assert not any(isinstance(n, loops) for n in ast.walk(fn)), fn.name
