"""One training loop for every trained method: the method supplies a model factory and a step function.

``train_loop(build, step, n, config, device=...)`` owns what all trained methods share: the seeded global
RNG (parameter init, dropout) inside ``torch.random.fork_rng`` so the caller's RNG is untouched, the seeded
data order, the optimiser and its schedule, epochs (full, or ``epoch_size`` images drawn without
replacement), early stopping on a validation signal, the per-epoch history, an epoch callback and a
progress bar. A method's ``step(model, batch_indices)`` gathers its batch, runs forward *and backward*
(so it may back-propagate in groups to bound memory) and returns the detached loss and its terms; the
loop zeroes gradients before and steps the optimiser after.

Same inputs, config and device → bit-identical weights and history (the seeds fix everything; the order in
which the loop draws random numbers is part of that contract and must not change).

Under ``torchrun`` (``generalad fit --distributed``, a ``generalad.distributed`` session with several ranks) the
same loop runs on every rank: the same seeded permutation and global batches; each rank's step computes its
contiguous rows of each batch (``distributed.current_shard``) and returns its share of the global loss;
gradients are summed over ranks before the optimiser step; BatchNorm layers are synchronised during training;
the history holds the global losses (summed over ranks), identical on every rank. docs/SCALE.md §9.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from tqdm.auto import tqdm

from generalad import distributed
from generalad.errors import ConfigError

#: step(model, batch_indices (b,) int64 CPU) -> (loss: detached scalar tensor, terms: {name: detached scalar}).
#: The indices are this process's rows of the global batch (all of it in one process); with several ranks
#: the loss and terms are this rank's additive shares and the step back-propagates the share
#: (``distributed.current_shard(idx)`` gives the global batch, the rows and ``fraction``).
StepFn = Callable[[torch.nn.Module, torch.Tensor], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]
#: validate(model in eval mode) -> a loss to minimise (lower = better)
ValidateFn = Callable[[torch.nn.Module], float]
#: on_epoch(epoch, model in eval mode) -> True (exactly) stops training after this epoch
EpochCallback = Callable[[int, torch.nn.Module], "bool | None"]

OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("cosine", "constant", "multistep")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Optimiser, schedule and epochs.

    schedule "cosine": ``CosineAnnealingLR(T_max=epochs, eta_min=eta_min_factor·lr)`` stepped per epoch;
    "multistep": lr × 0.2 after 80 % and again after 90 % of the epochs (DRAEM / AnomalyDiffusion's UNet).
    epoch_size: None = every image once per epoch; else that many images of a fresh permutation (without
    replacement inside the epoch). Batches: ``min(batch_size, images per epoch)``, drop-last by default.
    early_stopping_patience: with a ``validate`` function, stop after this many epochs without a lower
    validation loss and return the best epoch's weights; None = train all epochs, keep the last.
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"
    eta_min_factor: float = 0.0
    epoch_size: int | None = None
    drop_last: bool = True
    seed: int = 0
    early_stopping_patience: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (0 <= self.eta_min_factor <= 1, "eta_min_factor must be in [0, 1]"),
            (self.epoch_size is None or self.epoch_size >= 1, "epoch_size must be >= 1"),
            (self.early_stopping_patience is None or self.early_stopping_patience >= 1, "patience must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"training: {message}")

    def images_per_epoch(self, n: int) -> int:
        return n if self.epoch_size is None else min(self.epoch_size, n)

    def batch_for(self, n: int) -> int:
        """The batch size used for ``n`` training items (small sets train with batch = all of them)."""
        return min(self.batch_size, self.images_per_epoch(n))


def _rng_devices(device: torch.device) -> list[int]:
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


def _batches(order: torch.Tensor, batch: int, drop_last: bool) -> Iterator[torch.Tensor]:
    stop = (order.numel() // batch) * batch if drop_last else order.numel()
    for start in range(0, stop, batch):
        yield order[start : start + batch]


def _optimizer(params, config: LoopConfig) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def _scheduler(optimizer: torch.optim.Optimizer, config: LoopConfig):
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=config.epochs, eta_min=config.eta_min_factor * config.lr
        )
    if config.schedule == "multistep":
        milestones = sorted({max(1, int(0.8 * config.epochs)), max(1, int(0.9 * config.epochs))})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.2)
    return None


def train_loop(
    build: Callable[[], torch.nn.Module],
    step: StepFn,
    n: int,
    config: LoopConfig,
    *,
    device: torch.device | str = "cpu",
    validate: ValidateFn | None = None,
    on_epoch: EpochCallback | None = None,
    progress: bool = False,
    desc: str = "train",
) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    """Train ``build()`` on ``n`` items with ``step``; returns (model in eval mode, history).

    ``build`` runs right after ``torch.manual_seed(config.seed)`` (so parameter init is seeded) and its
    model is moved to ``device``. History: one dict per epoch with ``epoch`` (0-based), ``loss`` (mean step
    loss), ``terms`` (mean of each term), ``lr``, ``steps``, ``batch_size``, ``seconds``, ``val_loss`` (with
    ``validate``) and ``selected`` (True on the epoch whose weights are returned).
    """
    if n < 1:
        raise ConfigError("training: no training items")
    if config.early_stopping_patience is not None and validate is None:
        raise ConfigError("training: early_stopping_patience needs a validation signal")
    device = torch.device(device)
    per_epoch, batch = config.images_per_epoch(n), config.batch_for(n)
    history: list[dict[str, Any]] = []
    best_loss, best_state, best_epoch, bad_epochs = math.inf, None, -1, 0
    with torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(config.seed)  # the global RNG: parameter init and dropout masks
        model = build().to(device)
        group = distributed.parallel()
        if group is not None:  # synchronised BatchNorm, and rank 0's initial weights (equal anyway: same seed)
            model = distributed.convert_batchnorm(model)
            distributed.broadcast_module(model, group)
        order_gen = torch.Generator(device="cpu")
        order_gen.manual_seed(int(config.seed))  # the data order
        optimizer = _optimizer(model.parameters(), config)
        scheduler = _scheduler(optimizer, config)
        bar = tqdm(range(config.epochs), desc=desc, unit="epoch", disable=None if progress else True)
        for epoch in bar:
            start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            order = torch.randperm(n, generator=order_gen)[:per_epoch]
            model.train()
            loss_sum = torch.zeros((), device=device)
            term_sums: dict[str, torch.Tensor] = {}
            steps = 0
            for idx in _batches(order, batch, config.drop_last):
                optimizer.zero_grad(set_to_none=True)
                shard = distributed.shard_batch(idx)
                with distributed.step_scope(shard):
                    loss, terms = step(model, shard.local)
                if group is not None:
                    distributed.all_reduce_grads(model, group)
                optimizer.step()
                loss_sum += loss.detach()  # accumulated on the device: no host sync per step
                for k, v in terms.items():
                    term_sums[k] = term_sums.get(k, 0) + v
                steps += 1
            if scheduler is not None:
                scheduler.step()
            if group is not None:  # the global epoch loss: the sum of the ranks' shares, one collective
                term_sums = {k: torch.as_tensor(v, dtype=torch.float32, device=device).clone()
                             for k, v in term_sums.items()}
                distributed.all_reduce_sum_([loss_sum, *term_sums.values()], group)
            record: dict[str, Any] = {
                "epoch": epoch, "loss": float(loss_sum) / max(steps, 1),
                "terms": {k: float(v) / max(steps, 1) for k, v in term_sums.items()},
                "lr": lr, "steps": steps, "batch_size": batch,
            }
            stop = False
            if validate is not None:
                model.eval()
                record["val_loss"] = val = float(validate(model))
                if config.early_stopping_patience is not None:
                    if val < best_loss:
                        best_loss, best_epoch, bad_epochs = val, epoch, 0
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    else:
                        bad_epochs += 1
                        stop = bad_epochs >= config.early_stopping_patience
            record["seconds"] = time.perf_counter() - start
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            if on_epoch is not None:
                model.eval()
                # only a literal True stops: a callback returning e.g. its AUROC must not end training
                stop = (on_epoch(epoch, model) is True) or stop
            if stop:
                break
        bar.close()
        if group is not None:
            model = distributed.revert_batchnorm(model)
    if best_state is not None:
        model.load_state_dict(best_state)
        history[best_epoch]["selected"] = True
    else:
        history[-1]["selected"] = True
    model.eval()
    return model, history
