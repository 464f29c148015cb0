"""Batched feature extraction with an on-disk cache (docs/methods/generalad.md §2, "Cache").

A frozen backbone without augmentation gives the same features for the same image every time, so each
image's features are stored once, fp16, in ``<cache_dir>/<key[:2]>/<key>.safetensors``. The key hashes
everything the features depend on: backbone name, weights sha256, layers, input size, precision, whether
attention was kept, the pre-processing version and the image's content hash.

Devices: the backbone runs wherever its parameters are; batches are moved there and the features come back
as float32 CPU tensors whatever the device. On CUDA each batch is pinned by the decode thread and uploaded
with ``non_blocking``, and its features are downloaded into pinned buffers without blocking: the host
stores batch k (collector copy, fp16 cache files) while the GPU runs batch k+1. Precision "auto" is
resolved on the backbone's device (generalad.device) before it enters the cache key.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from generalad.backbones.base import Backbone, FeatureSet, preprocess
from generalad.device import autocast, resolve_precision, synchronize
from generalad.errors import ConfigError

CACHE_FORMAT = 1
PREFETCH_DEPTH = 2  # batches decoded ahead of the one the backbone runs (bounded memory: 2 input batches)
FIRST_BATCH = 4  # images in the first batch of a pass (see iter_features)
PREPROCESS_VERSION = "bicubic-antialias-clamp-v1"  # bump when preprocess() changes its output


def _data_api() -> tuple[Callable[[Any], np.ndarray], Callable[[Any], str]]:
    from generalad.data import content_hash, read_image  # lazy: data and backbones are independent packages

    return read_image, content_hash


def _check_precision(precision: str, device: torch.device) -> str:
    """``"bf16"``/``"fp32"`` as given, ``"auto"`` resolved on ``device``; else a one-line ConfigError."""
    return resolve_precision(precision, device)


def _device(backbone: Backbone) -> torch.device:
    return next(backbone.parameters()).device


def _to_host(tensors: list[torch.Tensor], device: torch.device) -> tuple[list[torch.Tensor], Any]:
    """float32 CPU copies of ``tensors`` and what to wait on before reading them (None: ready now).

    On CUDA the copies go into pinned buffers with ``non_blocking`` and a CUDA event marks their end, so
    the caller can queue the next batch before waiting; elsewhere ``.float().cpu()`` (synchronous).
    """
    if device.type != "cuda":
        return [t.float().cpu() for t in tensors], None
    out = []
    for t in tensors:
        t = t.float()
        host = torch.empty(t.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(t, non_blocking=True)
        out.append(host)
    done = torch.cuda.Event()
    done.record(torch.cuda.current_stream(device))
    return out, done


def feature_key(
    backbone: Backbone, size: tuple[int, int], precision: str, with_attention: bool, image_hash: str,
    jpeg_draft: bool = False,
) -> str:
    fields = {
        "format": CACHE_FORMAT,
        "preprocess": PREPROCESS_VERSION,
        "backbone": backbone.name,
        "weights_sha256": backbone.weights_sha256,
        "layers": list(backbone.layers),
        "image_size": list(size),
        "precision": precision,
        "attention": bool(with_attention),
        "image": image_hash,
        **({"jpeg_draft": True} if jpeg_draft else {}),  # absent when off: keys of existing caches stay valid
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------- cache files
def _cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / f"{key}.safetensors"


def _read_cached(path: Path, n_maps: int, with_attention: bool) -> list[torch.Tensor] | None:
    """[map_0, …, (attention)] as float32, or None when absent or unreadable (then it is recomputed)."""
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        out = [tensors[f"map.{i}"].float() for i in range(n_maps)]
        if with_attention:
            out.append(tensors["attention"].float())
    except Exception:  # noqa: BLE001 — a truncated or foreign file is a cache miss, not an error
        return None
    return out


def _write_cached(path: Path, tensors: list[torch.Tensor], with_attention: bool, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    n_maps = len(tensors) - int(with_attention)
    named = {f"map.{i}": t for i, t in enumerate(tensors[:n_maps])}
    if with_attention:
        named["attention"] = tensors[-1]
    named = {k: v.to(torch.float16).contiguous() for k, v in named.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(named, str(tmp), metadata=meta)
    os.replace(tmp, path)  # atomic: readers see the old state or the whole new file


# ----------------------------------------------------------------------------------------- output assembly
class _Collector:
    """Per-image tensors written into preallocated (N, ...) outputs: no second copy at the end."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.out: list[torch.Tensor] | None = None

    def put(self, index: int, tensors: Sequence[torch.Tensor]) -> None:
        if self.out is None:
            self.out = [torch.empty((self.n, *t.shape), dtype=torch.float32) for t in tensors]
        for dst, src in zip(self.out, tensors):
            dst[index] = src

    def result(self, with_attention: bool) -> FeatureSet:
        out = self.out or []
        if with_attention and out:
            return FeatureSet(maps=out[:-1], attention=out[-1])
        return FeatureSet(maps=out, attention=None)


def _prefetched(batches: Iterable[Any], load: Callable[[Any], Any], num_workers: int) -> Iterator[tuple[Any, Any]]:
    """(batch, load(batch)) in order; with workers, the next batches are decoded while this one runs.

    Up to ``max(num_workers, PREFETCH_DEPTH)`` batches are queued ahead, so the decoder keeps working while
    the consumer spends longer than one batch's decode on something else (scoring a chunk).
    """
    if num_workers <= 0:
        for batch in batches:
            yield batch, load(batch)
        return
    depth = max(num_workers, PREFETCH_DEPTH)
    with ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="generalad-decode") as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append((batch, pool.submit(load, batch)))
            if len(pending) > depth:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


# ----------------------------------------------------------------------------------------- public
def extract_features(backbone: Backbone, samples: Sequence[Any], **options: Any) -> FeatureSet:
    """Features of every sample, in order: maps (N, C, h, w) and attention (N, heads, h*w) float32 on the CPU.

    ``options``: those of :func:`iter_features` (``image_size`` required), whose stream this collects into
    preallocated (N, ...) tensors.
    """
    collector = _Collector(len(samples))
    for indices, tensors in iter_features(backbone, samples, **options):
        for j, i in enumerate(indices):
            collector.put(i, [t[j] for t in tensors])
    return collector.result(bool(options.get("with_attention", False)))


def in_chunks(
    stream: Iterable[tuple[list[int], list[torch.Tensor]]], n: int, chunk: int, with_attention: bool
) -> Iterator[tuple[int, int, FeatureSet]]:
    """(start, stop, features of samples start..stop-1): an :func:`iter_features` stream over ``n`` samples
    cut into consecutive chunks of ``chunk``, each yielded as soon as all its samples have arrived."""
    parts: dict[int, list[torch.Tensor]] = {}  # sample index → its tensors, until its chunk is complete
    start = 0
    for indices, tensors in stream:
        for j, i in enumerate(indices):
            parts[i] = [t[j] for t in tensors]
        while start < n and all(i in parts for i in range(start, min(start + chunk, n))):
            stop = min(start + chunk, n)
            collector = _Collector(stop - start)
            for k in range(start, stop):
                collector.put(k - start, parts.pop(k))
            yield start, stop, collector.result(with_attention)
            start = stop


def iter_features(
    backbone: Backbone,
    samples: Sequence[Any],
    *,
    image_size: int | Sequence[int],
    batch_size: int = 16,
    precision: str = "bf16",
    cache_dir: str | os.PathLike[str] | None = None,
    with_attention: bool = False,
    progress: bool = True,
    num_workers: int = 1,
    jpeg_draft: bool = False,
) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
    """The features of ``samples`` as a stream: (sample indices, [map_0 (b, C, h, w), …, (attention)]),
    float32 on the CPU.

    The backbone runs on its parameters' device (see the module docstring); ``precision`` is "bf16", "fp32"
    or "auto" (resolved on that device).

    ``cache_dir``: reuse / store per-image features there (fp16; results are then fp16-rounded on the first
    run too, so a cached rerun returns bit-identical features). ``num_workers``: background threads that
    decode + resize the next batches while this one runs (0 = all in this thread). Measured on the shared
    2-core box (16 bottle PNGs, 224 px, fp32): 1 thread gave 2-3x the images/s of 0; 2 threads no more than 1.
    ``jpeg_draft``: decode JPEGs at the smallest DCT scale that is still ≥ ``image_size`` (``read_image(draft=)``).

    Cache hits come first (one item each), then the rest batch by batch in sample order. While the caller
    works on an item, the next batch is being decoded (``num_workers`` threads): a consumer that scores
    as it goes keeps the decoder busy across its own chunk boundaries (``AnomalyModel.infer_batches``).
    """
    size = backbone.check_image_size(image_size)
    device = _device(backbone)
    precision = _check_precision(precision, device)
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size} (--batch-size)")
    if with_attention and backbone.kind != "vit":
        raise ConfigError(f"CLS attention needs a ViT backbone; {backbone.name} is a {backbone.kind}")
    read_image, content_hash = _data_api()
    n_maps = len(backbone.layers)
    bar = tqdm(total=len(samples), desc=f"features {backbone.name}", unit="img", disable=None if progress else True)

    # 1. cache hits
    todo = list(range(len(samples)))
    paths: list[Path] = []
    if cache_dir is not None:
        root = Path(cache_dir).expanduser()
        paths = [_cache_path(root, feature_key(backbone, size, precision, with_attention, content_hash(s), jpeg_draft))
                 for s in samples]
        todo = []
        for i, path in enumerate(paths):
            cached = _read_cached(path, n_maps, with_attention)
            if cached is None:
                todo.append(i)
            else:
                bar.update(1)
                yield [i], [t[None] for t in cached]

    # 2. the rest through the backbone, decoding ahead in the background when asked
    pin = device.type == "cuda"

    def load(indices: list[int]) -> torch.Tensor:
        draft = size if jpeg_draft else None
        x = preprocess([read_image(samples[i], draft=draft) for i in indices], size, backbone.mean, backbone.std)
        return x.pin_memory() if pin else x  # pinned in the decode thread: the upload does not block

    def store(indices: list[int], outs: list[torch.Tensor], ready: Any) -> tuple[list[int], list[torch.Tensor]]:
        if ready is not None:
            ready.synchronize()  # the non-blocking download of this batch has landed
        if paths:  # round like the cache stores it, so first and cached runs agree exactly
            outs = [t.half().float() for t in outs]
            for j, i in enumerate(indices):
                _write_cached(paths[i], [t[j] for t in outs], with_attention, meta)
        bar.update(len(indices))
        return indices, outs

    meta = {"backbone": backbone.name, "weights_sha256": backbone.weights_sha256, "precision": precision}
    # a short first batch: the backbone starts after a few decodes instead of a whole batch of them
    first = min(batch_size, FIRST_BATCH)
    batches = [todo[k : k + batch_size] for k in range(first, len(todo), batch_size)]
    if todo:
        batches.insert(0, todo[:first])
    pending: tuple[list[int], list[torch.Tensor], Any] | None = None  # CUDA: stored after the next launch
    try:
        for indices, x in _prefetched(batches, load, num_workers):
            with torch.inference_mode(), autocast(device, precision):
                feats = backbone(x.to(device, non_blocking=pin), with_attention=with_attention)
                outs, ready = _to_host(feats.maps + ([feats.attention] if with_attention else []), device)
            if pending is not None:
                yield store(*pending)
            pending = (indices, outs, ready)
            if ready is None:  # nothing to overlap with
                yield store(*pending)
                pending = None
        if pending is not None:
            yield store(*pending)
    finally:
        bar.close()


def backbone_throughput(
    backbone: Backbone,
    image_size: int | Sequence[int],
    batch_size: int = 8,
    precision: str = "bf16",
    n_batches: int = 3,
    *,
    warmup: int = 1,
) -> float:
    """Images per second of the bare forward on random input (no decoding, no resize, no cache), on the
    backbone's device at ``precision`` ("auto" resolved there); the clock is read after a device sync."""
    h, w = backbone.check_image_size(image_size)
    device = _device(backbone)
    precision = _check_precision(precision, device)
    x = torch.randn(batch_size, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)

    with torch.inference_mode(), autocast(device, precision):
        for _ in range(warmup):
            backbone(x)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(n_batches):
            backbone(x)
        synchronize(device)
        elapsed = time.perf_counter() - start
    return batch_size * n_batches / elapsed
