"""Generator training: self-supervised pairs → hinge GAN + L1 + perceptual + fusion sparsity (docs §3).

``train_generator(stack, cfg, ...)`` trains a ``HybridGenerator`` and one ``PatchDiscriminator`` per
decoder on ``stack`` (N, 5, S, S) = RGB ⊕ depth ⊕ edges in [0, 1]. Per step, for each decoder k:

* D: ``relu(1 − D_k(gt, t_k)) + relu(1 + D_k(A_out, t_k))`` (hinge), t_k the target map of that decoder;
* G: ``λ_gan·(−D_k(A_out, t_k)) + λ_l1·(|A_out − gt| + |A_gen − gt|) + λ_perc·P(A_out, gt)
  + λ_mask·BCE(M, changed) + λ_fusion·mean(M)``; P = the LPIPS-like distance on the frozen perceptual
  network (EfficientNet-Lite0 blocks 1/2/4 by default). The ``|A_gen − gt|`` and ``BCE(M, changed)`` terms
  are ours (docs §3): without them M collapsed to 0 on the CPU budget (A_gen gets no gradient where M = 0).

Two Adam optimisers (β = (0.5, 0.999)), lr linearly decayed to 0 over the steps ([SH]). Seeded: the global
RNG (init) inside ``fork_rng`` and one CPU generator for data order and augmentations → same seed, same
weights. ``history`` holds the loss terms every ``log_every`` steps and the mean fusion value inside /
outside the warped region — the training-data signal that M localises what changed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from generalad import distributed
from generalad.device import autocast
from generalad.methods.anomalyhybrid.augment import PairConfig, make_pairs
from generalad.methods.anomalyhybrid.generator import STRUCTURE_CHANNEL, HybridGenerator, PatchDiscriminator

PERCEPTUAL_LAYERS = ("blocks.1", "blocks.2", "blocks.4")


class Perceptual(nn.Module):
    """LPIPS-like distance without learned weights: Σ_l mean_xy ‖φ̂_l(a) − φ̂_l(b)‖², φ̂ = channel-unit-normalised
    stage outputs of a frozen CNN (inputs in [0, 1], ImageNet-normalised here). Per image: ``distance``."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1))

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [F.normalize(f, dim=1) for f in self.backbone((x - self.mean) / self.std).maps]

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B,) distances; gradients flow into ``a`` only."""
        fa = self.features(a)
        with torch.no_grad():
            fb = self.features(b)
        return sum(((x - y) ** 2).sum(1).flatten(1).mean(1) for x, y in zip(fa, fb))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.distance(a, b).mean()


def perceptual_network(name: str, weights: str | None) -> Perceptual:
    from generalad.backbones import create_backbone

    return Perceptual(create_backbone(name, weights=weights, layers=list(PERCEPTUAL_LAYERS)))


def _balanced_bce(fusion: torch.Tensor, changed: torch.Tensor, fraction: torch.Tensor | None = None) -> torch.Tensor:
    """BCE(M, changed) with the changed pixels weighted (1 − f) / f (f = their fraction in the batch, weight ≤ 20):
    changes cover a few % of a pair, and an unweighted loss is minimised by M ≈ 0 everywhere. ``fraction``: f
    of the global batch when these are one rank's rows of it (docs/SCALE.md §9)."""
    f = (changed.mean() if fraction is None else fraction).clamp(1e-3, 1 - 1e-3)
    weight = 1 + changed * ((1 - f) / f).clamp(max=20.0) - changed
    return F.binary_cross_entropy(fusion.clamp(1e-6, 1 - 1e-6), changed, weight=weight)


def _split(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return batch[:, :3], batch[:, 3:]


def train_generator(
    stack: torch.Tensor,
    *,
    widths: Sequence[int],
    decoders: Sequence[str],
    steps: int,
    batch_size: int,
    lr: float,
    lambdas: dict[str, float],
    perceptual: Perceptual | None,
    seed: int = 0,
    pair_config: PairConfig = PairConfig(),
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    log_every: int = 50,
    progress: bool = False,
) -> tuple[HybridGenerator, list[dict[str, Any]]]:
    """Train on ``stack`` (N, 5, S, S) float in [0, 1]; returns (generator in eval mode, history)."""
    device = torch.device(device)
    n = stack.shape[0]
    batch = min(batch_size, n)
    history: list[dict[str, Any]] = []
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        gen = HybridGenerator(widths, decoders).to(device)
        discs = nn.ModuleDict({k: PatchDiscriminator() for k in decoders}).to(device)
        rng = torch.Generator().manual_seed(seed)
        opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(discs.parameters(), lr=lr, betas=(0.5, 0.999))
        decay = lambda s: max(0.0, 1.0 - s / steps)  # noqa: E731 — linear decay to 0 ([SH])
        scheds = [torch.optim.lr_scheduler.LambdaLR(o, decay) for o in (opt_g, opt_d)]
        perceptual = perceptual.to(device) if perceptual is not None else None
        sums: dict[str, float] = {}
        start, order, pos = time.perf_counter(), torch.randperm(n, generator=rng), 0
        bar = tqdm(range(steps), desc="generator", unit="step", disable=None if progress else True)
        group = distributed.parallel()
        if group is not None:  # rank 0's initial weights (equal anyway: same seed)
            distributed.broadcast_module(gen, group)
            distributed.broadcast_module(discs, group)
        gen.train()
        for step in bar:
            if pos + batch > n:
                order, pos = torch.randperm(n, generator=rng), 0
            idx, pos = order[pos : pos + batch], pos + batch
            # the whole global batch's pairs on every rank (same augmentation draws as one process), then the rows
            pairs = make_pairs(stack[idx].float(), rng, pair_config)
            shard = distributed.shard_batch(idx)
            terms = _step(gen, discs, opt_g, opt_d, pairs, decoders, lambdas, perceptual, device, precision,
                          shard=None if shard.whole else shard)
            for s in scheds:
                s.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            if (step + 1) % log_every == 0 or step + 1 == steps:
                if group is not None:  # the logged terms: sums of the ranks' shares = the global ones
                    sums = _summed_over_ranks(sums, group)
                count = (step % log_every) + 1
                history.append({"step": step + 1, **{k: round(v / count, 5) for k, v in sums.items()},
                                "seconds": round(time.perf_counter() - start, 2)})
                bar.set_postfix(g=f"{history[-1]['g_total']:.3f}", m_in=f"{history[-1]['fusion_in']:.2f}")
                sums = {}
        bar.close()
    gen.eval()
    return gen, history


def _summed_over_ranks(sums: dict[str, float], group) -> dict[str, float]:
    values = torch.tensor([sums[k] for k in sorted(sums)], dtype=torch.float64)
    distributed.all_reduce_sum_([values], group)
    return dict(zip(sorted(sums), values.tolist()))


def _step(gen, discs, opt_g, opt_d, pairs, decoders, lambdas, perceptual, device, precision,
          shard: distributed.BatchShard | None = None) -> dict[str, float]:
    """One D and one G update on ``pairs``. ``shard`` (a torchrun rank, docs/SCALE.md §9): ``pairs`` is the whole
    global batch; this rank computes its rows, every loss and term is its additive share of the global one,
    and gradients are summed over ranks before each optimiser step."""
    changed_all = pairs["changed"].to(device)
    scale, fraction = 1.0, None
    inside = changed_all.sum().clamp_min(1)
    outside = (1 - changed_all).sum().clamp_min(1)
    if shard is not None:
        scale, fraction = shard.fraction, changed_all.mean()
        pairs = {k: shard.take(v) for k, v in pairs.items() if k in ("reference", "target", "changed")}
    group = distributed.parallel() if shard is not None else None
    ref_rgb, ref_struct = _split(pairs["reference"].to(device))
    gt, tgt_struct = _split(pairs["target"].to(device))
    changed = pairs["changed"].to(device)
    with autocast(device, precision):
        out = gen(ref_rgb, ref_struct, tgt_struct, decoders)
    # discriminators
    opt_d.zero_grad(set_to_none=True)
    d_loss = torch.zeros((), device=device)
    for k in decoders:
        t = tgt_struct[:, STRUCTURE_CHANNEL[k] : STRUCTURE_CHANNEL[k] + 1]
        with autocast(device, precision):
            real, fake = discs[k](gt, t), discs[k](out[k]["image"].detach(), t)
        d_loss = d_loss + (F.relu(1 - real.float()).mean() + F.relu(1 + fake.float()).mean()) * scale
    d_loss.backward()
    if group is not None:
        distributed.all_reduce_grads(discs, group)
    opt_d.step()
    # generator
    opt_g.zero_grad(set_to_none=True)
    terms = {"gan": 0.0, "l1": 0.0, "l1_generated": 0.0, "perceptual": 0.0, "mask_bce": 0.0, "fusion": 0.0,
             "fusion_in": 0.0, "fusion_out": 0.0}
    g_loss = torch.zeros((), device=device)
    for k in decoders:
        image, fusion, generated = out[k]["image"].float(), out[k]["fusion"].float(), out[k]["generated"].float()
        t = tgt_struct[:, STRUCTURE_CHANNEL[k] : STRUCTURE_CHANNEL[k] + 1]
        with autocast(device, precision):
            adv = -discs[k](image, t).float().mean() * scale
        # every term is a mean over the batch: × scale is a rank's share of the global mean (1.0 in one process)
        l1, l1_gen = F.l1_loss(image, gt) * scale, F.l1_loss(generated, gt) * scale
        perc = perceptual(image, gt) * scale if perceptual is not None else torch.zeros((), device=device)
        bce = _balanced_bce(fusion, changed, fraction) * scale
        sparsity = fusion.mean() * scale
        g_loss = g_loss + (lambdas["gan"] * adv + lambdas["l1"] * (l1 + l1_gen) + lambdas["perceptual"] * perc
                           + lambdas.get("mask", 0.0) * bce + lambdas["fusion"] * sparsity)
        terms["gan"] += float(adv.detach())
        terms["l1"] += float(l1.detach())
        terms["l1_generated"] += float(l1_gen.detach())
        terms["mask_bce"] += float(bce.detach())
        terms["perceptual"] += float(perc.detach())
        terms["fusion"] += float(sparsity.detach())
        terms["fusion_in"] += float((fusion.detach() * changed).sum() / inside) / len(decoders)
        terms["fusion_out"] += float((fusion.detach() * (1 - changed)).sum() / outside) / len(decoders)
    g_loss.backward()
    if group is not None:
        distributed.all_reduce_grads(gen, group)
    opt_g.step()
    terms["g_total"] = float(g_loss.detach())
    terms["d_total"] = float(d_loss.detach())
    return terms
