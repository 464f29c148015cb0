"""GeneralAD training and inference on cached backbone features (the backbone never runs here).

Public API (the estimator in ``generalad.methods.generalad`` builds on it):

* ``GeneralADConfig`` / ``PRESETS`` / ``preset(name, **overrides)`` — re-exported from ``config``.
* ``train_discriminator(features (N, P, D), grid, config, ...) -> (Discriminator, history)``.
* ``patch_logits(disc, features) -> (N, P)``, ``image_scores(logits, top_k) -> (N,)``,
  ``logit_maps(logits, grid, out_size) -> (N, H, W)``, ``resolve_top_k(top_k, num_patches, mode)``.

Training step ([C] semantics): for a batch of B clean feature maps build the clean copy, the noise-all copy
and one copy per partial distortion, run the discriminator and sum the losses of docs/methods/generalad.md §4. The copies are
run as ONE forward on their concatenation along the batch axis. That is the same computation as separate
forwards: attention mixes patches only within a sequence, LayerNorm is per token and dropout masks are
i.i.d. per element, so train-mode results have the same distribution (only the order in which dropout
draws its random numbers differs); it is simply faster (bigger GEMMs, one pass of kernel overheads).
``copies_per_forward`` splits the copies into smaller groups (each back-propagated at once) when peak
memory matters more than speed; the loss is a sum of per-copy terms, so the gradient is unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Literal

import torch

from generalad.device import autocast
from generalad.distributed import BatchShard, current_shard
from generalad.errors import ConfigError, InputError
from generalad.methods.generalad.config import PRESETS, GeneralADConfig, preset
from generalad.methods.generalad.discriminator import Discriminator, dropout_rows
from generalad.methods.generalad.distortions import apply_distortion, make_generator, noise_all
from generalad.methods.generalad.losses import constant_bce, partial_bce
from generalad.methods.generalad.memory import plan_copies_per_forward
from generalad.nn.maps import upsample_maps
from generalad.training import LoopConfig, train_loop

__all__ = [
    "GeneralADConfig",
    "PRESETS",
    "preset",
    "train_discriminator",
    "build_copies",
    "distortion_loss",
    "patch_logits",
    "image_scores",
    "resolve_top_k",
    "logit_maps",
    "map_blur",
    "REFERENCE_SIZE",
    "REFERENCE_PATCHES",
]

Precision = Literal["bf16", "fp32"]
#: the paper's working resolution and patch count (518 px → 37 × 37); map blur and scaled K refer to it.
REFERENCE_SIZE = 518
REFERENCE_PATCHES = 37 * 37
#: on_epoch(epoch, disc) → True stops training after this epoch.
EpochCallback = Callable[[int, Discriminator], "bool | None"]


# =============================================================================== helpers
def _check_features(features: torch.Tensor, grid: tuple[int, int], what: str) -> None:
    if features.dim() != 3:
        raise InputError(f"{what} must be (N, P, D), got shape {tuple(features.shape)}")
    if features.shape[1] != grid[0] * grid[1]:
        raise InputError(
            f"{what} have {features.shape[1]} patches but grid {grid[0]}x{grid[1]} needs {grid[0] * grid[1]}"
        )
    if features.shape[0] < 1:
        raise InputError(f"{what} are empty")


def _check_attention(
    attention: torch.Tensor | None, features: torch.Tensor, config: GeneralADConfig, what: str
) -> torch.Tensor | None:
    if not config.needs_attention:
        return None
    if attention is None:
        raise InputError(
            f"distortions {config.partials} need CLS attention for the {what}; extract with attention"
        )
    if attention.dim() != 3 or attention.shape[0] != features.shape[0] or attention.shape[2] != features.shape[1]:
        raise InputError(
            f"{what} attention must be (N, heads, P) = ({features.shape[0]}, H, {features.shape[1]}), "
            f"got {tuple(attention.shape)}"
        )
    return attention


def build_copies(
    clean: torch.Tensor,
    config: GeneralADConfig,
    generator: torch.Generator,
    *,
    attention: torch.Tensor | None = None,
) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """The copies of one batch as ``(name, features, labels)``: clean, noise-all (if on), then each partial.

    ``labels`` is None for the clean (all 0) and noise-all (all 1) copies, else the (B, P) bool mask.
    """
    copies: list[tuple[str, torch.Tensor, torch.Tensor | None]] = [("clean", clean, None)]
    if config.noise_all:
        copies.append(("noise_all", noise_all(clean, config.sigma, generator=generator)[0], None))
    for name in config.partials:
        distorted, mask = apply_distortion(
            name,
            clean,
            generator=generator,
            attention=attention,
            sigma=config.sigma,
            k_max=config.k_max,
            derangement=config.derangement,
        )
        copies.append((name, distorted, mask))
    return copies


def _copy_loss(name: str, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    # The terms of generalad_loss (docs/methods/generalad.md §4), one copy at a time so copies can be grouped freely.
    if name == "clean":
        return constant_bce(logits, 0.0)
    if name == "noise_all":
        return constant_bce(logits, 1.0)
    return partial_bce(logits, labels)


def _copy_loss_share(name: str, logits: torch.Tensor, labels: torch.Tensor | None, shard: BatchShard) -> torch.Tensor:
    """This rank's additive share of a copy's term (its rows of the global batch; docs/SCALE.md §9)."""
    if labels is None:  # a mean over every patch of the batch: the rows' mean × b / B
        return _copy_loss(name, logits, None) * shard.fraction
    return partial_bce(logits, shard.take(labels), global_labels=labels)  # denominators count the global batch


def _rows_of_group(shard: BatchShard, copies: int) -> torch.Tensor:
    """Row index into a forward of ``copies`` whole-batch copies of this rank's rows (copy c at c·B + rows)."""
    rows = torch.arange(shard.start, shard.stop)
    return torch.cat([c * shard.size + rows for c in range(copies)])


def distortion_loss(
    disc: Discriminator,
    clean: torch.Tensor,
    config: GeneralADConfig,
    generator: torch.Generator,
    *,
    attention: torch.Tensor | None = None,
    backward: bool = False,
    shard: BatchShard | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GeneralAD loss (docs/methods/generalad.md §4) of one batch of clean features (B, P, D), and its terms (detached).

    Copies are concatenated along the batch axis, ``config.copies_per_forward`` at a time (None = all in
    one forward). The loss is a sum of per-copy terms, so grouping changes neither the value nor the
    gradient, only speed and peak memory. With ``backward=True`` each group's loss is back-propagated as
    soon as it is computed (peak memory of one group) and the returned total is detached. The caller sets
    train/eval and grad mode.

    ``shard`` (``generalad fit --distributed``, not whole): ``clean`` is the whole global batch; the copies are
    built from it (the same draws as one process: distortions mix images of the batch), the discriminator
    runs on this rank's rows only, with the rows of the whole batch's dropout masks, and the loss and terms
    are this rank's additive shares of the global ones (docs/SCALE.md §9).
    """
    copies = build_copies(clean, config, generator, attention=attention)
    group = config.copies_per_forward or len(copies)
    split = shard is not None and not shard.whole
    total = torch.zeros((), device=clean.device)
    terms: dict[str, torch.Tensor] = {}
    for start in range(0, len(copies), group):
        part = copies[start : start + group]
        rows = (dropout_rows(_rows_of_group(shard, len(part)), len(part) * shard.size) if split
                else contextlib.nullcontext())
        with autocast(clean.device, _train_precision(config)), rows:
            logits = disc(torch.cat([shard.take(f) if split else f for _, f, _ in part], dim=0))
        chunks = logits.float().split(shard.stop - shard.start if split else clean.shape[0], dim=0)
        loss = torch.zeros((), device=clean.device)
        for (name, _, labels), chunk in zip(part, chunks):
            term = _copy_loss_share(name, chunk, labels, shard) if split else _copy_loss(name, chunk, labels)
            terms[name] = term.detach()
            loss = loss + term
        if backward:
            loss.backward()
            loss = loss.detach()
        total = total + loss
    return total, terms


def _train_precision(config: GeneralADConfig) -> str:
    if config.train_precision not in ("bf16", "fp32"):
        raise ConfigError(f"GeneralAD core needs train_precision 'bf16' or 'fp32' (resolved), got {config.train_precision!r}")
    return config.train_precision


def _validation_loss(
    disc: Discriminator,
    features: torch.Tensor,
    attention: torch.Tensor | None,
    config: GeneralADConfig,
    device: torch.device,
) -> float:
    # A freshly seeded generator every call: every epoch sees the same distortions, so the losses of
    # different epochs are comparable and early stopping does not chase noise in the distortion draw.
    generator = make_generator(config.seed + 2, device)
    total, count = 0.0, 0
    batch = min(config.train_batch_size, features.shape[0])
    with torch.inference_mode():
        for start in range(0, features.shape[0], batch):
            idx = torch.arange(start, min(start + batch, features.shape[0]))
            x = features[idx].to(device, torch.float32)
            a = attention[idx].to(device, torch.float32) if attention is not None else None
            loss, _ = distortion_loss(disc, x, config, generator, attention=a)
            total += float(loss) * idx.numel()
            count += idx.numel()
    return total / count


def loop_config(config: GeneralADConfig) -> LoopConfig:
    """The shared training loop's settings for GeneralAD: AdamW + cosine annealing per epoch, drop-last."""
    return LoopConfig(
        epochs=config.epochs, batch_size=config.train_batch_size, lr=config.lr, weight_decay=config.weight_decay,
        optimizer="adamw", schedule="cosine", eta_min_factor=config.eta_min_factor,
        epoch_size=config.semantic_epoch_size, drop_last=True, seed=config.seed,
        early_stopping_patience=config.early_stopping_patience if config.selection == "validation" else None,
    )


def train_discriminator(
    features: torch.Tensor,
    grid: tuple[int, int],
    config: GeneralADConfig,
    *,
    attention: torch.Tensor | None = None,
    validation: torch.Tensor | None = None,
    validation_attention: torch.Tensor | None = None,
    on_epoch: EpochCallback | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> tuple[Discriminator, list[dict[str, Any]]]:
    """Train a GeneralAD discriminator on cached normal features (on the shared ``generalad.training`` loop).

    Args:
        features: (N, P, D) fp16/fp32 patch features of the normal training images (any device; batches
            are moved to ``device`` and cast to fp32 one at a time, so fp16 caches stay fp16 in memory).
        grid: patch grid (h, w) with h*w = P.
        config: a *resolved* config (``preset("industrial")``, ``GeneralADConfig(...).resolved()``) whose
            ``train_precision`` is "bf16" or "fp32".
        attention: (N, H, P) CLS→patch attention; required iff a distortion needs it.
        validation / validation_attention: held-out NORMAL features; their distortion loss (fixed
            generator, eval mode) is logged per epoch as ``val_loss``, and with ``selection="validation"``
            drives early stopping (``early_stopping_patience``).
        on_epoch: ``on_epoch(epoch, disc)`` after each epoch with ``disc`` in eval mode (e.g. the parity
            "select on test" mode records its own best state); returning ``True`` (exactly) stops training.
        device: where to train; default = ``features.device``.

    Returns:
        ``(disc, history)`` as ``generalad.training.train_loop`` documents (eval mode; last epoch, or the
        best validation epoch with early stopping).

    Batches: shuffled with a generator seeded by ``config.seed``, size min(train_batch_size, images per
    epoch), drop-last (so N < 16 trains with batch N, as the official min(shots, 16)). The same inputs,
    config and device give a bit-identical result; the caller's global RNG state is left untouched.
    """
    if not config.is_resolved:
        raise ConfigError("GeneralAD core needs a resolved config (GeneralADConfig(...).resolved())")
    _train_precision(config)  # resolved before any work: distortion_loss reads it from the config
    grid = (int(grid[0]), int(grid[1]))
    _check_features(features, grid, "training features")
    attention = _check_attention(attention, features, config, "training features")
    if validation is not None:
        _check_features(validation, grid, "validation features")
        validation_attention = _check_attention(validation_attention, validation, config, "validation features")
    dim = features.shape[2]
    if dim % config.heads:
        raise ConfigError(f"GeneralAD config: feature width {dim} is not divisible by heads={config.heads}")
    if config.selection == "validation" and validation is None:
        raise ConfigError("GeneralAD config: selection='validation' needs validation features")
    device = torch.device(device) if device is not None else features.device
    loop = loop_config(config)
    planned = plan_copies_per_forward(config, loop.batch_for(features.shape[0]), features.shape[1])
    if planned != config.copies_per_forward:
        config = dataclasses.replace(config, copies_per_forward=planned)
    distort_gen = make_generator(config.seed + 1, device)  # explicit: independent of the global RNG

    def build() -> Discriminator:
        return Discriminator(dim, grid, num_heads=config.heads, hidden=config.hidden, dropout=config.dropout)

    def step(disc: torch.nn.Module, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # the whole global batch: every rank draws its distortions (docs/SCALE.md §9); idx itself in one process
        shard = current_shard(idx)
        idx = shard.batch
        x = features[idx.to(features.device)].to(device, torch.float32, non_blocking=True)
        a = None
        if attention is not None:
            a = attention[idx.to(attention.device)].to(device, torch.float32, non_blocking=True)
        return distortion_loss(disc, x, config, distort_gen, attention=a, backward=True, shard=shard)

    def validation_loss(disc: torch.nn.Module) -> float:
        return _validation_loss(disc, validation, validation_attention, config, device)

    validate = validation_loss if validation is not None else None

    return train_loop(build, step, features.shape[0], loop, device=device, validate=validate, on_epoch=on_epoch,
                      progress=progress, desc="GeneralAD")


# =============================================================================== inference
def patch_logits(
    disc: Discriminator,
    features: torch.Tensor,
    batch_size: int = 64,
    precision: Precision = "fp32",
) -> torch.Tensor:
    """Per-patch logits (N, P) float32 on ``features.device`` (eval + inference mode, batched).

    Batches are moved to the discriminator's device; ``precision="bf16"`` uses bf16 autocast.
    """
    if features.dim() != 3:
        raise InputError(f"features must be (N, P, D), got shape {tuple(features.shape)}")
    if batch_size < 1:
        raise ConfigError("batch_size must be >= 1")
    device = disc.pos_embed.device
    was_training = disc.training
    disc.eval()
    out = []
    try:
        with torch.inference_mode(), autocast(device, precision):
            for start in range(0, features.shape[0], batch_size):
                x = features[start : start + batch_size].to(device, torch.float32)
                out.append(disc(x).float().to(features.device))
    finally:
        disc.train(was_training)
    if not out:
        return torch.empty((0, features.shape[1]), dtype=torch.float32, device=features.device)
    return torch.cat(out)


def resolve_top_k(top_k: int, num_patches: int, mode: Literal["literal", "scaled"] = "literal") -> int:
    """The K used for ``num_patches`` patches: -1 → all; "scaled" keeps the fraction K/1369 of 518 px.

    Returns a validated K in [1, num_patches]; record ``mode`` with the results.
    """
    if top_k == -1:
        return num_patches
    if top_k < 1:
        raise ConfigError(f"top_k must be >= 1 or -1 (all patches), got {top_k}")
    if mode == "scaled":
        top_k = max(1, round(top_k * num_patches / REFERENCE_PATCHES))
    elif mode != "literal":
        raise ConfigError(f"top_k mode must be 'literal' or 'scaled', got {mode!r}")
    if top_k > num_patches:
        raise ConfigError(f"top_k={top_k} exceeds the {num_patches} patches per image")
    return int(top_k)


def image_scores(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Image score (N,) = mean of the ``top_k`` largest patch logits of each row; -1 = mean of all."""
    if logits.dim() != 2:
        raise InputError(f"logits must be (N, P), got shape {tuple(logits.shape)}")
    k = resolve_top_k(top_k, logits.shape[1])
    if k == logits.shape[1]:
        return logits.float().mean(dim=1)
    return torch.topk(logits.float(), k, dim=1).values.mean(dim=1)


def map_blur(out_size: tuple[int, int], sigma_at_518: float = 16.0, radius_at_518: int = 18) -> tuple[float, int]:
    """Gaussian (sigma, radius) in pixels for maps of ``out_size``: the 518-px values scaled by size/518.

    For non-square sizes the scale is sqrt(H·W)/518. At 518 × 518 this is exactly [C]'s σ 16 / radius 18.
    """
    scale = math.sqrt(out_size[0] * out_size[1]) / REFERENCE_SIZE
    sigma = sigma_at_518 * scale
    radius = max(1, round(radius_at_518 * scale)) if sigma > 0 else 0
    return sigma, radius


def logit_maps(
    logits: torch.Tensor,
    grid: tuple[int, int],
    out_size: int | tuple[int, int],
    sigma_at_518: float = 16.0,
    radius_at_518: int = 18,
) -> torch.Tensor:
    """Anomaly maps (N, H, W): patch logits → grid → bilinear to ``out_size`` → Gaussian (reflect borders).

    Raw logits are kept (no sigmoid, no normalisation) so maps of different images stay comparable.
    """
    if isinstance(out_size, int):
        out_size = (out_size, out_size)
    out_size = (int(out_size[0]), int(out_size[1]))
    if logits.dim() != 2 or logits.shape[1] != grid[0] * grid[1]:
        raise InputError(
            f"logits must be (N, {grid[0] * grid[1]}) for grid {grid[0]}x{grid[1]}, got {tuple(logits.shape)}"
        )
    sigma, radius = map_blur(out_size, sigma_at_518, radius_at_518)
    grids = logits.float().reshape(logits.shape[0], grid[0], grid[1])
    return upsample_maps(grids, out_size, sigma=sigma, radius=radius)
