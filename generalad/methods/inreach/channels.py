"""InReaCh core: mutual-nearest-neighbour channels across training images (pure tensors, no I/O).

Method doc: docs/methods/inreach.md (§5 association, §6 filters and bank, §9–10 cost). The input is the
descriptor tensor ``X`` of shape (N_images, P, D) — patches in row-major grid order — built by the
estimator (backbone + ``nn.patches.locally_aware_patches``). Pipeline::

    order = select_seeds(N, S, seed)            # seeds first (seeded RNG), the rest in index order
    assoc = associate(X, order, S)              # best seed / matched seed patch / d² / mutual per (j, p)
    chans = build_channels(assoc)               # channel key (s, q); seeds and members as "entries"
    filt  = filter_channels(X, chans, config)   # span → σ → span, with kept fractions in filt.stats
    ids   = bank_indices(chans, filt.alive)     # (M, 2) unique (image, patch) of surviving members
    bank  = gather_bank(X, ids)                 # (M, D)

``build_bank(X, config)`` runs all of it and adds per-image statistics (``image_statistics``) used to
rank possibly contaminated training images. Layout helpers (transpose test, rotation sweep, positional
channels) live in ``inreach_layout``; exact 1-NN search and bank diagnostics in ``inreach_search``. Both
are re-exported here so the estimator imports everything from ``generalad.methods.inreach.channels``.

Indexing convention: every per-patch array is indexed by the ORIGINAL image index (position in ``X``),
never by rank in the seed order; ``order`` maps rank → image index. A channel member is stored at its own
location (j, p) and keyed by the seed patch it matched (s, q). The official code swaps the two indices
(docs/methods/inreach.md §5) — deliberately not reproduced; ``tests/methods/inreach/test_channels.py`` checks it   [also fixes the stale test path] on permuted images.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from generalad.errors import ConfigError
from generalad.methods.inreach.layout import (  # re-exported API, see __all__
    LayoutDecision,
    append_positional,
    best_rotation,
    layout_decision,
    positional_channels,
    rotate_images,
    rotate_masks,
    transpose_score,
)
from generalad.methods.inreach.search import (  # re-exported API, see __all__
    NearestBank,
    nearest_distances,
    patch_labels_from_masks,
    precision_recall_of_bank,
)

__all__ = [
    # core
    "InReaChConfig", "select_seeds", "order_with_seeds", "Association", "associate", "Channels",
    "build_channels", "span_filter", "sigma_filter", "SigmaResult", "FilterResult", "filter_channels",
    "bank_indices", "gather_bank", "image_nominal_fraction", "image_statistics", "IMAGE_STAT_DOC",
    "InReaChResult", "build_bank",
    # layout (inreach_layout)
    "transpose_score", "best_rotation", "rotate_images", "rotate_masks", "positional_channels",
    "append_positional", "layout_decision", "LayoutDecision",
    # 1-NN and diagnostics (inreach_search)
    "NearestBank", "nearest_distances", "patch_labels_from_masks", "precision_recall_of_bank",
]

log = logging.getLogger(__name__)

SIGMA_RULES = ("spherical", "centered")
PRECISIONS = ("fp32", "bf16")


@dataclass
class InReaChConfig:
    """Knobs of the channel construction and layout test (defaults = the [S]/[C] choices of docs/methods/inreach.md).

    num_seeds: seed images S ([C]: 10).
    all_pairs_below: when N <= this, every image is a seed (all-pairs association, docs/methods/inreach.md §10); 0 disables.
    seed: RNG seed for picking the seed images ([D]; [C] takes the first files of a directory listing).
    min_channel_len: span filter keeps channels with MORE than this many entries (seed included).
    sigma_k: σ filter multiplier k.
    sigma_rule: "spherical" ([C]: keep d_i < k·σ) or "centered" (keep |d_i − mean d| < k·σ).
    block_mb: memory budget of one distance block (B images × P × P fp32); bounds association memory.
    precision: "fp32" or "bf16" (bf16 operands for the distance matmul, fp32 accumulation).
    transpose_threshold: T ≥ threshold → consistent layout → positional channels ([S] 600, [C] 1000).
    pos_weight: scale w of the positional channels (col, row)·w/grid_w.
    align: try rotational alignment when the transpose test fails ([S]; [C]'s entry point: False).
    """

    num_seeds: int = 10
    all_pairs_below: int = 30
    seed: int = 0
    min_channel_len: int = 3
    sigma_k: float = 5.0
    sigma_rule: str = "spherical"
    block_mb: float = 64.0
    precision: str = "fp32"
    transpose_threshold: float = 600.0
    pos_weight: float = 5.0
    align: bool = True

    def __post_init__(self) -> None:
        if self.num_seeds < 1:
            raise ConfigError(f"InReaCh num_seeds must be >= 1, got {self.num_seeds}")
        if self.all_pairs_below < 0:
            raise ConfigError(f"InReaCh all_pairs_below must be >= 0, got {self.all_pairs_below}")
        if self.min_channel_len < 0:
            raise ConfigError(f"InReaCh min_channel_len must be >= 0, got {self.min_channel_len}")
        if not self.sigma_k > 0:
            raise ConfigError(f"InReaCh sigma_k must be > 0, got {self.sigma_k}")
        if self.sigma_rule not in SIGMA_RULES:
            raise ConfigError(f"InReaCh sigma_rule must be one of {SIGMA_RULES}, got {self.sigma_rule!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"InReaCh precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not self.block_mb > 0:
            raise ConfigError(f"InReaCh block_mb must be > 0, got {self.block_mb}")

    def seeds_for(self, n_images: int) -> int:
        """Number of seeds actually used for ``n_images`` (all-pairs rule, never more than N)."""
        if n_images <= self.all_pairs_below:
            return n_images
        return min(self.num_seeds, n_images)


# --------------------------------------------------------------------------------------------- seeds
def order_with_seeds(n_images: int, seeds: Sequence[int]) -> np.ndarray:
    """Permutation of range(n_images): the given seeds (in the given order), then the rest ascending."""
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    if seeds.size == 0 or seeds.min() < 0 or seeds.max() >= n_images or np.unique(seeds).size != seeds.size:
        raise ConfigError(f"InReaCh seeds must be distinct image indices in [0, {n_images}), got {seeds.tolist()}")
    rest = np.setdiff1d(np.arange(n_images, dtype=np.int64), seeds)
    return np.concatenate([seeds, rest])


def select_seeds(n_images: int, num_seeds: int, seed: int = 0) -> np.ndarray:
    """Seeded random choice of ``num_seeds`` seed images; returns the order (seeds first, ascending).

    ``num_seeds >= n_images`` gives the identity order (all-pairs: every image is a seed).
    """
    if n_images < 1:
        raise ConfigError("InReaCh needs at least one training image")
    if num_seeds >= n_images:
        return np.arange(n_images, dtype=np.int64)
    rng = np.random.default_rng(seed)
    seeds = np.sort(rng.choice(n_images, size=num_seeds, replace=False))
    return order_with_seeds(n_images, seeds)


# ---------------------------------------------------------------------------------------- association
@dataclass
class Association:
    """Result of the seed association (docs/methods/inreach.md §5, steps 2–3). Per-patch arrays are (N, P), by original image index.

    seed_rank: rank (position in ``order``) of the best seed of (j, p) = the seed with the smallest d
        among seeds earlier in the order; −1 for image order[0], which has no earlier seed.
    match: seed patch q nearest to (j, p) in that best seed (−1 where none).
    dist2: squared L2 from X[j, p] to X[best seed, q] (inf where none).
    mutual: whether (q, p) is a mutual nearest-neighbour pair for that best seed (only then (j, p) joins
        the channel (s, q); a mutual match with a worse seed is not used).
    n_mutual: number of earlier seeds with which (j, p) is a mutual NN (any seed, not only the best).
    n_pairs: (seed, image) pairs compared = S·N − S(S+1)/2 — linear in N for fixed S.
    """

    order: torch.Tensor
    num_seeds: int
    seed_rank: torch.Tensor
    match: torch.Tensor
    dist2: torch.Tensor
    mutual: torch.Tensor
    n_mutual: torch.Tensor
    n_pairs: int

    @property
    def n_images(self) -> int:
        return int(self.seed_rank.shape[0])

    @property
    def n_patches(self) -> int:
        return int(self.seed_rank.shape[1])

    @property
    def rank(self) -> torch.Tensor:
        """(N,) position of each image in ``order``."""
        rank = torch.empty_like(self.order)
        rank[self.order] = torch.arange(self.order.numel())
        return rank

    @property
    def seeds(self) -> torch.Tensor:
        """(S,) image indices of the seeds, in seed-rank order."""
        return self.order[: self.num_seeds]

    @property
    def best_seed(self) -> torch.Tensor:
        """(N, P) image index of the best seed (−1 where none)."""
        out = torch.full_like(self.seed_rank, -1)
        has = self.seed_rank >= 0
        out[has] = self.order[self.seed_rank[has]]
        return out

    @property
    def n_compared(self) -> torch.Tensor:
        """(N,) number of seeds each image was compared with: min(rank, S)."""
        return self.rank.clamp(max=self.num_seeds)


def _as_features(X: torch.Tensor | np.ndarray) -> torch.Tensor:
    X = torch.as_tensor(X)
    if X.ndim != 3 or not X.is_floating_point():
        raise ConfigError(f"InReaCh descriptors must be a float (N, P, D) array, got {tuple(X.shape)} {X.dtype}")
    return X


def _split_bf16(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 → (hi, lo) bf16 pair with hi + lo ≈ v to ~16 mantissa bits."""
    hi = v.to(torch.bfloat16)
    return hi, (v - hi.float()).to(torch.bfloat16)


def _augment(x: torch.Tensor, side: str, bf16: bool) -> torch.Tensor:
    """(..., P, D) fp32 → (..., P, D + k) operands whose product IS the squared-distance block.

    Rows ("image"): [x, ‖x‖², 1]; columns ("seed"): [−2·y, 1, ‖y‖²], so x̃·ỹ = ‖x‖² + ‖y‖² − 2x·y
    comes out of one GEMM, with no extra passes over the (P, P) block for the two broadcast adds.
    bf16: x_r = bf16(x) and the norms are those of the ROUNDED vectors, split into hi + lo bf16 columns
    (k = 4). The kernel accumulates in fp32, so the large terms cancel in fp32 and only the small
    result is rounded to bf16 (CPU torch has no bf16 matmul with fp32 output); being the exact distance
    between the rounded vectors, its error near the nearest neighbour is close to fp32's, while far
    pairs carry ~0.4 % relative error, which cannot move an argmin.
    """
    if not bf16:
        sq = (x * x).sum(-1, keepdim=True)
        one = torch.ones_like(sq)
        return torch.cat([x, sq, one] if side == "image" else [x * -2, one, sq], dim=-1)
    xr = x.to(torch.bfloat16)
    hi, lo = _split_bf16((xr.float() ** 2).sum(-1, keepdim=True))
    one = torch.ones_like(hi)
    if side == "image":
        return torch.cat([xr, hi, lo, one, one], dim=-1)
    return torch.cat([xr * -2, one, one, hi, lo], dim=-1)  # ×−2 is exact in bf16


def _matmul_fp32_out(x: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """x (B, P, K) @ y_t (K, Q) → fp32 (B, P, Q); bf16 operands accumulate in fp32 in the kernel."""
    if x.dtype != torch.bfloat16:
        return torch.matmul(x, y_t)
    if x.is_cuda:
        try:  # fp32 output, no final rounding (torch ≥ 2.8 on CUDA)
            flat = torch.mm(x.reshape(-1, x.shape[-1]), y_t, out_dtype=torch.float32)
            return flat.view(x.shape[0], x.shape[1], -1)
        except (TypeError, RuntimeError):
            pass
    return torch.matmul(x, y_t).float()


def associate(
    X: torch.Tensor | np.ndarray,
    order: Sequence[int] | np.ndarray | torch.Tensor,
    num_seeds: int,
    *,
    precision: str = "fp32",
    block_mb: float = 64.0,
    progress: Callable[[int, int], None] | None = None,
) -> Association:
    """Mutual-NN association of every image with every earlier seed in ``order`` (docs/methods/inreach.md §5).

    For seed rank r_s and each image at rank r > r_s: squared distances ‖a‖²+‖b‖²−2ab between all P
    patches of the image and all P seed patches, argmin both ways, mutual when the indices agree. Images
    are processed in blocks of B = block_mb / (P²·4 B) images (P²·6 B in bf16), so working memory is
    about block_mb plus the block's descriptors plus O(N·P) outputs, and work is S·N − S(S+1)/2 image
    pairs: linear in N. Runs on ``X.device``; results are returned on CPU. ``X`` may be fp16/bf16/fp32
    (store it in half precision to halve its memory); blocks are converted on the fly.
    ``progress(pairs_done, pairs_total)`` is called after every block and seed (for a progress bar).
    """
    X = _as_features(X)
    if precision not in PRECISIONS:
        raise ConfigError(f"InReaCh precision must be one of {PRECISIONS}, got {precision!r}")
    n, p, d = X.shape
    dev = X.device
    order_t = torch.as_tensor(np.asarray(order), dtype=torch.long).to(dev)
    if order_t.numel() != n or not torch.equal(order_t.sort().values, torch.arange(n, device=dev)):
        raise ConfigError(f"InReaCh order must be a permutation of range({n})")
    s_count = int(num_seeds)
    if not 1 <= s_count <= n:
        raise ConfigError(f"InReaCh num_seeds must be in [1, {n}], got {num_seeds}")
    bf16 = precision == "bf16"

    # Distances are translation invariant; centring on the seeds' mean patch shrinks ‖a‖², ‖b‖² and ab
    # (ReLU features have a large common offset), so the expanded formula ‖a‖²+‖b‖²−2ab cancels less.
    center = X[order_t[:s_count]].float().reshape(-1, d).mean(0)
    seeds = X[order_t[:s_count]].float() - center  # (S, P, D): small, kept resident
    seeds_t = _augment(seeds, "seed", bf16).transpose(1, 2).contiguous()  # (S, D + k, P)
    del seeds

    # Outputs in RANK space (row r = image order[r]); permuted to image space at the end.
    seed_rank = torch.full((n, p), -1, dtype=torch.long, device=dev)
    match = torch.full((n, p), -1, dtype=torch.long, device=dev)
    dist2 = torch.full((n, p), math.inf, dtype=torch.float32, device=dev)
    mutual = torch.zeros((n, p), dtype=torch.bool, device=dev)
    n_mutual = torch.zeros((n, p), dtype=torch.int32, device=dev)
    arange_p = torch.arange(p, device=dev)

    # One fp32 (P, P) distance block per image (+ its bf16 original in bf16 mode on CPU).
    per_image = p * p * (6 if bf16 else 4)
    block = max(1, int(block_mb * 2**20 // per_image))
    n_pairs = 0
    total_pairs = s_count * n - s_count * (s_count + 1) // 2
    for r0 in range(1, n, block):  # rank 0 has no earlier seed
        r1 = min(n, r0 + block)
        xb = X[order_t[r0:r1]].float()  # (B, P, D); tensor indexing copies, so in-place is safe
        xb = _augment(xb.sub_(center), "image", bf16)
        for s in range(min(s_count, r1 - 1)):  # seeds earlier than at least one image of the block
            lo = max(r0, s + 1) - r0  # first image of the block ranked after seed s
            d2 = _matmul_fp32_out(xb[lo:], seeds_t[s])  # (b, P_img, P_seed) squared distances
            dmin, q = d2.min(dim=2)  # nearest seed patch of every image patch
            p_back = d2.min(dim=1).indices  # nearest image patch of every seed patch (faster than argmin)
            mut = p_back.gather(1, q) == arange_p  # q's nearest is p again → mutual
            del d2  # free the block before the next matmul allocates its successor (peak = 1 block)
            dmin.clamp_(min=0.0)  # rounding can make ‖a−b‖² slightly negative
            rows = slice(r0 + lo, r1)
            better = dmin < dist2[rows]  # strict: ties keep the earlier seed
            dist2[rows] = torch.where(better, dmin, dist2[rows])
            match[rows] = torch.where(better, q, match[rows])
            mutual[rows] = torch.where(better, mut, mutual[rows])
            seed_rank[rows] = torch.where(better, torch.full_like(q, s), seed_rank[rows])
            n_mutual[rows] += mut.to(torch.int32)
            n_pairs += r1 - (r0 + lo)
            if progress is not None:
                progress(n_pairs, total_pairs)

    def to_images(t: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(t)
        out[order_t] = t
        return out.cpu()

    return Association(
        order=order_t.cpu(),
        num_seeds=s_count,
        seed_rank=to_images(seed_rank),
        match=to_images(match),
        dist2=to_images(dist2),
        mutual=to_images(mutual),
        n_mutual=to_images(n_mutual),
        n_pairs=n_pairs,
    )


# ------------------------------------------------------------------------------------------- channels
@dataclass
class Channels:
    """Channels as a flat list of entries (docs/methods/inreach.md §5, step 4); a patch can be an entry twice (see below).

    Channel id c = seed_rank·P + q, key ``keys[c]`` = (seed image, seed patch q); C = S·P channels, every
    seed patch owns one (most have no members and die in the span filter).
    Entries: every seed patch in its own channel (``entry_is_seed``) plus every mutual member (j, p) at
    its own location in the channel of its best seed. A seed image other than order[0] is also associated
    with earlier seeds, so one of its patches can be the seed of its own channel AND a member of an
    earlier one — two entries, one vector; ``bank_indices`` de-duplicates.
    member_channel: (N, P) channel joined as a member, −1 = none (seed roles are implied by ``keys``).
    """

    keys: torch.Tensor
    entry_image: torch.Tensor
    entry_patch: torch.Tensor
    entry_channel: torch.Tensor
    entry_is_seed: torch.Tensor
    member_channel: torch.Tensor

    @property
    def n_channels(self) -> int:
        return int(self.keys.shape[0])

    @property
    def n_entries(self) -> int:
        return int(self.entry_channel.numel())

    def sizes(self, alive: torch.Tensor | None = None) -> torch.Tensor:
        """(C,) entries per channel (seed included), counting only ``alive`` entries when given."""
        ch = self.entry_channel if alive is None else self.entry_channel[alive]
        return torch.bincount(ch, minlength=self.n_channels)


def build_channels(assoc: Association) -> Channels:
    """Group mutual members by channel key (s, q) with array ops (no per-patch loops)."""
    s_count, p = assoc.num_seeds, assoc.n_patches
    joined = assoc.mutual & (assoc.seed_rank >= 0)
    member_channel = torch.where(joined, assoc.seed_rank * p + assoc.match, torch.full_like(assoc.match, -1))

    c = torch.arange(s_count * p)
    keys = torch.stack([assoc.order[c // p], c % p], dim=1)
    mem_img, mem_patch = joined.nonzero(as_tuple=True)
    return Channels(
        keys=keys,
        entry_image=torch.cat([keys[:, 0], mem_img]),
        entry_patch=torch.cat([keys[:, 1], mem_patch]),
        entry_channel=torch.cat([c, member_channel[mem_img, mem_patch]]),
        entry_is_seed=torch.cat([torch.ones(s_count * p, dtype=torch.bool), torch.zeros(mem_img.numel(), dtype=torch.bool)]),
        member_channel=member_channel,
    )


# -------------------------------------------------------------------------------------------- filters
def span_filter(entry_channel: torch.Tensor, alive: torch.Tensor, n_channels: int, min_len: int) -> torch.Tensor:
    """Keep entries of channels with MORE than ``min_len`` alive entries (seed included)."""
    sizes = torch.bincount(entry_channel[alive], minlength=n_channels)
    return alive & (sizes > min_len)[entry_channel]


@dataclass
class SigmaResult:
    """σ-filter outcome. dist: (E,) d_i = ‖x_i − μ_c‖ for entries that entered the filter, NaN otherwise.
    mean_dist, sigma: (C,) per-channel mean and population std of d_i (NaN for channels not evaluated)."""

    alive: torch.Tensor
    dist: torch.Tensor
    mean_dist: torch.Tensor
    sigma: torch.Tensor


def _segment_mean(values: torch.Tensor, seg: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (E,) or (E, D) per segment id ``seg`` (E,), counts (K,) > 0."""
    out = torch.zeros((counts.numel(),) + tuple(values.shape[1:]), dtype=values.dtype)
    out.index_add_(0, seg, values)
    return out / counts.view(-1, *([1] * (values.ndim - 1))).to(values.dtype)


def sigma_filter(
    X: torch.Tensor | np.ndarray,
    entry_image: torch.Tensor,
    entry_patch: torch.Tensor,
    entry_channel: torch.Tensor,
    alive: torch.Tensor,
    n_channels: int,
    *,
    k: float = 5.0,
    rule: str = "spherical",
    chunk: int = 65536,
) -> SigmaResult:
    """σ filter over all channels at once (docs/methods/inreach.md §6), with segment sums (index_add) instead of loops.

    μ_c = mean of the channel's alive vectors; d_i = ‖x_i − μ_c‖; σ_c = population std of the d_i.
    "spherical" ([C]) keeps d_i < k·σ_c — with isotropic high-dimensional members the d_i concentrate and
    every member fails; "centered" keeps |d_i − mean d| < k·σ_c. [D] numerical floor: a tolerance of
    1e-6·(1 + ‖μ_c‖) is added to k·σ_c so a channel of (numerically) identical members (σ = 0, d = 0) is
    not killed by 0 < 0. Entries are gathered ``chunk`` at a time, so memory is O(chunk·D + C_alive·D).
    """
    if rule not in SIGMA_RULES:
        raise ConfigError(f"InReaCh sigma_rule must be one of {SIGMA_RULES}, got {rule!r}")
    X = _as_features(X)
    n_e = entry_channel.numel()
    dist = torch.full((n_e,), math.nan)
    mean_dist = torch.full((n_channels,), math.nan)
    sigma = torch.full((n_channels,), math.nan)
    idx = alive.nonzero(as_tuple=True)[0]
    if idx.numel() == 0:
        return SigmaResult(alive.clone(), dist, mean_dist, sigma)

    # Compact ids of the channels still alive: sums are (C_alive, D), not (C, D).
    live_ch, seg = torch.unique(entry_channel[idx], return_inverse=True)
    counts = torch.bincount(seg, minlength=live_ch.numel())

    def vectors(sl: slice) -> torch.Tensor:
        e = idx[sl]
        return X[entry_image[e].to(X.device), entry_patch[e].to(X.device)].float().cpu()

    sums = torch.zeros((live_ch.numel(), X.shape[2]), dtype=torch.float64)
    for a in range(0, idx.numel(), chunk):  # pass 1: channel means
        sl = slice(a, a + chunk)
        sums.index_add_(0, seg[sl], vectors(sl).double())
    mu = (sums / counts[:, None]).float()

    d = torch.empty(idx.numel())
    for a in range(0, idx.numel(), chunk):  # pass 2: distances to the channel mean (direct, no expansion)
        sl = slice(a, a + chunk)
        d[sl] = (vectors(sl) - mu[seg[sl]]).norm(dim=1)

    md = _segment_mean(d.double(), seg, counts)
    sd = _segment_mean((d.double() - md[seg]) ** 2, seg, counts).sqrt()
    tol = 1e-6 * (1.0 + mu.double().norm(dim=1))
    limit = (k * sd + tol)[seg]
    stat = d.double() if rule == "spherical" else (d.double() - md[seg]).abs()
    keep = stat < limit

    new_alive = alive.clone()
    new_alive[idx] = keep
    dist[idx] = d
    mean_dist[live_ch] = md.float()
    sigma[live_ch] = sd.float()
    return SigmaResult(new_alive, dist, mean_dist, sigma)


@dataclass
class FilterResult:
    """Outcome of span → σ → span. alive: (E,) surviving entries; stats: counts and kept fractions."""

    alive: torch.Tensor
    after_span1: torch.Tensor
    sigma: SigmaResult
    stats: dict[str, float] = field(default_factory=dict)


def _frac(a: int, b: int) -> float:
    return float(a) / b if b else math.nan


def filter_channels(
    X: torch.Tensor | np.ndarray, channels: Channels, config: InReaChConfig | None = None
) -> FilterResult:
    """Span filter, σ filter, span filter again (docs/methods/inreach.md §6); logs and returns the fraction each one keeps.

    stats keys: channels, channels_with_members, entries; entries_/channels_ after_span1 / after_sigma /
    after_span2; keep_span1, keep_sigma, keep_span2 (entry fraction each filter keeps of its input) and
    keep_total (surviving entries / all entries).
    """
    cfg = config or InReaChConfig()
    c, ch = channels.n_channels, channels.entry_channel
    alive0 = torch.ones(channels.n_entries, dtype=torch.bool)
    a1 = span_filter(ch, alive0, c, cfg.min_channel_len)
    sig = sigma_filter(
        X, channels.entry_image, channels.entry_patch, ch, a1, c, k=cfg.sigma_k, rule=cfg.sigma_rule
    )
    a3 = span_filter(ch, sig.alive, c, cfg.min_channel_len)

    def n_ch(alive: torch.Tensor) -> int:
        return int((torch.bincount(ch[alive], minlength=c) > 0).sum())

    e0, e1, e2, e3 = channels.n_entries, int(a1.sum()), int(sig.alive.sum()), int(a3.sum())
    stats = {
        "channels": float(c),
        "channels_with_members": float((channels.sizes() > 1).sum()),
        "entries": float(e0),
        "entries_after_span1": float(e1),
        "entries_after_sigma": float(e2),
        "entries_after_span2": float(e3),
        "channels_after_span1": float(n_ch(a1)),
        "channels_after_sigma": float(n_ch(sig.alive)),
        "channels_after_span2": float(n_ch(a3)),
        "keep_span1": _frac(e1, e0),
        "keep_sigma": _frac(e2, e1),
        "keep_span2": _frac(e3, e2),
        "keep_total": _frac(e3, e0),
    }
    log.info(
        "InReaCh filters: span keeps %.3f, sigma(%s, k=%g) keeps %.3f, span keeps %.3f of entries; "
        "%d of %d channels survive",
        stats["keep_span1"], cfg.sigma_rule, cfg.sigma_k, stats["keep_sigma"], stats["keep_span2"],
        int(stats["channels_after_span2"]), c,
    )
    return FilterResult(alive=a3, after_span1=a1, sigma=sig, stats=stats)


# ----------------------------------------------------------------------------------------------- bank
def bank_indices(channels: Channels, alive: torch.Tensor) -> torch.Tensor:
    """(M, 2) int64 unique (image, patch) pairs of surviving entries, sorted by image then patch."""
    p = int(channels.member_channel.shape[1])
    flat = torch.unique(channels.entry_image[alive] * p + channels.entry_patch[alive])
    return torch.stack([flat // p, flat % p], dim=1)


def gather_bank(X: torch.Tensor | np.ndarray, bank_ids: torch.Tensor) -> torch.Tensor:
    """(M, D) fp32 bank vectors X[image, patch] (on CPU)."""
    X = _as_features(X)
    ids = bank_ids.to(X.device)
    return X[ids[:, 0], ids[:, 1]].float().cpu()


def image_nominal_fraction(bank_ids: torch.Tensor, n_images: int, n_patches: int) -> np.ndarray:
    """(N,) fraction of each training image's patches that are in the bank (any role)."""
    counts = torch.bincount(bank_ids[:, 0], minlength=n_images)
    return (counts.double() / n_patches).numpy()


IMAGE_STAT_DOC = {
    # name: (direction, meaning)
    "nominal_fraction": ("high = nominal", "fraction of the image's patches in the bank (seed or member role)"),
    "member_fraction": ("high = nominal", "fraction of patches that are surviving members of earlier seeds' channels; NaN for order[0]"),
    "mnn_fraction": ("high = nominal", "fraction of patches mutual with their best seed (before filters); NaN for order[0]"),
    "any_mnn_fraction": ("high = nominal", "mean over patches of (#seeds with a mutual match / #seeds compared); NaN for order[0]"),
    "nn_dist_mean": ("high = anomalous", "mean over patches of the distance (not squared) to the nearest earlier-seed patch; NaN for order[0]"),
    "nn_dist_max": ("high = anomalous", "max over patches of that distance (a PatchCore-like image score vs the seeds); NaN for order[0]"),
    "channel_dist_mean": ("high = anomalous", "mean d_i = ‖x_i − μ_c‖ over the image's entries that reached the σ filter; NaN if none"),
    "channel_z_mean": ("high = anomalous", "mean (d_i − mean d_c)/σ_c over those entries (position inside its channels); NaN if none"),
    "sigma_reject_fraction": ("high = anomalous", "fraction of those entries the σ filter rejected; NaN if none"),
}


def _per_image_mean(values: torch.Tensor, image: torch.Tensor, n_images: int) -> np.ndarray:
    """Mean of ``values`` (E,) per image id (E,); NaN where an image has no values."""
    counts = torch.bincount(image, minlength=n_images).double()
    sums = torch.zeros(n_images, dtype=torch.float64).index_add_(0, image, values.double())
    out = sums / counts
    out[counts == 0] = math.nan
    return out.numpy()


def image_statistics(assoc: Association, channels: Channels, filt: FilterResult) -> dict[str, np.ndarray]:
    """Per-training-image statistics for ranking contaminated images; see ``IMAGE_STAT_DOC``.

    All are (N,) float64 by original image index. Images compared with no seed (order[0]) get NaN for
    the association-based ones; the seed images are compared with fewer seeds than the others
    (min(rank, S)), which ``any_mnn_fraction`` normalises for and the others do not.
    """
    n, p = assoc.n_images, assoc.n_patches
    none = (assoc.seed_rank < 0).all(dim=1)  # only order[0]
    bank_ids = bank_indices(channels, filt.alive)

    member_alive = filt.alive & ~channels.entry_is_seed
    member_count = torch.bincount(channels.entry_image[member_alive], minlength=n).double()
    dist = assoc.dist2.clamp(min=0).sqrt().masked_fill(assoc.seed_rank < 0, math.nan)
    n_cmp = assoc.n_compared.double().clamp(min=1)

    stats = {
        "nominal_fraction": image_nominal_fraction(bank_ids, n, p),
        "member_fraction": (member_count / p).numpy(),
        "mnn_fraction": assoc.mutual.double().mean(dim=1).numpy(),
        "any_mnn_fraction": (assoc.n_mutual.double().mean(dim=1) / n_cmp).numpy(),
        "nn_dist_mean": dist.double().mean(dim=1).numpy(),
        "nn_dist_max": dist.double().amax(dim=1).numpy(),
    }
    for key in ("member_fraction", "mnn_fraction", "any_mnn_fraction", "nn_dist_mean", "nn_dist_max"):
        stats[key][none.numpy()] = math.nan

    entered = filt.after_span1  # entries that reached the σ filter
    sig = filt.sigma
    img = channels.entry_image[entered]
    d = sig.dist[entered]
    ch = channels.entry_channel[entered]
    sd = sig.sigma[ch]
    z = torch.where(sd > 0, (d - sig.mean_dist[ch]) / sd, torch.zeros_like(d))
    stats["channel_dist_mean"] = _per_image_mean(d, img, n)
    stats["channel_z_mean"] = _per_image_mean(z, img, n)
    stats["sigma_reject_fraction"] = _per_image_mean((~sig.alive[entered]).double(), img, n)
    return stats


# ------------------------------------------------------------------------------------------- pipeline
@dataclass
class InReaChResult:
    """Everything ``build_bank`` computed. bank_ids: (M, 2) (image, patch) of the nominal bank."""

    bank_ids: torch.Tensor
    association: Association
    channels: Channels
    filtering: FilterResult
    image_stats: dict[str, np.ndarray]

    @property
    def stats(self) -> dict[str, float]:
        return self.filtering.stats


def build_bank(
    X: torch.Tensor | np.ndarray,
    config: InReaChConfig | None = None,
    *,
    seeds: Sequence[int] | None = None,
) -> InReaChResult:
    """Seeds → association → channels → filters → bank ids and per-image statistics.

    ``seeds`` (optional) fixes the seed images (in that order) instead of the seeded random choice.
    Gather the vectors with ``gather_bank(X, result.bank_ids)``.
    """
    cfg = config or InReaChConfig()
    X = _as_features(X)
    n = X.shape[0]
    if seeds is not None:
        order, s_count = order_with_seeds(n, seeds), len(seeds)
    else:
        s_count = cfg.seeds_for(n)
        order = select_seeds(n, s_count, cfg.seed)
    assoc = associate(X, order, s_count, precision=cfg.precision, block_mb=cfg.block_mb)
    chans = build_channels(assoc)
    filt = filter_channels(X, chans, cfg)
    bank_ids = bank_indices(chans, filt.alive)
    filt.stats["bank_size"] = float(bank_ids.shape[0])
    filt.stats["bank_fraction"] = bank_ids.shape[0] / float(n * X.shape[1])
    if bank_ids.shape[0] == 0:  # e.g. N ≤ min_channel_len: no channel can be long enough
        log.warning("InReaCh: no channel survived the filters (%d images, min_channel_len=%d)", n, cfg.min_channel_len)
    return InReaChResult(bank_ids, assoc, chans, filt, image_statistics(assoc, chans, filt))
