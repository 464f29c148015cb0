"""How the cost of InReaCh's association and of the leave-one-out cleaning grows with the training set.

Each size runs in its own process, so the printed peak RSS (ru_maxrss, monotone within a process) belongs to
that size alone. One JSON line per (size, stage): wall and CPU seconds, peak RSS, and the time per image
relative to the smallest size (1.0 = linear growth).

    python benchmarks/bench_cleaning.py --sizes 50 100 200                      # synthetic ReLU features
    python benchmarks/bench_cleaning.py --features mt_descriptors.npy --sizes 50 100 200

--features takes a float (N, P, D) .npy, e.g. InReaCh descriptors of the magnetic-tile training images
(``InReaCh(backbone="efficientnet_lite0").descriptors(...)``: P = 784, D = 256). Association uses 10 seed
images (the paper's default), so its cost should grow linearly with N; the leave-one-out distances compare
every patch with a 10 % coreset of all patches, so they grow about quadratically; ``loo_kth2`` (``clean
--kth 2``) compares every patch with every patch of every other image (exact per-image minima, bf16 products),
quadratic with a larger constant.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch


def _features(path: str | None, n: int) -> torch.Tensor:
    if path:
        x = np.load(path, mmap_mode="r")
        if x.shape[0] < n:
            raise SystemExit(f"{path} holds {x.shape[0]} images, fewer than the requested {n}")
        return torch.from_numpy(np.ascontiguousarray(x[:n], dtype=np.float32))
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 784, 256, generator=gen).relu_()


def _usage() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime + r.ru_stime


def _one(n: int, path: str | None, stages: list[str]) -> None:
    from generalad.methods.inreach.channels import (
        InReaChConfig, associate, build_channels, filter_channels, order_with_seeds, select_seeds,
    )
    from generalad.nn.loo import kth_image_distances, leave_one_out_distances

    x = _features(path, n)
    leave_one_out_distances(x[:2, :32])  # one-time library start-up (~8 s on first call) is not per-size cost
    associate(x[:2, :32], [0, 1], 1)
    for stage in stages:
        t0, c0 = _usage()
        if stage == "association":
            config = InReaChConfig()
            order = order_with_seeds(n, select_seeds(n, config.num_seeds, 0))
            assoc = associate(x, order, config.num_seeds)
            filter_channels(x, build_channels(assoc), config)
        elif stage == "loo_kth2":
            kth_image_distances(x, bank_ratio=1.0, kth=2, bf16=True)
        else:
            leave_one_out_distances(x)
        t1, c1 = _usage()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"n_images": n, "stage": stage, "wall_s": round(t1 - t0, 2), "cpu_s": round(c1 - c0, 2),
                          "peak_rss_mb": round(peak), "patches": list(x.shape[1:]),
                          "features": path or "synthetic relu"}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--features", help="(N, P, D) float .npy; synthetic ReLU features when absent")
    parser.add_argument("--stages", nargs="+", default=["association", "loo"],
                        choices=["association", "loo", "loo_kth2"])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one size
    args = parser.parse_args()
    if args.one:
        _one(args.one, args.features, args.stages)
        return
    rows = []
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--stages", *args.stages]
        cmd += ["--features", args.features] if args.features else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    base = {r["stage"]: r["wall_s"] / r["n_images"] for r in rows if r["n_images"] == args.sizes[0]}
    for r in rows:
        per_image = r["wall_s"] / r["n_images"]
        r["per_image_vs_smallest"] = round(per_image / base[r["stage"]], 2) if base[r["stage"]] else None
        print(json.dumps(r))


if __name__ == "__main__":
    main()
