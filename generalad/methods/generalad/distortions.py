"""GeneralAD feature distortions (docs/methods/generalad.md §3), vectorised over the batch.

Every distortion takes clean patch features ``F`` (B, N, D) and returns ``(distorted (B, N, D), labels
(B, N) bool)`` with label True = distorted patch. Randomness comes only from the ``torch.Generator`` passed
in, which must live on ``F``'s device (noise is drawn there, never on the CPU and copied). The same
generator state gives the same output.

Vectorisation tricks (no Python loop over images or patches):

* random subset of k_b patches per image = positions whose rank among uniform keys is < k_b;
* top-k attended patches = positions whose rank in the (descending) attention row is < k_b;
* a permutation inside a masked set = sort uniform keys with the unmasked positions pushed to the end:
  the first k_b sorted positions are the set in a uniformly random order ``s``. A cyclic shift of that
  order (s_j takes the feature of s_{j+1 mod k}) is a derangement of the set; pairing ``s`` with a fixed
  order of the set instead gives a uniform permutation (the official code's behaviour, fixed points
  included).

``derangement=True`` (our default, [D]) guarantees every patch labelled 1 really changed: shuffles draw
k ~ U{2..k_max} and use a cyclic shift; copy-out never copies a patch onto itself. ``derangement=False`` is
parity with the official code: k ~ U{1..k_max}, uniform permutation / k distinct random sources, and
patches that ended up unchanged are still labelled 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

import torch

from generalad.errors import ConfigError

__all__ = [
    "Distortion",
    "DistortionSpec",
    "DISTORTIONS",
    "PARTIAL_DISTORTIONS",
    "apply_distortion",
    "attention_noise",
    "attention_shuffle",
    "copy_out",
    "get_spec",
    "make_generator",
    "noise_all",
    "noise_random_subset",
    "random_shuffle",
]

Result = tuple[torch.Tensor, torch.Tensor]


class Distortion(str, Enum):
    """Distortion names as used in configs (``Distortion("random")`` etc.)."""

    NOISE_ALL = "noise_all"
    RANDOM = "random"  # noise on a random subset (industrial sets)
    ATTN_SHUFFLE = "attn_shuffle"  # shuffle the top-k attended patches (MVTec LOCO)
    ATTN_NOISE = "attn_noise"  # upstream-only: noise on the top-k attended patches
    COPY_OUT = "copy_out"  # upstream-only: overwrite top-k attended patches with random other patches
    RAND_SHUFFLE = "rand_shuffle"  # upstream-only: shuffle a random subset


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A seeded generator on ``device`` (distortions need it on the features' device)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


# ----------------------------------------------------------------------------- helpers
def _uniform_int(lo: int, hi: int, batch: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """k_b ~ U{lo, ..., hi} (inclusive) for every image, shape (B,)."""
    return torch.randint(lo, hi + 1, (batch,), generator=generator, device=device)


def _gaussian(features: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    # sigma is a standard deviation, as in the official code ([P] writes N(0, 0.25)).
    return torch.randn(features.shape, generator=generator, device=features.device, dtype=features.dtype) * sigma


def _ranks(values: torch.Tensor, descending: bool = False) -> torch.Tensor:
    """Rank of each entry along dim 1 (0 = smallest, or largest if ``descending``); ties: lower index first."""
    order = torch.argsort(values, dim=1, descending=descending, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(values.shape[1], device=values.device).expand_as(order))
    return ranks


def _random_subset(
    batch: int, n: int, k: torch.Tensor, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Bool (B, N): k_b distinct uniformly chosen positions per image."""
    keys = torch.rand((batch, n), generator=generator, device=device)
    return _ranks(keys) < k[:, None]


def _top_attended(attn: torch.Tensor, k: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Bool (B, N): the k_b most attended patches of one random head per image."""
    b, h, _ = attn.shape
    head = torch.randint(0, h, (b,), generator=generator, device=attn.device)
    row = attn[torch.arange(b, device=attn.device), head]  # (B, N)
    return _ranks(row, descending=True) < k[:, None]


def _gather_rows(features: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """out[b, i] = features[b, source[b, i]]."""
    return features.gather(1, source.unsqueeze(-1).expand(-1, -1, features.shape[2]))


def _permute_within(
    features: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, derangement: bool
) -> torch.Tensor:
    """Permute the masked patches of each image among themselves (unmasked rows untouched)."""
    b, n, _ = features.shape
    k = mask.sum(1, keepdim=True)  # (B, 1)
    keys = torch.rand((b, n), generator=generator, device=features.device)
    # Masked positions first, in a uniformly random order s_0 .. s_{k-1}; unmasked after them.
    order = torch.argsort(keys.masked_fill(~mask, 2.0), dim=1, stable=True)
    j = torch.arange(n, device=features.device).expand(b, n)
    if derangement:
        # s_j takes the feature of s_{(j+1) mod k}: one k-cycle, so no fixed point when k >= 2.
        nxt = torch.where(j < k - 1, j + 1, torch.where(j == k - 1, torch.zeros_like(j), j))
        src_of_slot = order.gather(1, nxt)
    else:
        # s_j takes the feature of the j-th set member in index order: a fixed order of the set paired
        # with a uniformly random one = a uniform permutation (fixed points possible, as upstream).
        fixed = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
        src_of_slot = torch.where(j < k, fixed, order)
    source = torch.empty_like(order)
    source.scatter_(1, order, src_of_slot)  # target position order[b, j] reads from src_of_slot[b, j]
    return _gather_rows(features, source)


def _check_k_max(k_max: int | None, n: int, lo: int, name: str) -> int:
    k_max = n if k_max is None or k_max < 0 else int(k_max)
    if not lo <= k_max <= n:
        raise ConfigError(f"{name}: k_max must be in [{lo}, {n}] for {n} patches, got {k_max}")
    return k_max


def _check_attention(features: torch.Tensor, attn: torch.Tensor | None, name: str) -> torch.Tensor:
    if attn is None:
        raise ConfigError(f"distortion '{name}' needs CLS attention maps (extract features with attention)")
    if attn.dim() != 3 or attn.shape[0] != features.shape[0] or attn.shape[2] != features.shape[1]:
        raise ConfigError(
            f"{name}: attention must be (B, heads, N) = ({features.shape[0]}, H, {features.shape[1]}), "
            f"got {tuple(attn.shape)}"
        )
    return attn


# ----------------------------------------------------------------------------- distortions
def noise_all(features: torch.Tensor, sigma: float = 0.25, *, generator: torch.Generator) -> Result:
    """Gaussian noise (std ``sigma``) on every element; every patch labelled 1."""
    labels = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    return features + _gaussian(features, sigma, generator), labels


def _noise_where(features: torch.Tensor, mask: torch.Tensor, sigma: float, generator: torch.Generator) -> Result:
    """Gaussian noise on the masked patches only (labels = the mask)."""
    noise = _gaussian(features, sigma, generator)
    return features + noise * mask.unsqueeze(-1).to(features.dtype), mask


def noise_random_subset(features: torch.Tensor, sigma: float = 0.25, *, generator: torch.Generator) -> Result:
    """Noise on k_b ~ U{1..N} uniformly chosen patches per image (``random``; ignores any k cap)."""
    b, n, _ = features.shape
    k = _uniform_int(1, n, b, generator, features.device)
    return _noise_where(features, _random_subset(b, n, k, generator, features.device), sigma, generator)


def attention_shuffle(
    features: torch.Tensor,
    attn: torch.Tensor,
    *,
    generator: torch.Generator,
    k_max: int | None = None,
    derangement: bool = True,
) -> Result:
    """Permute the k_b most attended patches (random head per image) among themselves (``attn_shuffle``).

    ``attn`` is the (B, H, N) CLS→patch attention. k_b ~ U{2..k_max} with a derangement (default) or
    U{1..k_max} with a uniform permutation (parity; fixed points stay labelled 1). k_max defaults to N.
    """
    attn = _check_attention(features, attn, "attn_shuffle")
    mask = _top_attended(attn, _shuffle_sizes(features, k_max, derangement, generator, "attn_shuffle"), generator)
    return _permute_within(features, mask, generator, derangement), mask


def random_shuffle(
    features: torch.Tensor,
    *,
    generator: torch.Generator,
    k_max: int | None = None,
    derangement: bool = True,
) -> Result:
    """Permute a uniformly random subset of k_b patches among themselves (``rand_shuffle``, upstream-only)."""
    b, n, _ = features.shape
    k = _shuffle_sizes(features, k_max, derangement, generator, "rand_shuffle")
    mask = _random_subset(b, n, k, generator, features.device)
    return _permute_within(features, mask, generator, derangement), mask


def _shuffle_sizes(
    features: torch.Tensor, k_max: int | None, derangement: bool, generator: torch.Generator, name: str
) -> torch.Tensor:
    """(B,) shuffle sizes k_b ~ U{lo..k_max}: lo = 2 for a derangement (k = 1 cannot move), 1 for parity."""
    b, n, _ = features.shape
    lo = 2 if derangement else 1
    return _uniform_int(lo, _check_k_max(k_max, n, lo, name), b, generator, features.device)


def attention_noise(
    features: torch.Tensor, attn: torch.Tensor, sigma: float = 0.25, *, generator: torch.Generator
) -> Result:
    """Noise on the k_b ~ U{1..N} most attended patches of a random head (``attn_noise``, upstream-only)."""
    attn = _check_attention(features, attn, "attn_noise")
    b, n, _ = features.shape
    k = _uniform_int(1, n, b, generator, features.device)
    return _noise_where(features, _top_attended(attn, k, generator), sigma, generator)


def copy_out(
    features: torch.Tensor,
    attn: torch.Tensor,
    *,
    generator: torch.Generator,
    k_max: int | None = None,
    derangement: bool = True,
) -> Result:
    """Overwrite the k_b ~ U{1..k_max} most attended patches with features of other positions (upstream-only).

    Parity (``derangement=False``): k_b distinct uniformly random source positions, which may include the
    target itself (a self-copy, still labelled 1). Default: every target copies from a uniformly random
    position other than itself (sources drawn with replacement), so every labelled patch changed.
    """
    attn = _check_attention(features, attn, "copy_out")
    b, n, _ = features.shape
    if n < 2 and derangement:
        raise ConfigError("copy_out needs at least 2 patches")
    k = _uniform_int(1, _check_k_max(k_max, n, 1, "copy_out"), b, generator, features.device)
    mask = _top_attended(attn, k, generator)
    idx = torch.arange(n, device=features.device).expand(b, n)
    if derangement:
        src = torch.randint(0, n - 1, (b, n), generator=generator, device=features.device)
        src = src + (src >= idx).long()  # uniform over the n-1 positions other than the target
    else:
        # Targets (in index order) paired with a uniformly random sequence of distinct sources: the same
        # distribution as the official code's topk indices ↔ randperm(N)[:k].
        targets = torch.argsort(torch.where(mask, 0, 1).to(torch.int8), dim=1, stable=True)
        sources = torch.argsort(torch.rand((b, n), generator=generator, device=features.device), dim=1)
        src = idx.clone()
        src.scatter_(1, targets, sources)
    source = torch.where(mask, src, idx)
    return _gather_rows(features, source), mask


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class DistortionSpec:
    name: str
    needs_attention: bool
    uses_noise: bool  # takes sigma
    uses_k_max: bool  # honours the k cap / derangement switch
    fn: Callable[..., Result]
    paper: bool  # one of the paper's three evaluated strategies


DISTORTIONS: dict[str, DistortionSpec] = {
    s.name: s
    for s in (
        DistortionSpec("noise_all", False, True, False, noise_all, True),
        DistortionSpec("random", False, True, False, noise_random_subset, True),
        DistortionSpec("attn_shuffle", True, False, True, attention_shuffle, True),
        DistortionSpec("attn_noise", True, True, False, attention_noise, False),
        DistortionSpec("copy_out", True, False, True, copy_out, False),
        DistortionSpec("rand_shuffle", False, False, True, random_shuffle, False),
    )
}
#: names valid as *partial* distortions (noise_all is a separate, always-on copy).
PARTIAL_DISTORTIONS: tuple[str, ...] = tuple(n for n in DISTORTIONS if n != "noise_all")


def get_spec(name: str | Distortion) -> DistortionSpec:
    key = name.value if isinstance(name, Distortion) else str(name)
    if key not in DISTORTIONS:
        raise ConfigError(f"unknown distortion '{key}'; choose from {', '.join(DISTORTIONS)}")
    return DISTORTIONS[key]


def apply_distortion(
    name: str | Distortion,
    features: torch.Tensor,
    *,
    generator: torch.Generator,
    attention: torch.Tensor | None = None,
    sigma: float = 0.25,
    k_max: int | None = None,
    derangement: bool = True,
) -> Result:
    """Dispatch by name with one uniform signature (arguments a distortion does not use are ignored)."""
    spec = get_spec(name)
    args: list = [features]
    kwargs: dict = {"generator": generator}
    if spec.needs_attention:
        args.append(_check_attention(features, attention, spec.name))
    if spec.uses_noise:
        args.append(sigma)
    if spec.uses_k_max:
        kwargs.update(k_max=k_max, derangement=derangement)
    return spec.fn(*args, **kwargs)
