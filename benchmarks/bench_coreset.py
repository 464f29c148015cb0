"""Timing check for the PatchCore bank tools: coreset selection, nearest neighbours, local aggregation.

Prints wall time, throughput and peak RSS (ru_maxrss of this process, monotone) after every stage.

    python benchmarks/bench_coreset.py coreset --features feats.npy --proj 128 64
    python benchmarks/bench_coreset.py coreset --synthetic 550000 384 --proj 128
    python benchmarks/bench_coreset.py tradeoff --features feats.npy --subsample 10
    python benchmarks/bench_coreset.py knn --bank 55000 --queries 78400 --dim 384
    python benchmarks/bench_coreset.py aggregate --batch 8

--features takes any float .npy of shape (N, P, D) or (M, D), e.g. ViT-S/14 patch tokens of the 700
magnetic-tile training images at 392 px (700 × 784 × 384 = 548,800 patches). Synthetic data has a decaying
spectrum like real features; isotropic noise is the pruning's worst case (--isotropic).
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch

from generalad.nn.coreset import greedy_coreset
from generalad.nn.knn import NearestNeighbours
from generalad.nn.patches import locally_aware_patches


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def _load(args: argparse.Namespace) -> torch.Tensor:
    if args.features:
        x = np.load(args.features, mmap_mode="r")
        x = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
        return torch.from_numpy(x)
    m, d = args.synthetic
    g = torch.Generator().manual_seed(0)
    x = torch.empty(m, d)
    scale = 1.0 if args.isotropic else 1.0 / torch.arange(1, d + 1, dtype=torch.float32) ** 0.8
    rot = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    for s in range(0, m, 65536):
        x[s : s + 65536] = (torch.randn(min(65536, m - s), d, generator=g) * scale) @ rot
    return x


def bench_coreset(args: argparse.Namespace) -> None:
    x = _load(args)
    print(f"features {tuple(x.shape)} fp32, threads {torch.get_num_threads()}, rss {_rss_gb():.2f} GB", flush=True)
    for proj in args.proj:
        t0 = time.perf_counter()

        def progress(i: int, k: int) -> None:
            if i % 8192 == 0:
                print(f"  {i}/{k} selected, {time.perf_counter() - t0:.1f} s", flush=True)

        sel = greedy_coreset(x, ratio=args.ratio, proj_dim=proj, method=args.method, progress=progress)
        wall = time.perf_counter() - t0
        print(
            f"coreset M={x.shape[0]} D={x.shape[1]} proj={proj} ratio={args.ratio} method={args.method}: "
            f"{wall:.1f} s, {len(sel) / wall:.0f} selections/s, peak RSS {_rss_gb():.2f} GB",
            flush=True,
        )
        if args.save:
            np.save(f"{args.save}_proj{proj}.npy", sel.numpy())


def bench_tradeoff(args: argparse.Namespace) -> None:
    """Coverage in the original feature space of selections made at different projections.

    Max = coverage radius (what greedy k-center minimises); mean and p99 of every point's distance to
    its nearest selected point say how well the bank covers typical patches.
    """
    x = _load(args)[:: args.subsample].contiguous()
    n = max(1, round(len(x) * args.ratio))
    print(f"subsample {tuple(x.shape)}, n={n}", flush=True)

    def coverage(sel: torch.Tensor) -> tuple[float, float, float]:
        d = NearestNeighbours(x[sel]).search(x)[0][:, 0]
        return float(d.max()), float(d.mean()), float(d.quantile(0.99))

    rows = {}
    for proj in [None, 128, 64, 32]:
        t0 = time.perf_counter()
        sel = greedy_coreset(x, n=n, proj_dim=proj)
        wall = time.perf_counter() - t0
        rows[proj] = coverage(sel)
        stats = "/".join(f"{v:.3f}" for v in rows[proj])
        print(f"proj={proj}: {wall:.1f} s, coverage max/mean/p99 {stats}", flush=True)
    rand = coverage(torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n])
    print("random subset: coverage max/mean/p99 " + "/".join(f"{v:.3f}" for v in rand))
    for proj, r in rows.items():
        print(f"  proj={proj}: relative to proj=128: " + "/".join(f"{a / b:.3f}" for a, b in zip(r, rows[128])))


def bench_knn(args: argparse.Namespace) -> None:
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(args.bank, args.dim, generator=g)
    queries = torch.randn(args.queries, args.dim, generator=g)
    for backend in args.backends:
        t0 = time.perf_counter()
        nn = NearestNeighbours(bank, backend=backend)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        nn.search(queries, k=1)
        wall = time.perf_counter() - t0
        print(
            f"knn {backend}: bank {args.bank}x{args.dim}, {args.queries} queries, k=1: build {build:.2f} s, "
            f"search {wall:.2f} s, {args.queries / wall:.0f} queries/s, "
            f"{2 * args.queries * args.bank * args.dim / wall / 1e9:.0f} GFLOP/s, peak RSS {_rss_gb():.2f} GB",
            flush=True,
        )


def bench_aggregate(args: argparse.Namespace) -> None:
    cases = {
        "WRN-50 layer2+3 (512@28², 1024@14²) -> 1024": ([(512, 28), (1024, 14)], 1024),
        "ViT-S/14 tokens (384@28²) -> 1024": ([(384, 28)], 1024),
        "ViT-S/14 tokens (384@28²) -> 384": ([(384, 28)], 384),
        "InReaCh 13 WRN blocks (56², 28², 14²) -> 1024": (
            [(256, 56)] * 3 + [(512, 28)] * 4 + [(1024, 14)] * 6,
            1024,
        ),
    }
    for name, (shapes, out_dim) in cases.items():
        maps = [torch.randn(args.batch, c, s, s).relu_() for c, s in shapes]
        locally_aware_patches(maps, out_dim=out_dim)  # warm-up (plans are cached)
        t0 = time.perf_counter()
        locally_aware_patches(maps, out_dim=out_dim)
        wall = time.perf_counter() - t0
        print(f"aggregate {name}: {wall / args.batch * 1e3:.1f} ms/image, peak RSS {_rss_gb():.2f} GB", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["coreset", "tradeoff", "knn", "aggregate"])
    ap.add_argument("--features", help=".npy of (N, P, D) or (M, D) features")
    ap.add_argument("--synthetic", nargs=2, type=int, default=[550_000, 384], metavar=("M", "D"))
    ap.add_argument("--isotropic", action="store_true", help="synthetic isotropic noise (pruning worst case)")
    ap.add_argument("--proj", nargs="+", type=int, default=[128, 64])
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--method", default="lazy", choices=["lazy", "dense"])
    ap.add_argument("--subsample", type=int, default=10, help="tradeoff: keep every n-th feature row")
    ap.add_argument("--save", help="coreset: save selections to PREFIX_projN.npy")
    ap.add_argument("--bank", type=int, default=55_000)
    ap.add_argument("--queries", type=int, default=78_400)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--backends", nargs="+", default=["faiss", "torch"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, help="torch (and faiss) threads; default torch's")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = {"coreset": bench_coreset, "tradeoff": bench_tradeoff, "knn": bench_knn, "aggregate": bench_aggregate}
    run[args.what](args)


if __name__ == "__main__":
    main()
