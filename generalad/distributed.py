"""Data-parallel training under ``torchrun`` (``generalad fit ... --distributed``; docs/SCALE.md §9).

One process per rank, all running the same code on the same inputs. What is split, and how it stays equal to
one process:

* **Frozen features** (``AnomalyModel.extract`` during a session): rank r decodes and extracts a contiguous
  run of whole extraction batches (:func:`shard_range` aligned to the batch size, so every image sits in the
  same backbone batch as in one process), then :func:`all_gather_rows` gives every rank the whole cache.
* **Training steps** (``generalad.training.train_loop``): every rank draws the same seeded permutation and
  global batches; rank r computes rows ``[start, stop)`` of each batch (:class:`BatchShard`). A step returns
  its **additive share** of the global batch's loss (the global loss is the SUM over ranks) and
  back-propagates that share, so summing gradients over ranks (:func:`all_reduce_grads`) gives the global
  batch's gradient. Random numbers drawn per batch (distortions, dropout masks, augmentations) are drawn for
  the whole global batch on every rank from the shared seeded generators, and each rank keeps its rows.
* **BatchNorm**: :class:`SyncBatchNorm` (batch statistics over the global batch, through a differentiable
  all-reduce); torch's ``nn.SyncBatchNorm`` runs on CUDA only, this one on every backend.

Every rank uses the same seeds on purpose (there is no per-rank seed): identical initial weights, identical
permutations, identical draws; each rank then holds bit-identical weights after every optimiser step.
Outside a session (:func:`active` is None) nothing here runs, and single-process training is unchanged.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from generalad.errors import ConfigError, GeneralADError

#: the variables torchrun sets for every worker; --distributed refuses to start without them
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BACKENDS = ("gloo", "nccl")


@dataclasses.dataclass(frozen=True)
class Group:
    """This process's place in the job: ``rank`` of ``world_size``, the backend, and the device collectives use."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """nccl reduces CUDA tensors only; gloo CPU tensors."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")

    def stamp(self) -> dict[str, object]:
        """What the run record states (``fit.distributed`` in config.json)."""
        return {"world_size": self.world_size, "backend": self.backend}


_ACTIVE: Group | None = None


def active() -> Group | None:
    """The session of this process (inside :func:`session`), or None for ordinary single-process work."""
    return _ACTIVE


def parallel() -> Group | None:
    """The session when it has more than one rank (sharding only happens then), else None."""
    return _ACTIVE if _ACTIVE is not None and _ACTIVE.world_size > 1 else None


def torchrun_env(env: dict[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's variables; one-line ConfigError when they are missing."""
    env = dict(os.environ) if env is None else env
    missing = [k for k in TORCHRUN_ENV if not env.get(k)]
    if missing:
        raise ConfigError(f"--distributed needs the torchrun environment ({', '.join(missing)} not set): start it as "
                          "'torchrun --nproc-per-node N -m generalad.cli fit ... --distributed'")
    try:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    except ValueError:
        raise ConfigError(f"--distributed: RANK / WORLD_SIZE / LOCAL_RANK must be integers, got "
                          f"{env['RANK']!r} / {env['WORLD_SIZE']!r} / {env['LOCAL_RANK']!r}") from None


def choose_backend(device: torch.device, backend: str | None = None) -> str:
    """nccl for CUDA training, gloo for the CPU (``backend`` overrides; nccl needs CUDA)."""
    if backend is None:
        return "nccl" if device.type == "cuda" else "gloo"
    if backend not in BACKENDS:
        raise ConfigError(f"--dist-backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("--dist-backend nccl needs CUDA training (--device cuda); use gloo on the CPU")
    return backend


@contextlib.contextmanager
def session(device: torch.device, backend: str | None = None, *, timeout_s: float = 1800.0) -> Iterator[Group]:
    """Join the torchrun job for the duration of the block (init from torchrun's env:// rendezvous)."""
    global _ACTIVE
    rank, world, local_rank = torchrun_env()
    backend = choose_backend(device, backend)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    _ACTIVE = Group(rank, world, local_rank, backend)
    try:
        yield _ACTIVE
        # every rank has finished communicating before any tears its group down: gloo can abort a rank
        # ("terminate called without an active exception") that exits while a peer still talks to it
        dist.barrier()
    finally:
        _ACTIVE = None
        dist.destroy_process_group()


def rank_device(device: torch.device, group: Group) -> torch.device:
    """Each rank trains on its own GPU (cuda:LOCAL_RANK); CPU ranks share the CPU."""
    return torch.device("cuda", group.local_rank) if device.type == "cuda" else device


def run_on_main(group: Group, fn) -> object:
    """``fn()`` on rank 0 only (writing the model); the others wait, and fail with rank 0's one-line error."""
    result, status = None, [None]
    if group.is_main:
        try:
            result = fn()
        except GeneralADError as err:
            status = [str(err)]
            dist.broadcast_object_list(status, src=0)
            raise
    dist.broadcast_object_list(status, src=0)  # also the barrier: nobody leaves before the model is written
    if status[0] is not None:
        raise GeneralADError(f"rank 0 failed: {status[0]}")
    return result


# ----------------------------------------------------------------------------------------- sharding
def shard_range(n: int, rank: int, world: int, align: int = 1) -> tuple[int, int]:
    """Rows [start, stop) of ``n`` for ``rank``: contiguous, balanced over units of ``align`` rows.

    With ``align`` = the extraction batch, each rank gets whole batches (the last one may be short), so the
    backbone sees exactly the batches of one process and the features are bit for bit the same.
    """
    units = -(-n // align)
    lo, hi = units * rank // world, units * (rank + 1) // world
    return min(lo * align, n), min(hi * align, n)


@dataclasses.dataclass(frozen=True)
class BatchShard:
    """This rank's rows ``[start, stop)`` of a global batch ``batch`` (B,) int64 (identical on every rank)."""

    batch: torch.Tensor
    start: int
    stop: int

    @property
    def size(self) -> int:
        """B, the global batch size."""
        return int(self.batch.numel())

    @property
    def whole(self) -> bool:
        """True in a single process: the step computes the whole batch (and must stay bit-identical)."""
        return self.start == 0 and self.stop == self.size

    @property
    def fraction(self) -> float:
        """b / B: turns a mean over this rank's rows into its share of the mean over the global batch."""
        return (self.stop - self.start) / self.size

    @property
    def local(self) -> torch.Tensor:
        """The batch indices this rank computes."""
        return self.batch if self.whole else self.batch[self.start : self.stop]

    def take(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a (B, ...) tensor drawn for the whole global batch (the tensor itself when whole)."""
        return tensor if self.whole else tensor[self.start : self.stop]


_SHARD: contextvars.ContextVar[BatchShard | None] = contextvars.ContextVar("generalad_batch_shard", default=None)


def shard_batch(batch: torch.Tensor) -> BatchShard:
    """The rows of ``batch`` this process computes (all of them outside a multi-rank session)."""
    group = parallel()
    if group is None:
        return BatchShard(batch, 0, int(batch.numel()))
    if batch.numel() < group.world_size:
        raise ConfigError(f"training: a batch of {batch.numel()} items cannot be split over {group.world_size} "
                          "processes (--distributed); use fewer processes or a larger batch")
    return BatchShard(batch, *shard_range(int(batch.numel()), group.rank, group.world_size))


@contextlib.contextmanager
def step_scope(shard: BatchShard) -> Iterator[BatchShard]:
    """Publish the current step's shard to the step function (``current_shard``) for the step's duration."""
    token = _SHARD.set(shard)
    try:
        yield shard
    finally:
        _SHARD.reset(token)


def current_shard(idx: torch.Tensor) -> BatchShard:
    """Inside a ``train_loop`` step: the global batch and this rank's rows; elsewhere ``idx`` as a whole batch."""
    shard = _SHARD.get()
    return shard if shard is not None else BatchShard(idx, 0, int(idx.numel()))


# ----------------------------------------------------------------------------------------- collectives
def all_reduce_sum_(tensors: Sequence[torch.Tensor], group: Group) -> None:
    """Sum ``tensors`` over ranks, in place, as ONE collective (flattened fp32/fp64 buffer, then copied back)."""
    if not tensors:
        return
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    flat = torch.cat([t.detach().reshape(-1).to(group.comm_device, dtype) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def all_reduce_grads(module: nn.Module, group: Group) -> None:
    """Sum the gradients of ``module`` over ranks (each rank back-propagated its share of the global loss).

    Parameters without a gradient stay without one on every rank (all ranks run the same graph), so
    optimisers skip the same parameters as in one process.
    """
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    all_reduce_sum_(grads, group)


def broadcast_module(module: nn.Module, group: Group) -> None:
    """Rank 0's parameters and buffers on every rank (they are already equal: the seeds are; this makes sure)."""
    for t in [*module.parameters(), *module.buffers()]:
        buf = t.detach().to(group.comm_device)
        dist.broadcast(buf, src=0)
        if buf.data_ptr() != t.data_ptr():
            t.data.copy_(buf)


def all_gather_rows(local: torch.Tensor, counts: Sequence[int], group: Group) -> torch.Tensor:
    """(sum(counts), ...) on every rank from each rank's (counts[rank], ...) rows, in rank order.

    Rows are padded to the largest count for the collective (gloo needs equal shapes) and trimmed after.
    """
    width = max(counts)
    shape = (width, *local.shape[1:])
    padded = torch.zeros(shape, dtype=local.dtype, device=group.comm_device)
    padded[: local.shape[0]] = local.to(group.comm_device)
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(local.device)


def gather_features(extract, samples: Sequence, align: int, group: Group):
    """``extract(samples)`` sharded: each rank runs its aligned slice, every rank returns the whole FeatureSet."""
    from generalad.backbones.base import FeatureSet

    if len(samples) < group.world_size:  # too few to split: every rank extracts all (same result)
        return extract(list(samples))
    if -(-len(samples) // align) < group.world_size:
        align = 1  # fewer batches than ranks: split per image (features may then differ in the last bits)
    ranges = [shard_range(len(samples), r, group.world_size, align) for r in range(group.world_size)]
    counts = [b - a for a, b in ranges]
    start, stop = ranges[group.rank]
    part = extract(list(samples[start:stop]))
    maps = [all_gather_rows(m, counts, group) for m in part.maps]
    attention = all_gather_rows(part.attention, counts, group) if part.attention is not None else None
    return FeatureSet(maps=maps, attention=attention)


# ----------------------------------------------------------------------------------------- BatchNorm
class _SyncStats(torch.autograd.Function):
    """Differentiable sum over ranks (backward: the gradient summed over ranks, as the global loss is a sum)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class SyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose training statistics are those of the global batch (every rank's rows), on any backend.

    Same parameters, buffers and state-dict keys as ``nn.BatchNorm2d`` (any input rank ≥ 2). Mean first, then
    the centred second moment (two small all-reduces per layer, not E[x²] − E[x]², which cancels); the running
    variance gets the unbiased global variance, as ``nn.BatchNorm`` does. Eval mode and single processes are
    plain BatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = parallel()
        if not self.training or group is None or not self.track_running_stats:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        local_count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        packed = _SyncStats.apply(torch.cat([x.sum(dims), local_count]))
        count = packed[-1].detach()
        mean = packed[:-1] / count
        centred = x - mean.view(shape)
        var = _SyncStats.apply((centred * centred).sum(dims)) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        self._update_running(mean.detach(), var.detach(), float(count))
        return out

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        # the rule of nn.modules.batchnorm._BatchNorm: momentum, or a cumulative average when momentum is None
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (count / max(count - 1.0, 1.0))
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def _copy_batchnorm(bn: nn.BatchNorm2d, cls: type[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    """A ``cls`` layer holding the very same parameters and buffers as ``bn`` (nothing is copied)."""
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    new.train(bn.training)
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias
    if bn.track_running_stats:
        new.running_mean, new.running_var, new.num_batches_tracked = bn.running_mean, bn.running_var, bn.num_batches_tracked
    return new


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Every ``nn.BatchNorm2d`` in ``module`` → :class:`SyncBatchNorm` (same tensors, same state-dict keys)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.BatchNorm2d):
        raise ConfigError(f"--distributed: {type(module).__name__} layers cannot be synchronised (BatchNorm2d only)")
    if type(module) is nn.BatchNorm2d:
        return _copy_batchnorm(module, SyncBatchNorm)
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child))
    return module


def revert_batchnorm(module: nn.Module) -> nn.Module:
    """:class:`SyncBatchNorm` → ``nn.BatchNorm2d`` after training: the model is a plain module again."""
    if isinstance(module, SyncBatchNorm):
        return _copy_batchnorm(module, nn.BatchNorm2d)
    for name, child in module.named_children():
        module.add_module(name, revert_batchnorm(child))
    return module


def functional_share(loss_mean: torch.Tensor, shard: BatchShard) -> torch.Tensor:
    """A mean over this rank's rows as its share of the mean over the global batch (``loss`` when whole)."""
    return loss_mean if shard.whole else loss_mean * shard.fraction


__all__ = [
    "BACKENDS", "BatchShard", "Group", "SyncBatchNorm", "active", "all_gather_rows", "all_reduce_grads",
    "all_reduce_sum_", "broadcast_module", "choose_backend", "convert_batchnorm", "current_shard",
    "functional_share", "gather_features", "parallel", "rank_device", "revert_batchnorm", "run_on_main",
    "session", "shard_batch", "shard_range", "step_scope", "torchrun_env",
]
