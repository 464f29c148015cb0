"""``generalad speed``: throughput of the whole predict path next to the bare backbone, same run."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from generalad.data import Sample
from generalad.evaluate import peak_rss_mb
from generalad.methods.base import AnomalyModel


def measure_speed(model: AnomalyModel, paths: Sequence[str], *, batch_size: int = 16, repeats: int = 1) -> dict[str, Any]:
    """End to end = decode → resize → backbone → method → map at each image's original size (as predict)."""
    from generalad.backbones import backbone_throughput

    model.config.batch_size = batch_size
    samples = [Sample(path=p, label=-1, split="predict") for p in paths]
    model.infer_chunk = max(batch_size, 1)  # one backbone batch per inference chunk
    list(model.infer_batches(samples[:batch_size], use_cache=False))  # warm-up (allocations, lazy init)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for chunk, _, maps in model.infer_batches(samples, use_cache=False):
            model.to_original_size(chunk, maps)
    e2e = len(samples) * repeats / (time.perf_counter() - t0)
    n_batches = max(2, (len(samples) + batch_size - 1) // batch_size)
    reference, module = model.speed_reference()
    bb = backbone_throughput(module, model.working_size, batch_size, model.config.precision, n_batches)
    return {
        "end_to_end_images_per_s": round(e2e, 3),
        "backbone_images_per_s": round(bb, 3),
        "ratio": round(e2e / bb, 3) if bb else None,
        "reference": reference,  # what "backbone_images_per_s" timed: the bare frozen backbone, or the method's core
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "n_images": len(samples),
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
        **model.describe(),
    }
