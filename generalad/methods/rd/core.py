"""RD / ARD training and scoring on cached teacher features (the teacher never runs here).

* ``distillation_loss(teacher, student, mode)``: Σ_k mean_batch [1 − cos] — ``"flattened"`` (official code:
  each sample's C×H×W map as one vector) or ``"per_position"`` (paper: cosine along channels per position,
  averaged over positions). Zero iff every student map is a positive multiple of the teacher's.
* ``distance_maps(teacher, student, size)``: Σ_k upsample(1 − cos_k) at ``size`` (bilinear,
  align_corners=True as the official code), (N, H, W) fp32 — before the Gaussian.
* ``train_student(feats, spec, config, device, on_epoch)``: Adam on OCBE + decoder through the shared loop
  (``generalad.training``); the teacher maps come from the cache, so an epoch is the student's forward and
  backward only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from generalad.device import autocast
from generalad.distributed import current_shard, functional_share
from generalad.methods.rd.modules import Student, StudentSpec
from generalad.training import EpochCallback, LoopConfig, train_loop


def per_sample_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], mode: str = "flattened") -> torch.Tensor:
    """(B,) fp32: each sample's loss summed over the scales; each scale's term is in [0, 2]."""
    total = torch.zeros(teacher[0].shape[0], device=teacher[0].device)
    for t, s in zip(teacher, student):
        t, s = t.float(), s.float()
        if mode == "flattened":
            cos = F.cosine_similarity(t.flatten(1), s.flatten(1), dim=1)
        else:
            cos = F.cosine_similarity(t, s, dim=1).flatten(1).mean(dim=1)
        total = total + (1.0 - cos)
    return total


def distillation_loss(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], mode: str = "flattened") -> torch.Tensor:
    """Scalar training loss: Σ_k mean over the batch of [1 − cos] (= the mean of ``per_sample_loss``)."""
    return per_sample_loss(teacher, student, mode).mean()


def distance_maps(teacher: Sequence[torch.Tensor], student: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """(N, H, W) sum over scales of the per-position cosine distance, upsampled to ``size``."""
    total = None
    for t, s in zip(teacher, student):
        d = 1.0 - F.cosine_similarity(t.float(), s.float(), dim=1)
        up = F.interpolate(d.unsqueeze(1), size=size, mode="bilinear", align_corners=True).squeeze(1)
        total = up if total is None else total.add_(up)
    return total


def loop_config(cfg, n: int) -> LoopConfig:
    """The shared loop's settings for an RD config (Adam, constant lr, shuffled batches, as upstream)."""
    batch = min(cfg.train_batch_size, n)
    # upstream keeps the last partial batch; a 1-image batch cannot be batch-normalised at a 1×1 embedding
    # (32-px inputs), so only that case drops it
    return LoopConfig(epochs=cfg.epochs, batch_size=batch, lr=cfg.lr, betas=tuple(cfg.betas), optimizer="adam",
                      schedule="constant", weight_decay=0.0, drop_last=n % batch == 1, seed=cfg.seed)


@torch.no_grad()
def student_maps(student: Student, maps: Sequence[torch.Tensor], *, batch_size: int, device: torch.device,
                 precision: str, size: tuple[int, int]) -> torch.Tensor:
    """Distance maps (N, H, W) of the student in eval mode, on the CPU, fp32, before the Gaussian."""
    student.eval()
    out = []
    for start in range(0, maps[0].shape[0], batch_size):
        t = [m[start : start + batch_size].to(device) for m in maps]
        with autocast(device, precision):
            s = student(t)
        out.append(distance_maps(t, s, size).cpu())
    return torch.cat(out)


def train_student(
    maps: Sequence[torch.Tensor],
    spec: StudentSpec,
    cfg,
    *,
    device: torch.device,
    precision: str,
    on_epoch: EpochCallback | None = None,
    progress: bool = False,
) -> tuple[Student, list[dict]]:
    """Train OCBE + decoder on cached teacher maps [(N, c_k, h_k, w_k)]; returns (student in eval mode, history)."""
    n = int(maps[0].shape[0])
    maps = [m.contiguous() for m in maps]

    def build() -> Student:
        return Student(spec, attention=cfg.attention, attn_at=cfg.attn_at, reduction=cfg.reduction)

    def step(student: Student, idx: torch.Tensor):
        t = [m.index_select(0, idx).to(device, non_blocking=True) for m in maps]
        with autocast(device, precision):
            s = student(t)
        # one process: the batch mean; a torchrun rank: its share of the global batch mean (BatchNorm is
        # synchronised by the loop, so the rows see the global batch's statistics; docs/SCALE.md §9)
        loss = functional_share(distillation_loss(t, s, cfg.loss), current_shard(idx))
        loss.backward()
        return loss.detach(), {}

    return train_loop(build, step, n, loop_config(cfg, n), device=device, on_epoch=on_epoch,
                      progress=progress, desc=cfg_name(cfg))


def cfg_name(cfg) -> str:
    return "ard" if cfg.attn_at != "none" else "rd"
