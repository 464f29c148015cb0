"""GeneralAD training and inference on cached backbone features (the backbone never runs here).

Public API (the estimator in ``generalad.methods.generalad`` builds on it):

* ``GeneralADConfig`` / ``PRESETS`` / ``preset(name, **overrides)`` — hyper-parameters (spec §6–§8).
* ``train_discriminator(features (N, P, D), grid, config, ...) -> (Discriminator, history)``.
* ``patch_logits(disc, features) -> (N, P)``, ``image_scores(logits, top_k) -> (N,)``,
  ``logit_maps(logits, grid, out_size) -> (N, H, W)``, ``resolve_top_k(top_k, num_patches, mode)``.

Training step ([C] semantics): for a batch of B clean feature maps build the clean copy, the noise-all copy
and one copy per partial distortion, run the discriminator and sum the losses of spec §4. The copies are
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
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Mapping

import torch

from generalad.errors import ConfigError, InputError
from generalad.methods.generalad.discriminator import Discriminator
from generalad.methods.generalad.distortions import PARTIAL_DISTORTIONS, apply_distortion, get_spec, make_generator, noise_all
from generalad.methods.generalad.losses import constant_bce, partial_bce
from generalad.nn.maps import upsample_maps

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
    "attention_bytes",
    "plan_copies_per_forward",
]

Precision = Literal["bf16", "fp32"]
#: the paper's working resolution and patch count (518 px → 37 × 37); map blur and scaled K refer to it.
REFERENCE_SIZE = 518
REFERENCE_PATCHES = 37 * 37
#: on_epoch(epoch, disc) → True stops training after this epoch.
EpochCallback = Callable[[int, Discriminator], "bool | None"]


# =============================================================================== config
@dataclass
class GeneralADConfig:
    """GeneralAD hyper-parameters. Defaults = the industrial setting of the official code (spec §7).

    distortions: partial distortions (subset of ``PARTIAL_DISTORTIONS``); noise-all is a separate copy.
    noise_all: the always-on noise-all copy of [C]; switch off only for ablations.
    sigma: noise standard deviation on the (final-LN) features.
    top_k: K of the image score (mean of the K largest patch logits); -1 = all patches.
    semantic_epoch_size: None = full epochs; 250 = [C]'s semantic regime (each "epoch" = 250 images drawn
        without replacement).
    derangement: shuffles/copies change every labelled patch (True, [D]) or reproduce [C] (False).
    shuffle_k_max: cap k_max of attn_shuffle / rand_shuffle / copy_out (None = all patches).
    map_sigma_at_518 / map_radius_at_518: Gaussian of the maps at 518 px, scaled with the map size.
    precision: "bf16" = bf16 autocast for discriminator forwards (fp32 master weights and loss); "fp32".
    early_stopping_patience: with validation features, stop after this many epochs without a lower
        validation distortion loss and return the best epoch's weights; None = train all epochs, keep last.
    copies_per_forward: how many copies (clean, noise-all, partials) share one discriminator forward;
        None = all (fastest). 1 cuts peak training memory ~3-4× (useful at 518 px on CPU) with the same
        loss and gradient.
    """

    distortions: tuple[str, ...] = ("random",)
    noise_all: bool = True
    sigma: float = 0.25
    top_k: int = 10
    epochs: int = 160
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 1e-5
    eta_min_factor: float = 0.2
    heads: int = 4
    hidden: int = 2048
    dropout: float = 0.1
    semantic_epoch_size: int | None = None
    derangement: bool = True
    shuffle_k_max: int | None = None
    map_sigma_at_518: float = 16.0
    map_radius_at_518: int = 18
    precision: Precision = "bf16"
    seed: int = 0
    early_stopping_patience: int | None = None
    copies_per_forward: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.distortions, str):
            self.distortions = (self.distortions,) if self.distortions else ()
        self.distortions = tuple(getattr(d, "value", d) for d in self.distortions)
        if self.shuffle_k_max is not None and self.shuffle_k_max < 0:
            self.shuffle_k_max = None
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError (one line) for any invalid value."""
        for name in self.distortions:
            if name not in PARTIAL_DISTORTIONS:
                raise ConfigError(
                    f"unknown partial distortion '{name}'; choose from {', '.join(PARTIAL_DISTORTIONS)} "
                    "(noise_all is switched by the noise_all flag)"
                )
        if len(set(self.distortions)) != len(self.distortions):
            raise ConfigError(f"distortions listed twice: {self.distortions}")
        checks = [
            (self.sigma > 0, "sigma must be > 0"),
            (self.top_k == -1 or self.top_k >= 1, "top_k must be >= 1 or -1 (all patches)"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.eta_min_factor <= 1, "eta_min_factor must be in [0, 1]"),
            (self.heads >= 1 and self.hidden >= 1, "heads and hidden must be >= 1"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.semantic_epoch_size is None or self.semantic_epoch_size >= 1, "semantic_epoch_size must be >=1"),
            (self.shuffle_k_max is None or self.shuffle_k_max >= 1, "shuffle_k_max must be >= 1"),
            (self.map_sigma_at_518 >= 0 and self.map_radius_at_518 >= 0, "map sigma/radius must be >= 0"),
            (self.precision in ("bf16", "fp32"), f"precision must be 'bf16' or 'fp32', got {self.precision!r}"),
            (self.early_stopping_patience is None or self.early_stopping_patience >= 1, "patience must be >= 1"),
            (self.noise_all or bool(self.distortions), "at least one distorted copy is needed"),
            (self.copies_per_forward is None or self.copies_per_forward >= 1, "copies_per_forward must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"GeneralAD config: {message}")

    @property
    def needs_attention(self) -> bool:
        """True when a distortion needs the backbone's CLS attention (extract features with attention)."""
        return any(get_spec(d).needs_attention for d in self.distortions)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["distortions"] = list(self.distortions)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GeneralADConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"GeneralAD config: unknown keys {', '.join(unknown)}")
        return cls(**{k: (tuple(v) if k == "distortions" else v) for k, v in data.items()})


#: spec §7 presets (noise-all always on).
PRESETS: dict[str, GeneralADConfig] = {
    # MVTec AD, VisA, MPDD
    "industrial": GeneralADConfig(distortions=("random",), top_k=10, epochs=160),
    # MVTec LOCO
    "logical": GeneralADConfig(distortions=("random", "attn_shuffle"), top_k=10, epochs=160),
    # CIFAR-10/100, FMNIST, View, Cats vs Dogs: [C]'s 20 "epochs" of 250 images
    "semantic": GeneralADConfig(distortions=(), top_k=-1, epochs=20, semantic_epoch_size=250),
    # FGVC-Aircraft, Stanford Cars
    "near_distribution": GeneralADConfig(distortions=(), top_k=-1, epochs=160),
}


def preset(name: str, **overrides: Any) -> GeneralADConfig:
    """A fresh copy of ``PRESETS[name]`` with fields overridden (validated)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown GeneralAD preset '{name}'; choose from {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(GeneralADConfig)})
    if unknown:
        raise ConfigError(f"GeneralAD config: unknown keys {', '.join(unknown)}")
    return dataclasses.replace(PRESETS[name], **overrides)


# =============================================================================== helpers
def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
            f"distortions {config.distortions} need CLS attention for the {what}; extract with attention"
        )
    if attention.dim() != 3 or attention.shape[0] != features.shape[0] or attention.shape[2] != features.shape[1]:
        raise InputError(
            f"{what} attention must be (N, heads, P) = ({features.shape[0]}, H, {features.shape[1]}), "
            f"got {tuple(attention.shape)}"
        )
    return attention


def _rng_devices(device: torch.device) -> list[int]:
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


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
    for name in config.distortions:
        distorted, mask = apply_distortion(
            name,
            clean,
            generator=generator,
            attention=attention,
            sigma=config.sigma,
            k_max=config.shuffle_k_max,
            derangement=config.derangement,
        )
        copies.append((name, distorted, mask))
    return copies


def _copy_loss(name: str, logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    # The terms of generalad_loss (spec §4), one copy at a time so copies can be grouped freely.
    if name == "clean":
        return constant_bce(logits, 0.0)
    if name == "noise_all":
        return constant_bce(logits, 1.0)
    return partial_bce(logits, labels)


def distortion_loss(
    disc: Discriminator,
    clean: torch.Tensor,
    config: GeneralADConfig,
    generator: torch.Generator,
    *,
    attention: torch.Tensor | None = None,
    backward: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GeneralAD loss (spec §4) of one batch of clean features (B, P, D), and its terms (detached).

    Copies are concatenated along the batch axis, ``config.copies_per_forward`` at a time (None = all in
    one forward). The loss is a sum of per-copy terms, so grouping changes neither the value nor the
    gradient, only speed and peak memory. With ``backward=True`` each group's loss is back-propagated as
    soon as it is computed (peak memory of one group) and the returned total is detached. The caller sets
    train/eval and grad mode.
    """
    copies = build_copies(clean, config, generator, attention=attention)
    group = config.copies_per_forward or len(copies)
    total = torch.zeros((), device=clean.device)
    terms: dict[str, torch.Tensor] = {}
    for start in range(0, len(copies), group):
        part = copies[start : start + group]
        with _autocast(clean.device, config.precision):
            logits = disc(torch.cat([features for _, features, _ in part], dim=0))
        chunks = logits.float().split(clean.shape[0], dim=0)
        loss = torch.zeros((), device=clean.device)
        for (name, _, labels), chunk in zip(part, chunks):
            term = _copy_loss(name, chunk, labels)
            terms[name] = term.detach()
            loss = loss + term
        if backward:
            loss.backward()
            loss = loss.detach()
        total = total + loss
    return total, terms


def _batches(order: torch.Tensor, batch: int, drop_last: bool) -> Iterator[torch.Tensor]:
    stop = (order.numel() // batch) * batch if drop_last else order.numel()
    for start in range(0, stop, batch):
        yield order[start : start + batch]


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
    was_training = disc.training
    disc.eval()
    total, count = 0.0, 0
    batch = min(config.batch_size, features.shape[0])
    with torch.inference_mode():
        for idx in _batches(torch.arange(features.shape[0]), batch, drop_last=False):
            x = features[idx].to(device, torch.float32)
            a = attention[idx].to(device, torch.float32) if attention is not None else None
            loss, _ = distortion_loss(disc, x, config, generator, attention=a)
            total += float(loss) * idx.numel()
            count += idx.numel()
    disc.train(was_training)
    return total / count


# =============================================================================== training
#: bytes held per training attention weight (scores, fp32 softmax, dropout mask, bf16 copy, saved for the
#: backward); measured 14–21 B on CPU for 784–1369 patches (peak RSS of one step), so 16 plus headroom.
_BYTES_PER_ATTENTION_WEIGHT = 16
#: share of the available memory the training attention may take (the rest: features, model, optimiser)
_MEMORY_BUDGET = 0.7


def attention_bytes(images: int, num_patches: int, heads: int) -> int:
    """Estimated peak bytes of the written-out training attention for ``images`` sequences."""
    return images * heads * num_patches * num_patches * _BYTES_PER_ATTENTION_WEIGHT


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def plan_copies_per_forward(
    config: GeneralADConfig, batch: int, num_patches: int, available: int | None = None
) -> int | None:
    """How many copies may share one forward without exhausting memory (None = all, the fastest).

    The attention is quadratic in the patch count: a CNN grid at 518 px (65 × 65) needs ~40 GiB for the
    default three copies of 16 images. Grouping copies changes neither loss nor gradient (see
    ``distortion_loss``), so the plan only trades speed for memory; if even one copy cannot fit, raise a
    ConfigError that says what to change instead of letting the OS kill the process.
    """
    copies = 1 + int(config.noise_all) + len(config.distortions)
    wanted = config.copies_per_forward or copies
    available = _available_bytes() if available is None else available
    if available is None:
        return config.copies_per_forward
    budget = _MEMORY_BUDGET * available
    per_copy = attention_bytes(batch, num_patches, config.heads)
    fits = int(budget // per_copy)
    if fits >= wanted:
        return config.copies_per_forward
    if fits < 1:
        raise ConfigError(
            f"GeneralAD training on {num_patches} patches at batch {batch} needs ~{per_copy / 2**30:.1f} GiB for "
            f"attention, more than {_MEMORY_BUDGET:.0%} of the {available / 2**30:.1f} GiB available: "
            "use a smaller --image-size or --batch-size"
        )
    return fits


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
) -> tuple[Discriminator, list[dict[str, Any]]]:
    """Train a GeneralAD discriminator on cached normal features.

    Args:
        features: (N, P, D) fp16/fp32 patch features of the normal training images (any device; batches
            are moved to ``device`` and cast to fp32 one at a time, so fp16 caches stay fp16 in memory).
        grid: patch grid (h, w) with h*w = P.
        config: hyper-parameters (``preset("industrial")`` etc.).
        attention: (N, H, P) CLS→patch attention; required iff a distortion needs it.
        validation / validation_attention: held-out NORMAL features; their distortion loss (fixed
            generator, eval mode) is logged per epoch and drives ``config.early_stopping_patience``.
        on_epoch: ``on_epoch(epoch, disc)`` after each epoch with ``disc`` in eval mode (e.g. the parity
            "select on test" mode records its own best state); returning ``True`` (exactly) stops training.
        device: where to train; default = ``features.device``.

    Returns:
        ``(disc, history)``: the discriminator in eval mode (last epoch, or best validation epoch with
        early stopping) and one dict per epoch: ``epoch`` (0-based), ``loss`` (mean step loss), ``terms``
        (mean of each loss term), ``lr``, ``steps``, ``batch_size``, ``seconds``, ``val_loss`` (if
        validation), ``selected`` (True on the epoch whose weights are returned).

    Batches: shuffled with a generator seeded by ``config.seed``, size min(batch_size, images per epoch),
    drop-last (so N < 16 trains with batch N, as [C]'s min(shots, 16)). AdamW + cosine annealing stepped
    per epoch (T_max = epochs, eta_min = eta_min_factor·lr). The same inputs, config and device give a
    bit-identical result; the caller's global RNG state is left untouched.
    """
    grid = (int(grid[0]), int(grid[1]))
    _check_features(features, grid, "training features")
    attention = _check_attention(attention, features, config, "training features")
    if validation is not None:
        _check_features(validation, grid, "validation features")
        validation_attention = _check_attention(validation_attention, validation, config, "validation features")
    dim = features.shape[2]
    if dim % config.heads:
        raise ConfigError(f"GeneralAD config: feature width {dim} is not divisible by heads={config.heads}")
    if config.early_stopping_patience is not None and validation is None:
        raise ConfigError("GeneralAD config: early_stopping_patience needs validation features")
    device = torch.device(device) if device is not None else features.device

    with torch.random.fork_rng(devices=_rng_devices(device)):
        # Global seed: parameter init and dropout masks. Explicit generators: data order and distortions.
        torch.manual_seed(config.seed)
        disc = Discriminator(dim, grid, num_heads=config.heads, hidden=config.hidden, dropout=config.dropout)
        disc.to(device)
        order_gen = make_generator(config.seed, "cpu")
        distort_gen = make_generator(config.seed + 1, device)
        optimizer = torch.optim.AdamW(disc.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs, eta_min=config.eta_min_factor * config.lr
        )
        n = features.shape[0]
        per_epoch = n if config.semantic_epoch_size is None else min(config.semantic_epoch_size, n)
        batch = min(config.batch_size, per_epoch)
        planned = plan_copies_per_forward(config, batch, features.shape[1])
        if planned != config.copies_per_forward:
            config = dataclasses.replace(config, copies_per_forward=planned)

        history: list[dict[str, Any]] = []
        best_loss, best_state, best_epoch, bad_epochs = math.inf, None, -1, 0
        for epoch in range(config.epochs):
            start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            # Full epoch = a permutation of all images; semantic regime = the first 250 of a fresh one
            # (sampling without replacement inside the epoch).
            order = torch.randperm(n, generator=order_gen)[:per_epoch]
            disc.train()
            loss_sum = torch.zeros((), device=device)
            term_sums: dict[str, torch.Tensor] = {}
            steps = 0
            for idx in _batches(order, batch, drop_last=True):
                x = features[idx.to(features.device)].to(device, torch.float32, non_blocking=True)
                a = None
                if attention is not None:
                    a = attention[idx.to(attention.device)].to(device, torch.float32, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss, terms = distortion_loss(disc, x, config, distort_gen, attention=a, backward=True)
                optimizer.step()
                # Accumulate on the device: no host sync per step.
                loss_sum += loss.detach()
                for k, v in terms.items():
                    term_sums[k] = term_sums.get(k, 0) + v
                steps += 1
            scheduler.step()
            record: dict[str, Any] = {
                "epoch": epoch,
                "loss": float(loss_sum) / steps,
                "terms": {k: float(v) / steps for k, v in term_sums.items()},
                "lr": lr,
                "steps": steps,
                "batch_size": batch,
            }
            stop = False
            if validation is not None:
                val = _validation_loss(disc, validation, validation_attention, config, device)
                record["val_loss"] = val
                if config.early_stopping_patience is not None:
                    if val < best_loss:
                        best_loss, best_epoch, bad_epochs = val, epoch, 0
                        best_state = {k: v.detach().clone() for k, v in disc.state_dict().items()}
                    else:
                        bad_epochs += 1
                        stop = bad_epochs >= config.early_stopping_patience
            record["seconds"] = time.perf_counter() - start
            history.append(record)
            if on_epoch is not None:
                disc.eval()
                # Only a literal True stops: a callback returning e.g. its AUROC must not end training.
                stop = (on_epoch(epoch, disc) is True) or stop
            if stop:
                break

    if best_state is not None:
        disc.load_state_dict(best_state)
        history[best_epoch]["selected"] = True
    else:
        history[-1]["selected"] = True
    disc.eval()
    return disc, history


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
        with torch.inference_mode(), _autocast(device, precision):
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
