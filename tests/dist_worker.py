"""Tiny trained-method fits on synthetic tensors, run the same way in one process and under torchrun.

``python tests/dist_worker.py OUT.json`` runs every case in this process; ``torchrun --nproc-per-node 2
tests/dist_worker.py OUT.json`` runs them inside a ``generalad.distributed`` session (rank 0 writes OUT.json).
tests/test_distributed.py compares the two. Synthetic inputs: no backbone, so a case costs well under a second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator

import torch
from torch import nn

from generalad import distributed
from generalad.training import LoopConfig, train_loop

CPU = torch.device("cpu")


def _maps(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, 8, 8, 8, generator=g, dtype=torch.float64),
            torch.randn(n, 16, 4, 4, generator=g, dtype=torch.float64),
            torch.randn(n, 32, 2, 2, generator=g, dtype=torch.float64)]


def rd_case(attn_at: str) -> dict:
    """RD (attn_at "none") / ARD (CBAM): the BatchNorm student; 13 items in batches of 5 (the short last batch
    of 3 splits 1 / 2 over two ranks), 3 epochs."""
    from generalad.methods.rd import core
    from generalad.methods.rd.config import ARDConfig, RDConfig
    from generalad.methods.rd.modules import StudentSpec

    cls = RDConfig if attn_at == "none" else ARDConfig
    cfg = dataclasses.replace(cls(backbone="efficientnet_lite0", image_size=64, epochs=3, reduction=4).resolved(),
                              train_batch_size=5)
    spec = StudentSpec((8, 16, 32), signed_features=True)  # a narrow Lite0-like teacher (signed maps)
    student, history = core.train_student(_maps(13), spec, cfg, device=CPU, precision="fp32")
    has_sync = any(isinstance(m, distributed.SyncBatchNorm) for m in student.modules())
    return {"loss": [h["loss"] for h in history], "running_var": float(_first_bn(student).running_var.sum()),
            "weights": _checksum(student), "sync_left": has_sync}


def generalad_case() -> dict:
    """GeneralAD's discriminator on random tokens: distortions (derangement mixes images), dropout 0.1, 3 epochs."""
    from generalad.methods.generalad import core

    g = torch.Generator().manual_seed(2)
    tokens = torch.randn(21, 16, 32, generator=g)
    cfg = core.preset("industrial", epochs=3, hidden=64, heads=4, train_batch_size=8, train_precision="fp32",
                      sigma=0.25, copies_per_forward=1)
    disc, history = core.train_discriminator(tokens, (4, 4), cfg, device=CPU)
    return {"loss": [h["loss"] for h in history], "terms": [h["terms"] for h in history], "weights": _checksum(disc)}


def detector_case() -> dict:
    """AnomalyHybrid's UNet detector (BatchNorm; picks and masks drawn per batch)."""
    from generalad.methods.anomalyhybrid import AnomalyHybrid

    g = torch.Generator().manual_seed(3)
    model = AnomalyHybrid(preset="smoke", device="cpu", det_samples=12, det_batch=6, det_epochs=2)
    normals = torch.rand(5, 3, 32, 32, generator=g, dtype=torch.float64)
    generated = torch.rand(7, 3, 32, 32, generator=g, dtype=torch.float64)
    masks = torch.rand(7, 32, 32, generator=g) > 0.8
    det, history = model._train_detector(normals, generated, masks)
    return {"loss": [h["loss"] for h in history], "weights": _checksum(det)}


def generator_case() -> dict:
    """AnomalyHybrid's generator (hinge GAN, TPS pairs drawn per batch), no perceptual network, 4 steps."""
    from generalad.methods.anomalyhybrid.train_gen import train_generator

    g = torch.Generator().manual_seed(4)
    stack = torch.rand(6, 5, 32, 32, generator=g)
    gen, history = train_generator(stack, widths=(4, 8, 16, 32), decoders=("edges",), steps=4, batch_size=4, lr=1e-3,
                                   lambdas={"gan": 1.0, "l1": 10.0, "perceptual": 0.0, "mask": 1.0, "fusion": 0.1},
                                   perceptual=None, seed=0, log_every=2)
    return {"history": [{k: v for k, v in h.items() if k not in ("seconds", "step")} for h in history],
            "weights": _checksum(gen)}


def sync_bn_case() -> dict:
    """One backward of a conv + BatchNorm net on 7 rows: the summed gradient of the ranks' shares."""
    torch.manual_seed(5)
    # no bias before a BatchNorm: its gradient is zero up to rounding, and Adam turns that rounding (which
    # differs between CPUs and thread counts) into lr-sized steps
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1, bias=False),
                        nn.BatchNorm2d(2))
    x = torch.randn(7, 3, 6, 6, generator=torch.Generator().manual_seed(6))
    y = torch.randn(7, 2, 4, 4, generator=torch.Generator().manual_seed(7))

    def step(model: nn.Module, idx: torch.Tensor):
        loss = distributed.functional_share(((model(x[idx]) - y[idx]) ** 2).mean(), distributed.current_shard(idx))
        loss.backward()
        return loss.detach(), {}

    grads: list[list[float]] = []

    def on_epoch(epoch: int, model: nn.Module) -> None:
        grads.append([float(v.sum()) for v in model.state_dict().values() if v.is_floating_point()])

    loop = LoopConfig(epochs=2, batch_size=7, lr=0.1, optimizer="adam", schedule="constant", drop_last=False)
    _, history = train_loop(lambda: net, step, 7, loop, on_epoch=on_epoch)
    return {"loss": [h["loss"] for h in history], "state": grads}


def _first_bn(module: nn.Module) -> nn.BatchNorm2d:
    return next(m for m in module.modules() if isinstance(m, nn.BatchNorm2d))


def _checksum(module: nn.Module) -> list[float]:
    return [float(v.double().sum()) for v in module.state_dict().values() if v.is_floating_point()]


@contextlib.contextmanager
def float64() -> Iterator[None]:
    """BatchNorm models train in float64 here: in float32 one process's own BatchNorm backward can be off by
    10 % on a tiny batch (measured against float64 on the RD case; the rank-split one was within 1e-5), and
    Adam turns such differences into diverging runs. In float64 the comparison tests the algorithm."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


CASES = {"rd": lambda: rd_case("none"), "ard": lambda: rd_case("both"), "generalad": generalad_case,
         "detector": detector_case, "generator": generator_case, "sync_bn": sync_bn_case}
#: cases with BatchNorm, run in float64 (see :func:`float64`)
FLOAT64 = ("rd", "ard", "detector", "sync_bn")


def run_all() -> dict:
    out = {}
    for name, case in CASES.items():
        with float64() if name in FLOAT64 else contextlib.nullcontext():
            out[name] = case()
    return out


def main(out: str) -> None:
    torch.set_num_threads(1)  # torchrun's default for several ranks per machine; the 1-process reference matches it
    if "RANK" not in os.environ:
        results = run_all()
        results["ranks_agree"] = True
    else:
        with distributed.session(CPU) as group:
            results = run_all()
            everyone = [None] * group.world_size
            torch.distributed.all_gather_object(everyone, json.dumps(results, sort_keys=True))
            results["ranks_agree"] = len(set(everyone)) == 1  # the same weights and history on every rank
            results["world_size"] = group.world_size
        if group.rank != 0:
            return
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])
