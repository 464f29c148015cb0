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
    # infer_chunk stays the model's (as predict runs it): inside a chunk the next batches are decoded while the
    # backbone runs, so one-batch chunks would time a pipeline that never overlaps (measured 0.51 × the backbone)
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


def measure_exported_speed(inferencer, paths: Sequence[str], *, batch_size: int = 16, repeats: int = 1) -> dict[str, Any]:
    """The same end-to-end path for an exported model (``generalad.deploy.Inferencer``): decode → numpy resize →
    graph (onnxruntime / OpenVINO) → maps at each image's original size. Its "reference" is the bare graph on a
    ready batch (no decoding, no resize), the counterpart of the torch backbone's bare forward."""
    import numpy as np

    inferencer.batch_size = batch_size
    samples = [Sample(path=p, label=-1, split="predict") for p in paths]
    list(inferencer.infer_batches(samples[:batch_size]))  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        for chunk, _, maps in inferencer.infer_batches(samples):
            inferencer.to_original_size(chunk, maps)
    e2e = len(samples) * repeats / (time.perf_counter() - t0)
    size = inferencer.size
    batch = np.random.default_rng(0).standard_normal((batch_size, 3, *size)).astype(np.float32)
    n_batches = max(2, (len(samples) + batch_size - 1) // batch_size)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        inferencer.run(batch)
    bare = n_batches * batch_size / (time.perf_counter() - t0)
    return {
        "end_to_end_images_per_s": round(e2e, 3),
        "backbone_images_per_s": round(bare, 3),
        "ratio": round(e2e / bare, 3) if bare else None,
        "reference": "the whole exported graph on a ready batch",
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "n_images": len(samples),
        "batch_size": batch_size,
        **inferencer.describe(),
    }


def compare_speed(models: Sequence[Any], names: Sequence[str], paths: Sequence[str], *, batch_size: int = 16,
                  repeats: int = 1) -> dict[str, Any]:
    """Each model (torch or exported) on the same images in this one process; one model → its record alone.

    Several → ``{"runs": [...], "speedup_vs_first": [...]}`` (end-to-end images/s relative to the first run), so
    torch vs onnxruntime vs OpenVINO ratios come from one run on one CPU. peak_rss_mb is the process's peak so far.
    """
    from generalad.deploy import Inferencer

    records = []
    for model, name in zip(models, names):
        if isinstance(model, Inferencer):
            rec = measure_exported_speed(model, paths, batch_size=batch_size, repeats=repeats)
        else:
            rec = {**measure_speed(model, paths, batch_size=batch_size, repeats=repeats), "runtime": f"torch {torch.__version__}"}
        records.append({"run": str(name), **rec})
    if len(records) == 1:
        return records[0]
    first = records[0]["end_to_end_images_per_s"]
    return {"runs": records, "speedup_vs_first": [round(r["end_to_end_images_per_s"] / first, 3) for r in records]}
