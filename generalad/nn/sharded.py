"""Sharded exact greedy coreset and nearest-neighbour search over worker processes (docs/SCALE.md,
"PatchCore banks beyond memory").

The (M, D) rows are split into contiguous shards, one per worker process (``spawn``: a fresh interpreter, no
forked OpenMP state). The rows live in ``.npy`` files that every worker memory-maps (its own row range only):
in ``bank_dir`` on disk, so a bank larger than RAM is paged from disk, or by default in a temporary folder on
/dev/shm (RAM shared by the processes, never copied per worker).

Identical results to one process (checked by tests/nn/test_sharded.py and on magnetic tile, docs/RESULTS.md):

* **Coreset** (``sharded_greedy_coreset``): the lazy greedy of generalad.nn.coreset, distributed. Each worker
  projects its rows, keeps their ``mind`` and refreshes it against the pending centres; per refresh it reports
  its local top (t + 1) stale values with their rows; the coordinator merges them by (value descending, index
  ascending) — the order ``ordered_top`` gives in one process — and runs the very same pick loop
  (``pick_candidates``). The centring mean is ``z.mean(0)`` of the one shared (M, d) projection file, computed
  by the coordinator with the same torch call as the in-process code. Shard starts are multiples of ``chunk``,
  so every refresh GEMM sees the same row blocks.
* **Search** (``ShardedNearestNeighbours``): each worker ranks its shard with the in-process expansion
  ‖b‖² − 2q·b (argmin, first index on ties) and recomputes its winner's distance by explicit differences; the
  coordinator keeps, per query, the smallest ranking value, equal values by the lowest global index — which is
  the argmin of one (Q, M) block.

Both rest on MKL's sgemm computing every output element the same way whatever the matrix sizes and thread
count (measured on the 2-core Intel Xeon: row blocks, column blocks and 1 vs 2 threads all bit-identical); the
tests re-check it. Costs (same machine, docs/RESULTS.md "Scale-out (issue 19)"): the workers start in ~3 s
(spawn + import torch); per coreset refresh the coordinator exchanges ~0.5 MB per worker.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generalad.errors import ConfigError, GeneralADError, one_line

__all__ = ["ShardPool", "shard_bounds", "sharded_greedy_coreset", "ShardedNearestNeighbours", "as_npy"]

_SEARCH_BLOCK = 1 << 18  # bank rows converted/ranked at once by a search worker (160 MB of fp32 at D = 152)
_GEMM_ENTRIES = 1 << 24  # entries of one (queries, rows) ranking block, 64 MB — as NearestNeighbours on the CPU


def shard_bounds(m: int, shards: int, align: int = 1) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) row ranges of about M / shards rows; every start a multiple of ``align``.

    Fewer ranges than ``shards`` when M holds fewer than ``shards`` blocks of ``align`` rows (no empty shard).
    """
    if shards < 1:
        raise ConfigError(f"shards must be >= 1, got {shards}")
    blocks = -(-m // align)
    n = min(shards, blocks)
    cuts = [min(m, (blocks * i // n) * align) for i in range(n + 1)]
    return [(cuts[i], cuts[i + 1]) for i in range(n)]


def as_npy(x: torch.Tensor | np.ndarray | str | Path, directory: Path, name: str) -> Path:
    """``x`` as an .npy file the workers can memory-map: a path is used as it is, an array is written."""
    if isinstance(x, (str, Path)):
        return Path(x)
    path = directory / f"{name}.npy"
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    np.save(path, np.ascontiguousarray(arr))
    return path


def _open_rows(path: Path, mode: str = "c") -> np.ndarray:
    """Memory-map an .npy file (mode "c": writable copy-on-write view, so torch.from_numpy does not warn)."""
    arr = np.load(path, mmap_mode=mode)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ConfigError(f"sharded: {path} must hold a non-empty 2-D (M, D) array, got shape {arr.shape}")
    return arr


# ------------------------------------------------------------------------------------------------ worker pool
class ShardPool:
    """``n`` worker processes, each running tasks against its own state (its shard).

    ``call(task, per_worker)`` sends worker i the keyword arguments ``per_worker[i]`` (the first
    len(per_worker) workers) and returns their results in worker order; a task that raises comes back as a
    one-line GeneralADError. Workers are daemons with ``threads`` intra-op threads each (default: this
    process's threads / n, at least 1). A pool can be passed to several coresets / indexes (``pool=``) to pay
    its start (~3 s) once; each task keeps its own state keys.
    """

    def __init__(self, n: int, threads: int | None = None) -> None:
        if mp.current_process().daemon:
            raise ConfigError("shards > 1 starts worker processes, which a daemon process cannot (use shards=1)")
        threads = threads or max(1, torch.get_num_threads() // n)
        ctx = mp.get_context("spawn")
        self._conns, self._procs = [], []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, threads), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._finalizer = weakref.finalize(self, _stop, self._conns, self._procs)

    def __len__(self) -> int:
        return len(self._conns)

    def call(self, task: str, per_worker: Sequence[dict[str, Any]]) -> list[Any]:
        if len(per_worker) > len(self):
            raise ConfigError(f"sharded: {len(per_worker)} shards for a pool of {len(self)} workers")
        conns = self._conns[: len(per_worker)]
        for conn, kwargs in zip(conns, per_worker):
            conn.send((task, kwargs))
        out = []
        for i, conn in enumerate(conns):
            try:
                status, value = conn.recv()
            except EOFError:
                raise GeneralADError(f"sharded: worker {i} died during {task!r} (out of memory?)") from None
            if status == "error":
                raise GeneralADError(f"sharded: worker {i} failed in {task!r}: {value}")
            out.append(value)
        return out

    def broadcast(self, task: str, n: int, **kwargs: Any) -> list[Any]:
        """The same task and arguments to the first ``n`` workers."""
        return self.call(task, [kwargs] * n)

    def close(self) -> None:
        self._finalizer()


def _stop(conns: list, procs: list) -> None:
    for conn in conns:
        try:
            conn.send(None)
            conn.close()
        except OSError:
            pass
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()


def _worker_main(conn, threads: int) -> None:
    """Worker loop: (task, kwargs) in, ("ok", result) or ("error", one line) out; None stops it."""
    torch.set_num_threads(threads)
    state: dict[str, Any] = {}
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        task, kwargs = msg
        try:
            conn.send(("ok", _TASKS[task](state, **kwargs)))
        except Exception as err:  # reported to the coordinator as data, the worker stays usable
            conn.send(("error", str(err) if isinstance(err, GeneralADError) else one_line(err)))


# --------------------------------------------------------------------------------------------- coreset tasks
def _cs_project(state: dict, x_path: str, z_path: str, lo: int, hi: int, proj_dim, seed: int, chunk: int) -> None:
    """Project rows [lo, hi) of x into the same rows of the shared z file (as random_projection would)."""
    from generalad.nn.coreset import random_projection

    x = torch.from_numpy(_open_rows(Path(x_path))[lo:hi])
    z = torch.from_numpy(np.load(z_path, mmap_mode="r+")[lo:hi])
    random_projection(x, proj_dim, seed=seed, chunk=chunk, out=z)
    state.update(cs_z=z, cs_lo=lo, cs_hi=hi, cs_chunk=chunk)


def _cs_center(state: dict, mean: np.ndarray) -> None:
    """z ← z − mean (in place, the same fp32 subtraction as ``z - z.mean(0)``); squared norms; mind = inf."""
    z = state["cs_z"]
    torch.sub(z, torch.from_numpy(mean), out=z)
    state["cs_sq"] = (z * z).sum(1)
    state["cs_mind"] = torch.full((z.shape[0],), float("inf"))


def _cs_refresh(state: dict, q: np.ndarray, centres: list[int], n_top: int) -> tuple:
    """_LazyGreedy.refresh on this shard, then its ordered top ``n_top``: (values, global indices, rows)."""
    from generalad.nn.coreset import ordered_top

    z, sq, mind, chunk, lo, hi = (state[f"cs_{k}"] for k in ("z", "sq", "mind", "chunk", "lo", "hi"))
    q = torch.from_numpy(q)
    qq = (q * q).sum(1).unsqueeze(0)
    for s in range(0, z.shape[0], chunk):
        d2 = torch.addmm(qq, z[s : s + chunk], q.T, alpha=-2.0)
        d2 += sq[s : s + chunk].unsqueeze(1)
        part = mind[s : s + chunk]
        torch.minimum(part, d2.amin(1).clamp_min_(0.0), out=part)
    own = [c - lo for c in centres if lo <= c < hi]
    if own:
        mind[own] = -1.0
    vals, idx = ordered_top(mind, min(n_top, mind.shape[0]))
    return vals.numpy(), (idx + lo).numpy(), z[idx].numpy()


def _cs_rows(state: dict, rows: list[int]) -> np.ndarray:
    lo = state["cs_lo"]
    return state["cs_z"][[r - lo for r in rows]].numpy()


# ---------------------------------------------------------------------------------------------- search tasks
def _nn_open(state: dict, path: str, lo: int, hi: int) -> None:
    """Map rows [lo, hi) of the bank file; their squared norms in fp32 (per row, as NearestNeighbours)."""
    bank = _open_rows(Path(path))[lo:hi]
    sq = torch.empty(bank.shape[0], dtype=torch.float32)
    for s in range(0, bank.shape[0], _SEARCH_BLOCK):
        b = torch.from_numpy(bank[s : s + _SEARCH_BLOCK]).float()
        sq[s : s + _SEARCH_BLOCK] = (b * b).sum(1)
    state.update(nn_bank=bank, nn_sq=sq, nn_lo=lo)


def _nn_search(state: dict, q: np.ndarray, k: int) -> tuple:
    """This shard's k best by ranking value: (values (Q, k), global indices (Q, k), exact d² (Q, k))."""
    bank, sq, lo = state["nn_bank"], state["nn_sq"], state["nn_lo"]
    q = torch.from_numpy(q)
    k = min(k, bank.shape[0])
    best_v = torch.full((q.shape[0], k), float("inf"))
    best_i = torch.zeros((q.shape[0], k), dtype=torch.int64)
    for b0 in range(0, bank.shape[0], _SEARCH_BLOCK):
        blk = torch.from_numpy(bank[b0 : b0 + _SEARCH_BLOCK]).float()
        step = max(16, _GEMM_ENTRIES // blk.shape[0])
        for s in range(0, q.shape[0], step):
            d2 = torch.addmm(sq[b0 : b0 + blk.shape[0]], q[s : s + step], blk.T, alpha=-2.0)
            v, i = _k_smallest(d2, min(k, blk.shape[0]))
            best_v[s : s + step], best_i[s : s + step] = _merge_smallest(
                best_v[s : s + step], best_i[s : s + step], v, i + b0, k
            )
    rows = torch.from_numpy(bank[best_i.numpy()]).float()  # (Q, k, D): explicit differences, as _exact
    exact = (rows - q[:, None]).pow_(2).sum(2)
    return best_v.numpy(), (best_i + lo).numpy(), exact.numpy()


def _k_smallest(d2: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k smallest per row, nearest first; k = 1 by argmin (first index on ties, as NearestNeighbours)."""
    if k == 1:
        i = d2.argmin(dim=1, keepdim=True)
        return d2.gather(1, i), i
    v, i = d2.topk(k, dim=1, largest=False, sorted=True)
    return v, i


def _merge_smallest(
    v1: torch.Tensor, i1: torch.Tensor, v2: torch.Tensor, i2: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k smallest of two (value, index) lists, equal values by the lower index."""
    v, i = torch.cat([v1, v2], 1), torch.cat([i1, i2], 1)
    i, o = i.sort(dim=1)
    v, o2 = v.gather(1, o).sort(dim=1, stable=True)
    return v[:, :k], i.gather(1, o2[:, :k])


_TASKS: dict[str, Callable[..., Any]] = {
    "cs_project": _cs_project,
    "cs_center": _cs_center,
    "cs_refresh": _cs_refresh,
    "cs_rows": _cs_rows,
    "nn_open": _nn_open,
    "nn_search": _nn_search,
}


# ------------------------------------------------------------------------------------------------ coordinator
class _WorkDir:
    """``bank_dir`` (kept) or a temporary folder on /dev/shm when it exists (removed with the object)."""

    def __init__(self, bank_dir: str | Path | None) -> None:
        if bank_dir is not None:
            self.path = Path(bank_dir)
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"bank_dir: cannot create {self.path}: {one_line(err)}") from None
            self._cleanup = None
        else:
            shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            self.path = Path(tempfile.mkdtemp(prefix="generalad-shards-", dir=shm))
            self._cleanup = weakref.finalize(self, shutil.rmtree, self.path, True)

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()


def sharded_greedy_coreset(
    x: torch.Tensor | np.ndarray | str | Path,
    *,
    shards: int = 2,
    bank_dir: str | Path | None = None,
    ratio: float | None = 0.1,
    n: int | None = None,
    proj_dim: int | None = 128,
    seed: int = 0,
    start: int | None = None,
    batch: int = 128,
    candidates: int = 1024,
    chunk: int = 32768,
    threads: int | None = None,
    pool: ShardPool | None = None,
) -> torch.Tensor:
    """``greedy_coreset(x, method="lazy", ...)`` over ``shards`` worker processes: the same indices.

    x: (M, D) features (any float dtype) or the path of an .npy file holding them (memory-mapped, never read
    whole). The projected (M, proj_dim) fp32 points go to ``bank_dir``/z.npy (kept; a temporary /dev/shm
    folder when None). Returns a CPU LongTensor (n,) in selection order. Every argument means what it means
    for greedy_coreset. Only the lazy method is sharded (the dense one is ~9x slower, coreset.py docstring).
    ``pool``: run on these workers (``shards`` = its size) instead of starting and stopping ``shards`` new ones.
    """
    from generalad.nn.coreset import _count

    if batch < 1 or candidates < 1:
        raise ConfigError(f"coreset: batch and candidates must be >= 1, got {batch} and {candidates}")
    work = _WorkDir(bank_dir)
    x_path = as_npy(x, work.path, "x")
    m, dim = _open_rows(x_path).shape
    k = _count(m, ratio, n)
    if start is None:
        start = int(torch.randint(m, (1,), generator=torch.Generator().manual_seed(int(seed) + 1)))
    if not 0 <= start < m:
        raise ConfigError(f"coreset: start must be in [0, {m}), got {start}")
    d = dim if not proj_dim or proj_dim >= dim else int(proj_dim)
    z_path = work.path / "z.npy"
    z_all = np.lib.format.open_memmap(z_path, mode="w+", dtype=np.float32, shape=(m, d))
    bounds = shard_bounds(m, len(pool) if pool is not None else shards, align=chunk)
    own_pool = pool is None
    pool = pool or ShardPool(len(bounds), threads)
    try:
        pool.call("cs_project", [dict(x_path=str(x_path), z_path=str(z_path), lo=lo, hi=hi, proj_dim=proj_dim,
                                      seed=seed, chunk=chunk) for lo, hi in bounds])
        z_all.flush()
        mean = torch.from_numpy(np.load(z_path, mmap_mode="r+")).mean(0)  # as `z - z.mean(0)` in one process
        pool.broadcast("cs_center", len(bounds), mean=mean.numpy())
        owner = next(i for i, (lo, hi) in enumerate(bounds) if lo <= start < hi)
        rows = pool.call("cs_rows", [dict(rows=[start] if i == owner else []) for i in range(len(bounds))])
        sel = _sharded_lazy(pool, len(bounds), k, start, rows[owner], min(candidates, m - 1), batch)
    finally:
        if own_pool:
            pool.close()
        del z_all
        work.close()
    return torch.from_numpy(sel)


def _sharded_lazy(
    pool: ShardPool, n_shards: int, k: int, start: int, start_row: np.ndarray, t: int, batch: int
) -> np.ndarray:
    """The coordinator's side of _LazyGreedy.run: merge the shards' top lists, pick with the shared loop."""
    from generalad.nn.coreset import pick_candidates

    sel = np.empty(k, dtype=np.int64)
    sel[0], done, pending, q = start, 1, [start], start_row
    while done < k:
        parts = pool.broadcast("cs_refresh", n_shards, q=q, centres=pending, n_top=t + 1)
        vals = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        gidx = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        rows = torch.from_numpy(np.concatenate([p[2] for p in parts]))
        vals, order = _merge_desc(vals, gidx, t + 1)
        cand = rows[order[:t]]
        picks = pick_candidates(vals, cand, done, k, batch, None)
        pending = [int(gidx[order[j]]) for j in picks]
        q = cand[picks].numpy()
        sel[done : done + len(picks)] = pending
        done += len(picks)
    return sel


def _merge_desc(vals: torch.Tensor, gidx: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the first n of the concatenated shard lists by value descending, then global index."""
    by_idx = gidx.argsort()
    v, o = vals[by_idx].sort(descending=True, stable=True)
    return v[:n], by_idx[o[:n]]


class ShardedNearestNeighbours:
    """Exact 1-NN / k-NN over a bank split across ``shards`` worker processes; NearestNeighbours' results.

    bank: (M, D) array or the path of an .npy file (memory-mapped by the workers, row range each; fp16 files
    are ranked in fp32 blocks of 2^18 rows). ``search`` returns (distances fp32 (Q, k), indices int64 (Q, k))
    on the CPU, identical to ``NearestNeighbours(bank).search`` (k = 1; for k > 1 equal ranking values may come
    in another order). ``close()`` (or garbage collection) stops the workers (not a ``pool=`` passed in).
    """

    def __init__(self, bank: torch.Tensor | np.ndarray | str | Path, *, shards: int = 2,
                 bank_dir: str | Path | None = None, threads: int | None = None,
                 pool: ShardPool | None = None) -> None:
        self._work = _WorkDir(bank_dir)
        path = as_npy(bank, self._work.path, "bank")
        self._m, self.dim = _open_rows(path).shape
        self.bounds = shard_bounds(self._m, len(pool) if pool is not None else shards)
        self._own_pool = pool is None
        self._pool = pool or ShardPool(len(self.bounds), threads)
        self._pool.call("nn_open", [dict(path=str(path), lo=lo, hi=hi) for lo, hi in self.bounds])

    def __len__(self) -> int:
        return self._m

    def close(self) -> None:
        if self._own_pool:
            self._pool.close()
        self._work.close()

    def search(self, queries: torch.Tensor | np.ndarray, k: int = 1, *, squared: bool = False,
               on_device: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances (Q, k), indices (Q, k)), nearest first; CPU tensors (``on_device`` is accepted, unused)."""
        q = torch.as_tensor(queries).detach().to("cpu", torch.float32).contiguous()
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ConfigError(f"nearest neighbours: queries must be (Q, {self.dim}), got shape {tuple(q.shape)}")
        if not 1 <= k <= self._m:
            raise ConfigError(f"nearest neighbours: k must be in [1, {self._m}], got {k}")
        parts = self._pool.broadcast("nn_search", len(self.bounds), q=q.numpy(), k=k)
        v = torch.from_numpy(np.concatenate([p[0] for p in parts], 1))
        i = torch.from_numpy(np.concatenate([p[1] for p in parts], 1))
        e = torch.from_numpy(np.concatenate([p[2] for p in parts], 1))
        _, pos = _positions_smallest(v, i, k)
        d2, idx = e.gather(1, pos), i.gather(1, pos)
        d2, order = d2.sort(dim=1, stable=True)  # as NearestNeighbours._exact: nearest (exact) first
        idx = idx.gather(1, order)
        return (d2 if squared else d2.sqrt_()), idx


def _positions_smallest(v: torch.Tensor, i: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, positions of the k smallest ranking values, equal values by the lower global index."""
    by_idx = i.argsort(dim=1)
    vs, o = v.gather(1, by_idx).sort(dim=1, stable=True)
    return vs[:, :k], by_idx.gather(1, o[:, :k])
