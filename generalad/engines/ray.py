"""``generalad predict --engine ray``: the local engine's chunks, scored by a pool of Ray actors (docs/SCALE.md).

Pipeline (Ray Data): one row per chunk still to score — ``chunk_size(model)`` inputs from an index that is a
multiple of it, exactly the local engine's chunks — ``map_batches`` of :class:`ChunkScorer` (a callable
class: each actor loads the model, torch or exported, once) on an ``ActorPoolStrategy`` of ``workers``
actors with ``cpus_per_worker`` CPUs (its intra-op threads) and, where the cluster has GPUs, a GPU share.
The actors read the image files themselves (``generalad.data.read_image``, the decoder of the local
engine), score the chunk with :func:`generalad.predict.score_chunk`, write its overlays / maps and then its
rows as one shard file, atomically: ``OUT/shards/rows-<start>.jsonl``. The driver merges the shards in
input order into ``predictions.jsonl`` / ``.csv`` and ``failed.txt``.

Resuming: ``OUT/shards/manifest.json`` records what the rows depend on (the model's identity and
calibration, the chunk size, the output options). A rerun with the same manifest keeps every shard whose
rows are the current inputs at the same indices, scored without error, with their overlays / maps on disk,
and sends only the other chunks to Ray (none left: Ray is not started). A different manifest discards the
shards.

Faults: Ray Data restarts a dead actor and retries its task (``max_restarts`` / ``max_task_retries`` -1 are
its actor-pool defaults). A task rewrites the same overlay and shard files atomically, so a retry can
neither lose nor duplicate a row. A chunk whose worker died ``MAX_ATTEMPTS`` times (a file that exhausts
memory, say) is written as error rows instead of being retried forever.

Inputs and ``OUT`` must be paths every node can read and write (one machine, or a shared filesystem).
"""

from __future__ import annotations

import contextlib
import sys
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from generalad.data import Sample
from generalad import errors
from generalad.errors import ConfigError, GeneralADError
from generalad.io import JsonlWriter, atomic_write_json, atomic_write_text, dumps_json, sha256_file
from generalad.predict import (
    ERROR_COLUMN, FailedImage, RowWriter, chunk_size, load_predictor, record_of, score_chunk, set_chunk_size,
    write_prediction_files,
)

SHARD_DIR = "shards"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
MAX_ATTEMPTS = 3
RAY_LOG = "ray-driver.log"  # a quiet run's stdout + stderr while Ray runs (Ray's own log lines)
RAY_EXTRA = 'pip install "generalad[ray]"'


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(f"--engine ray needs Ray Data, which is not installed: {RAY_EXTRA}") from None
    return ray


def shard_path(shards: Path, start: int) -> Path:
    return shards / f"rows-{start:06d}.jsonl"


def _attempts_path(shards: Path, start: int) -> Path:
    return shards / f"attempts-{start:06d}"


def read_shard(path: Path) -> list[dict[str, Any]] | None:
    """Rows of a shard file, or None when it is missing or unreadable (it is then scored again)."""
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return None


def write_shard(shards: Path, start: int, rows: Sequence[Any]) -> Path:
    with JsonlWriter(shard_path(shards, start)) as w:
        for r in rows:
            w.write(record_of(r))
    return shard_path(shards, start)


# --------------------------------------------------------------------------- the actor


class ChunkScorer:
    """Ray Data callable class: loads the model once per actor, then scores one chunk per call.

    ``hooks`` (tests only): ``log_dir`` — write ``<pid>.init``, ``<pid>.begin-<start>``, ``<pid>.done-<start>``
    marker files there; ``delay_s`` — sleep that long after each ``begin``.
    """

    def __init__(self, run: str, *, weights: str | None, device: str | None, chunk: int, threads: int,
                 out_dir: str, display_dir: str, save_maps: bool, overlays: bool,
                 hooks: dict[str, Any] | None = None) -> None:
        self.hooks = dict(hooks or {})
        self.shards = Path(out_dir) / SHARD_DIR
        # a user error (weights missing on this node, say) goes back to the driver as data: Ray Data passes a
        # worker's exception on as text only, and the CLI owes the user one line
        self.error: GeneralADError | None = None
        try:
            self.model = load_predictor(run, weights=weights, device=device, batch_size=chunk, threads=threads)
            set_chunk_size(self.model, chunk)
            self.writer = RowWriter(self.model, out_dir, save_maps=save_maps, overlays=overlays,
                                    display_dir=display_dir)
        except GeneralADError as err:
            self.error = err
        self._mark("init")

    def _mark(self, what: str) -> None:
        log = self.hooks.get("log_dir")
        if log:
            atomic_write_text(Path(log) / f"{os.getpid()}.{what}", f"{time.time()}\n")

    def _attempt(self, start: int) -> int:
        """Count this attempt at ``start`` (a retried task after a dead worker counts again)."""
        path = _attempts_path(self.shards, start)
        try:
            n = int(path.read_text().strip() or 0) + 1
        except (OSError, ValueError):
            n = 1
        atomic_write_text(path, f"{n}\n")
        return n

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"start": [], "n": [], "n_failed": [], "seconds": [], "error": [], "error_type": []}
        for start, paths_json in zip(batch["start"], batch["paths"]):
            try:
                n, n_failed, seconds = self._chunk(int(start), str(paths_json))
                error, kind = "", ""
            except GeneralADError as err:
                n, n_failed, seconds, error, kind = 0, 0, 0.0, str(err), type(err).__name__
            for key, value in zip(out, (int(start), n, n_failed, seconds, error, kind)):
                out[key].append(value)
        return {k: np.asarray(v) for k, v in out.items()}

    def _chunk(self, start: int, paths_json: str) -> tuple[int, int, float]:
        if self.error is not None:
            raise self.error
        shown, opened = json.loads(paths_json)
        self._mark(f"begin-{start}")
        attempt = self._attempt(start)
        if self.hooks.get("delay_s"):
            time.sleep(float(self.hooks["delay_s"]))
        t0 = time.perf_counter()
        samples = [Sample(path=p, label=-1, split="predict") for p in opened]
        if attempt > MAX_ATTEMPTS:
            why = f"the worker scoring images {start}-{start + len(shown) - 1} died {attempt - 1} times (out of memory?)"
            rows: list[Any] = [FailedImage(path=p, error=why) for p in shown]
        else:
            results = score_chunk(self.model, samples)
            rows = self.writer.rows(start, samples, results, time.perf_counter() - t0, paths=shown)
        write_shard(self.shards, start, rows)
        _attempts_path(self.shards, start).unlink(missing_ok=True)
        self._mark(f"done-{start}")
        return len(rows), sum(isinstance(r, FailedImage) for r in rows), time.perf_counter() - t0


# --------------------------------------------------------------------------- the driver


@contextlib.contextmanager
def _ray_output(log: Path | None):
    """While Ray runs: stdout (file descriptor 1) to stderr, so that the CLI's stdout stays its one JSON line
    (Ray prints worker deaths and retries there); with ``log``, both to that file (a quiet run: Ray's C++ core
    logs to the process' stderr too)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        if log is not None:
            with open(log, "ab") as f:
                os.dup2(f.fileno(), 1)
                os.dup2(f.fileno(), 2)
        else:
            os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _sha256_file(path: Path) -> str | None:
    if not path.is_file():
        return None
    return sha256_file(path)  # streamed (a graph can be hundreds of MB)


def fingerprint(model: Any, run: str, *, chunk: int, save_maps: bool, overlays: bool, weights: str | None,
                display_dir: str) -> dict[str, Any]:
    """What the rows depend on, apart from the inputs and the intra-op thread count (manifest.json)."""
    desc = model.describe()
    return {
        "run": str(Path(run).resolve()),
        "config_sha256": _sha256_file(Path(run) / "config.json") or _sha256_file(Path(run) / "deploy.json"),
        "describe": {k: desc.get(k) for k in ("model", "backbone", "weights_sha256", "image_size", "export_format")},
        "threshold": model.threshold_,
        "pixel_threshold": model.pixel_threshold_,
        "display_range": list(model.pixel_calibration_.display_range()),
        "weights": weights, "chunk": chunk, "save_maps": save_maps, "overlays": overlays, "out": display_dir,
    }


def _usable(rows: list[dict[str, Any]] | None, shown: Sequence[str], start: int, writer_files) -> bool:
    if rows is None or [r.get("path") for r in rows] != list(shown):
        return False
    if any(ERROR_COLUMN in r for r in rows):  # failed files are tried again
        return False
    return all(p.is_file() for k, path in enumerate(shown) for p in writer_files(start + k, path))


def _placement(ray, workers: int, cpus: int | None, gpus: float | None) -> tuple[int, float]:
    """(CPUs, GPUs) per worker: the most CPUs that still places ``workers`` actors on the live nodes."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    node_cpus = [int(n.get("Resources", {}).get("CPU", 0)) for n in nodes]
    total_gpus = float(sum(n.get("Resources", {}).get("GPU", 0) for n in nodes))

    def fits(c: int) -> bool:
        return sum(nc // c for nc in node_cpus) >= workers

    if cpus is None:
        cpus = max((c for c in range(1, max(node_cpus, default=0) + 1) if fits(c)), default=0)
        if cpus == 0:
            raise ConfigError(f"--workers {workers} does not fit the Ray cluster's CPUs (per node: "
                              f"{', '.join(map(str, node_cpus)) or 'none'}); use fewer workers")
    elif not fits(cpus):
        raise ConfigError(f"{workers} workers of {cpus} CPUs (--threads) do not fit the Ray cluster's CPUs "
                          f"(per node: {', '.join(map(str, node_cpus))})")
    if gpus is None:
        gpus = 0.0 if total_gpus == 0 else (1.0 if total_gpus >= workers else total_gpus / workers)
    return cpus, float(gpus)


def predict_ray(
    run: str | os.PathLike[str], paths: Sequence[str], out_dir: str | os.PathLike[str], *,
    address: str | None = None, workers: int = 2, chunk: int | None = None, threads: int | None = None,
    gpus_per_worker: float | None = None, weights: str | None = None, device: str | None = None,
    save_maps: bool = False, overlays: bool = True, progress: bool = False, hooks: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Score ``paths`` with a Ray actor pool; returns (rows of predictions.jsonl in input order, run stats).

    ``address``: an existing cluster (``ray.init(address=...)``: "auto", "ray://host:10001", ...); without it a
    local cluster of this machine's CPUs is started for the run and stopped after it (an already initialised
    Ray in this process is used as it is). ``threads``: CPUs (= intra-op threads) per worker; default the
    most that still places ``workers`` workers. ``gpus_per_worker``: default 1 when the cluster has a GPU per
    worker, an equal share when it has fewer, 0 without GPUs (the workers then run on the CPU).
    """
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    run = str(run)
    display_dir = str(out_dir)
    out = Path(out_dir).resolve()
    shards = out / SHARD_DIR

    # the model once on the driver: one-line errors before any cluster starts, the chunk size, the manifest
    model = load_predictor(run, weights=weights, device="cpu", batch_size=chunk)
    if chunk is not None:
        set_chunk_size(model, chunk)
    size = chunk_size(model)
    threshold = model.threshold_
    manifest = {"format": MANIFEST_FORMAT, "fingerprint": fingerprint(
        model, run, chunk=size, save_maps=save_maps, overlays=overlays, weights=weights, display_dir=display_dir)}
    files = RowWriter(model, out, save_maps=save_maps, overlays=overlays).expected_files
    del model

    shards.mkdir(parents=True, exist_ok=True)
    try:
        previous = json.loads((shards / MANIFEST).read_text())
    except (OSError, ValueError):
        previous = None
    if previous != json.loads(dumps_json(manifest)):
        for old in list(shards.glob("rows-*.jsonl")) + list(shards.glob("attempts-*")):
            old.unlink()
        atomic_write_json(shards / MANIFEST, manifest)

    shown = [str(p) for p in paths]
    opened = [str(Path(p).resolve()) for p in paths]
    starts = list(range(0, len(shown), size))
    todo = []
    for s in starts:
        if not _usable(read_shard(shard_path(shards, s)), shown[s : s + size], s, files):
            _attempts_path(shards, s).unlink(missing_ok=True)
            todo.append(s)
    n_todo = sum(len(shown[s : s + size]) for s in todo)

    stats: dict[str, Any] = {"engine": "ray", "n_chunks": len(starts), "chunk": size, "n_chunks_run": len(todo),
                             "n_reused": len(shown) - n_todo, "workers": 0, "cpus_per_worker": None,
                             "gpus_per_worker": None, "seconds": 0.0}
    t0 = time.perf_counter()
    if todo:
        # quiet: Ray's own lines (one "E" line per actor start from the C++ core, as Ray Data keeps actor
        # constructors in the object store, which only matters if the driver dies) go to a file
        with _ray_output(None if progress else shards / RAY_LOG):
            stats |= _run_pipeline(
                todo, shown, opened, size, address=address, workers=workers, threads=threads, gpus=gpus_per_worker,
                ctor=dict(run=str(Path(run).resolve()), weights=str(Path(weights).resolve()) if weights else None,
                          device=device, chunk=size, out_dir=str(out),
                          display_dir=display_dir, save_maps=save_maps, overlays=overlays, hooks=hooks),
                progress=progress)
    stats["seconds"] = round(time.perf_counter() - t0, 3)

    rows: list[dict[str, Any]] = []
    for s in starts:
        part = read_shard(shard_path(shards, s))
        if part is None or [r.get("path") for r in part] != shown[s : s + size]:
            raise RuntimeError(f"ray engine: shard {shard_path(shards, s)} is missing or does not match its inputs")
        rows.extend(part)
    write_prediction_files(rows, out)
    stats["threshold"] = threshold
    stats["images_per_second"] = round(n_todo / stats["seconds"], 3) if n_todo and stats["seconds"] else None
    return rows, stats


def _run_pipeline(todo: list[int], shown: list[str], opened: list[str], size: int, *, address: str | None,
                  workers: int, threads: int | None, gpus: float | None, ctor: dict[str, Any], progress: bool,
                  ) -> dict[str, Any]:
    ray = _import_ray()
    from ray.data import ActorPoolStrategy, DataContext

    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": progress,
                                  "logging_level": logging.WARNING if progress else logging.ERROR}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, **kwargs)
        started = True
    try:
        n_actors = min(workers, len(todo))
        cpus, gpus = _placement(ray, n_actors, threads, gpus)
        device = ctor["device"]
        if gpus == 0 and device in (None, "auto"):
            device = "cpu"  # a worker without a GPU share must not pick up a visible GPU
        logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.ERROR)
        ctx = DataContext.get_current()
        ctx.enable_progress_bars = progress
        ctx.enable_operator_progress_bars = progress
        items = [{"start": s, "paths": json.dumps([shown[s : s + size], opened[s : s + size]])} for s in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            ChunkScorer, batch_size=1, batch_format="numpy",
            compute=ActorPoolStrategy(size=n_actors, max_tasks_in_flight_per_actor=1),
            num_cpus=cpus, num_gpus=gpus or None,
            fn_constructor_kwargs={**ctor, "device": device, "threads": cpus},
        )
        n_failed = 0
        for row in ds.iter_rows():
            if row["error"]:  # a user error in a worker: its one line, as the local engine would raise it
                kind = getattr(errors, str(row["error_type"]), GeneralADError)
                raise (kind if isinstance(kind, type) and issubclass(kind, GeneralADError) else GeneralADError)(
                    str(row["error"]))
            n_failed += int(row["n_failed"])
        return {"workers": n_actors, "cpus_per_worker": cpus, "gpus_per_worker": gpus, "n_failed_run": n_failed}
    finally:
        if started:
            ray.shutdown()
