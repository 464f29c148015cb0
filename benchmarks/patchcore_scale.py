"""PatchCore banks beyond memory (issue 19): sharded exact coreset / search vs one process vs IVF-PQ.

    python benchmarks/patchcore_scale.py --sizes 100000 1000000 10000000 --picks 1000 --queries 10000 \
        --work runs/scale/bench --out runs/scale/bench/results.json

Per size N: seeded Gaussian-mixture features (64 components, decaying spectrum, D = 152 — PatchCore's width on
EfficientNet-Lite0), written as an fp16 .npy (N·D·2 bytes) and memory-mapped, never loaded whole.

* coreset: a FIXED number of greedy picks (``--picks``; 10 % of 10^7 = 10^6 picks is out of reach on 2 cores,
  the table extrapolates), in one process (``greedy_coreset``, projection in RAM) and over 2 workers with
  disk-backed shards (``sharded_greedy_coreset``, bank_dir: the (N, 128) fp32 projection on disk). The
  indices must be identical. The 2 workers are started once per size (``workers_start_s``, not in the
  stage times) and serve the sharded coreset and the sharded search.
* search: a bank of N / 10 rows (what a 10 % coreset keeps) and ``--queries`` fresh patches: exact in one
  process (NearestNeighbours), exact over 2 workers (ShardedNearestNeighbours, bank memory-mapped from disk)
  — identical distances and indices required — and faiss IVF-PQ (defaults of IVFPQParams) with recall@1.

Peak memory is sampled every 0.1 s over this process and its workers (VmRSS summed: pages of a shared file
mapped by several processes count once per process, an upper bound), and the bytes the stage wrote to disk.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from generalad.nn.coreset import greedy_coreset
from generalad.nn.knn import IVFPQParams, NearestNeighbours
from generalad.nn.sharded import ShardedNearestNeighbours, ShardPool, sharded_greedy_coreset

DIM = 152
ROWS = 1 << 18  # rows generated at once


class PeakRSS:
    """Largest summed VmRSS of this process and its descendants while the ``with`` block runs (MB)."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, sum(_rss_mb(p) for p in _tree(os.getpid())))
            if self._stop.wait(0.1):
                return


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return out


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def mixture(path: Path, n: int, seed: int) -> np.ndarray:
    """(n, DIM) fp16 .npy of a seeded 64-component Gaussian mixture, memory-mapped (written in blocks)."""
    g = torch.Generator().manual_seed(1234)  # the same mixture for every size and for the queries
    rot = torch.linalg.qr(torch.randn(DIM, DIM, generator=g))[0]
    scale = 1.0 / torch.arange(1, DIM + 1, dtype=torch.float32) ** 0.8
    centres = torch.randn(64, DIM, generator=g) * 2.0
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, DIM))
    g = torch.Generator().manual_seed(seed)
    for s in range(0, n, ROWS):
        m = min(ROWS, n - s)
        comp = torch.randint(64, (m,), generator=g)
        out[s : s + m] = ((centres[comp] + torch.randn(m, DIM, generator=g)) * scale @ rot).half().numpy()
    out.flush()
    return np.load(path, mmap_mode="r")


def timed(fn):
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        value = fn()
        wall = time.perf_counter() - t0
    return value, wall, rss.peak


def bench_size(n: int, args: argparse.Namespace) -> dict:
    work = Path(args.work) / f"n{n}"
    work.mkdir(parents=True, exist_ok=True)
    x = mixture(work / "x.npy", n, seed=0)
    row = {"n": n, "dim": DIM, "x_disk_mb": round((work / "x.npy").stat().st_size / 1e6, 1), "picks": args.picks}
    with warnings.catch_warnings():  # a read-only memmap: torch only reads it, and copying 10^7 rows would defeat it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        xt = torch.from_numpy(np.asarray(x))  # fp16 pages from the page cache; projected in 32768-row chunks
    single, t1, r1 = timed(lambda: greedy_coreset(xt, n=args.picks, proj_dim=128, seed=0))
    bank_dir = work / "coreset_shards"
    pool, t0, _ = timed(lambda: ShardPool(2))  # started once, for the sharded coreset and search
    sharded, t2, r2 = timed(lambda: sharded_greedy_coreset(work / "x.npy", pool=pool, bank_dir=bank_dir,
                                                            n=args.picks, proj_dim=128, seed=0))
    row["workers_start_s"] = round(t0, 2)
    row["coreset"] = {
        "single_s": round(t1, 2), "single_ms_per_pick": round(1e3 * t1 / args.picks, 2),
        "single_peak_rss_mb": round(r1),
        "sharded2_s": round(t2, 2), "sharded2_ms_per_pick": round(1e3 * t2 / args.picks, 2),
        "sharded2_peak_rss_mb": round(r2), "sharded2_disk_mb": round(_du_mb(bank_dir), 1),
        "identical": bool(torch.equal(single, sharded)),
    }
    print(json.dumps(row["coreset"]), flush=True)
    (bank_dir / "z.npy").unlink()
    row["search"] = bench_search(work, x[: n // 10], args, pool)
    pool.close()
    print(json.dumps(row["search"]), flush=True)
    return row


def bench_search(work: Path, bank_rows: np.ndarray, args: argparse.Namespace, pool: ShardPool) -> dict:
    m = bank_rows.shape[0]
    np.save(work / "bank.npy", bank_rows)
    queries = torch.from_numpy(np.asarray(mixture(work / "queries.npy", args.queries, seed=1))).float()
    bank = torch.from_numpy(np.asarray(bank_rows)).float()
    index = NearestNeighbours(bank)
    (d1, i1), t1, r1 = timed(lambda: index.search(queries))
    sharded = ShardedNearestNeighbours(work / "bank.npy", pool=pool, bank_dir=work / "search_shards")
    (d2, i2), t2, r2 = timed(lambda: sharded.search(queries))
    sharded.close()
    ivf, tb, rb = timed(lambda: NearestNeighbours(bank, backend="ivfpq", ivf=IVFPQParams()))
    (d3, _), t3, r3 = timed(lambda: ivf.search(queries))
    q = args.queries
    return {
        "bank": m, "bank_disk_mb": round((work / "bank.npy").stat().st_size / 1e6, 1), "queries": q,
        "single_s": round(t1, 2), "single_qps": round(q / t1), "single_peak_rss_mb": round(r1),
        "sharded2_s": round(t2, 2), "sharded2_qps": round(q / t2), "sharded2_peak_rss_mb": round(r2),
        "identical": bool(torch.equal(d1, d2) and torch.equal(i1, i2)),
        "ivfpq": {**{k: v for k, v in vars(ivf.ivf).items()}, "build_s": round(tb, 2), "build_peak_rss_mb": round(rb),
                  "search_s": round(t3, 2), "qps": round(q / t3), "peak_rss_mb": round(r3),
                  "recall_at_1": float((d3 == d1).float().mean()),
                  "mean_rel_excess": float(((d3 - d1) / d1.clamp_min(1e-12)).mean())},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--picks", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--work", default="runs/scale/bench")
    ap.add_argument("--out", default="runs/scale/bench/results.json")
    args = ap.parse_args()
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.split(":")[-1]
    meta = {"cpu": cpu.strip(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "load_avg_start": os.getloadavg()}
    print(json.dumps(meta), flush=True)
    rows = []
    for n in args.sizes:
        rows.append(bench_size(n, args))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**meta, "load_avg_end": os.getloadavg(), "rows": rows}, indent=1))
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    print("| N | stage | 1 process: wall s (rate) / peak RSS MB | 2 workers: wall s (rate) / peak RSS MB / disk MB "
          "| identical | IVF-PQ |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        c, s, v = r["coreset"], r["search"], r["search"]["ivfpq"]
        print(f"| {r['n']:,} | coreset, {r['picks']} picks | {c['single_s']} ({c['single_ms_per_pick']} ms/pick) / "
              f"{c['single_peak_rss_mb']} | {c['sharded2_s']} ({c['sharded2_ms_per_pick']} ms/pick) / "
              f"{c['sharded2_peak_rss_mb']} / {c['sharded2_disk_mb']} | {c['identical']} | – |")
        print(f"| {r['n']:,} | search {s['queries']:,} q, bank {s['bank']:,} | {s['single_s']} "
              f"({s['single_qps']} q/s) / {s['single_peak_rss_mb']} | {s['sharded2_s']} ({s['sharded2_qps']} q/s) / "
              f"{s['sharded2_peak_rss_mb']} / "
              f"{s['bank_disk_mb']} | {s['identical']} | build {v['build_s']} s, {v['search_s']} s ({v['qps']} q/s), "
              f"recall@1 {v['recall_at_1']:.3f} |")


if __name__ == "__main__":
    main()
