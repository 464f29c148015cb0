"""Time and peak memory of PixelMetrics / aupro on synthetic maps (not collected by pytest).

    python tests/metrics/bench_pixel_metrics.py small   # PixelMetrics, 1,000 maps of 256x256 (exact path)
    python tests/metrics/bench_pixel_metrics.py aupro   # standalone aupro() on the same 1,000 maps
    python tests/metrics/bench_pixel_metrics.py large   # PixelMetrics, 300 maps of 1024x1024 (switches to bins)

Run one case per process. Times are wall clock and process CPU time (the CPU figure is the better one on a
shared machine: the work is single-threaded numpy). Memory: ``peak_rss_MB`` is the process high-water mark (ru_maxrss) and
``peak_over_baseline_MB`` subtracts the RSS measured after imports and one generated input batch, so it
is what the metric itself added (plus at most one more input batch). tracemalloc is not used: it counts
``np.empty`` buffers at full size before their pages are touched, which overstates the real peak.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from generalad.metrics import PixelMetrics, aupro


def batch(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth maps (upsampled 16x16 noise + pixel noise) with elliptic defects on every other image."""
    low = torch.from_numpy(rng.normal(size=(n, 1, 16, 16)).astype(np.float32))
    maps = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    maps += 0.1 * rng.normal(size=maps.shape).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / size
    masks = np.zeros(maps.shape, bool)
    for i in range(0, n, 2):
        cy, cx, ry, rx = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.02, 0.1), rng.uniform(0.02, 0.1)
        masks[i] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
    maps += 1.5 * masks
    return maps, masks


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(n_maps: int, size: int, per_batch: int, **kw) -> dict:
    rng = np.random.default_rng(0)
    pm = PixelMetrics((size, size), **kw)
    t_update = c_update = 0.0
    maps, masks = batch(rng, per_batch, size)
    baseline = rss_mb()
    for i in range(0, n_maps, per_batch):
        if i:
            maps, masks = batch(rng, per_batch, size)
        t, c = time.perf_counter(), time.process_time()
        pm.update(maps, masks)
        t_update += time.perf_counter() - t
        c_update += time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    result = pm.compute()
    t_compute, c_compute = time.perf_counter() - t, time.process_time() - c
    return {
        "case": f"{n_maps} x {size}^2",
        "metrics": result,
        "describe": pm.describe(),
        "update_s": round(t_update, 2),
        "compute_s": round(t_compute, 2),
        "update_cpu_s": round(c_update, 2),
        "compute_cpu_s": round(c_compute, 2),
        "peak_rss_MB": round(peak_rss_mb(), 1),
        "peak_over_baseline_MB": round(peak_rss_mb() - baseline, 1),
    }


def run_aupro(n_maps: int, size: int) -> dict:
    rng = np.random.default_rng(0)
    parts = [batch(rng, 50, size) for _ in range(n_maps // 50)]
    maps = np.concatenate([p[0] for p in parts])
    masks = np.concatenate([p[1] for p in parts])
    del parts
    baseline = rss_mb()
    t, c = time.perf_counter(), time.process_time()
    value = aupro(maps, masks)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - c
    return {"case": f"aupro {n_maps} x {size}^2", "aupro": value, "seconds": round(elapsed, 2),
            "cpu_s": round(cpu, 2),
            "inputs_MB": round((maps.nbytes + masks.nbytes) / 2**20, 1),
            "peak_over_inputs_MB": round(peak_rss_mb() - baseline, 1)}


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "small"
    cases = {
        "small": lambda: run(1000, 256, 50),
        "aupro": lambda: run_aupro(1000, 256),
        "large": lambda: run(300, 1024, 10),
    }
    print(json.dumps(cases[which](), indent=1))
