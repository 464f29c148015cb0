"""Predict on new images: raw scores, calibrated decisions, maps and fixed-scale heat-map overlays.

The local engine (this module) and the Ray engine (``generalad.engines.ray``) share everything below the
loop: the same chunks (``chunk_size(model)`` images, aligned to multiples of it from the first input), the
same per-chunk scoring with its fallback for unreadable files (:func:`score_chunk`), the same rows and
overlays (:class:`RowWriter`) and the same output files (:func:`write_prediction_files`). Their rows
therefore differ only in ``latency_ms`` when both run with the same number of intra-op threads
(docs/SCALE.md, "Same rows").

An image that cannot be decoded does not stop the run: it becomes an error row ``{"path", "error"}`` at its
place in ``predictions.jsonl`` and a line of ``failed.txt``; every other image is scored.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from generalad.data import Sample, read_image
from generalad.errors import ConfigError, InputError
from generalad.io import JsonlWriter, PathLike, atomic_open, atomic_write_text, to_jsonable
from generalad.report import COLUMNS, Prediction, _csv_cell, regions_from_map, render_overlay, save_map_npy, save_png

if TYPE_CHECKING:  # an exported model (generalad.deploy.Inferencer) predicts through here without torch
    from generalad.methods.base import AnomalyModel

FAILED_FILE = "failed.txt"
ERROR_COLUMN = "error"


@dataclass
class FailedImage:
    """An input that could not be read: its row in predictions.jsonl is ``{"path", "error"}``."""

    path: str
    error: str  # one line (an InputError's message)

    pred_label = None  # so that code counting decisions skips it

    def to_record(self) -> dict[str, Any]:
        return {"path": self.path, ERROR_COLUMN: self.error}


class UnreadableFiles(InputError):
    """Some inputs could not be read; everything else was scored and written (the CLI exits 2 with this line)."""

    def __init__(self, n_failed: int, n_total: int, list_path: PathLike | None, first: str) -> None:
        self.n_failed, self.n_total, self.list_path = n_failed, n_total, list_path
        where = f"; list: {list_path}" if list_path is not None else ""
        super().__init__(f"{n_failed} of {n_total} files could not be read (first: {first}){where}")


def raise_for_failures(records: Sequence[Any], out_dir: PathLike | None) -> None:
    """Raise :class:`UnreadableFiles` when ``records`` (Prediction / FailedImage / row dicts) hold errors."""
    failed = [r for r in records if _error_of(r) is not None]
    if failed:
        listed = Path(out_dir) / FAILED_FILE if out_dir is not None else None
        raise UnreadableFiles(len(failed), len(records), listed, _error_of(failed[0]))


def _error_of(r: Any) -> str | None:
    if isinstance(r, FailedImage):
        return r.error
    if isinstance(r, Mapping):
        return r.get(ERROR_COLUMN)
    return None


def _output_name(index: int, path: str) -> str:
    """Unique, readable file stem: two inputs may share a name in different folders."""
    return f"{index:05d}_{Path(path).stem}"


# --------------------------------------------------------------------------- loading + chunks


def load_predictor(run: PathLike, *, weights: str | None = None, device: str | None = None,
                   batch_size: int | None = None, threads: int | None = None):
    """A torch model directory or an export directory (deploy.json), ready to score.

    ``threads``: intra-op threads (torch: ``torch.set_num_threads`` for this process; exports: the runtime's).
    ``batch_size``: exports only, images per graph call (default 8).
    """
    from generalad.deploy import Inferencer, is_export_dir

    if is_export_dir(run):
        if weights:
            raise ConfigError(f"--weights does not apply to an exported model ({run} holds its whole graph)")
        options = {"threads": int(threads)} if threads else {}
        return Inferencer(run, batch_size=batch_size or 8, **options)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    from generalad.methods import load_model

    return load_model(run, weights=weights, device=device)


def chunk_size(model: Any) -> int:
    """Images per inference chunk: a torch model's ``infer_chunk`` (64), an export's ``batch_size`` (8)."""
    return int(getattr(model, "infer_chunk", None) or getattr(model, "batch_size", None) or 8)


def set_chunk_size(model: Any, n: int) -> None:
    if n < 1:
        raise ConfigError(f"--chunk must be >= 1, got {n}")
    if hasattr(model, "infer_chunk"):
        model.infer_chunk = int(n)
    else:
        model.batch_size = int(n)


@contextlib.contextmanager
def _chunked(model: Any, n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    before = chunk_size(model)
    set_chunk_size(model, n)
    try:
        yield
    finally:
        set_chunk_size(model, before)


# --------------------------------------------------------------------------- scoring

#: one image's result: (raw score, map at the image's own size) or the one-line reason it could not be read
Result = tuple[float, np.ndarray] | str


def _finish(model: Any, chunk: Sequence[Sample], scores: Any, maps: Any) -> list[Result]:
    full = model.to_original_size(chunk, maps)
    return [(float(s), np.asarray(m)) for s, m in zip(np.asarray(scores, dtype=np.float64), full)]


def _score_all(model: Any, samples: Sequence[Sample], progress: bool = False) -> list[Result]:
    out: list[Result] = []
    for chunk, scores, maps in model.infer_batches(samples, use_cache=False, progress=progress):
        out.extend(_finish(model, chunk, scores, maps))
    return out


def _names_file(err: InputError, sample: Sample) -> bool:
    return Path(sample.path).name in str(err)


def _score_salvaging(model: Any, chunk: Sequence[Sample]) -> list[Result]:
    """A chunk that raised InputError: find the unreadable files, score the rest (as one batch when possible).

    Only this chunk is decoded twice. An error that names no file of the chunk (a runtime failure, say) is
    not about the inputs and is raised again.
    """
    results: list[Result | None] = [None] * len(chunk)
    for i, s in enumerate(chunk):
        try:
            read_image(s)
        except InputError as err:
            results[i] = str(err)
    good = [i for i, r in enumerate(results) if r is None]
    if good:
        try:
            for i, r in zip(good, _score_all(model, [chunk[i] for i in good])):
                results[i] = r
        except InputError:  # readable in full but not as the model reads it (e.g. a JPEG draft): image by image
            for i in good:
                try:
                    results[i] = _score_all(model, [chunk[i]])[0]
                except InputError as err:
                    if not _names_file(err, chunk[i]):
                        raise
                    results[i] = str(err)
    return [r for r in results if r is not None]


def score_chunk(model: Any, chunk: Sequence[Sample]) -> list[Result]:
    """Score one chunk (at most ``chunk_size(model)`` images) as the local engine scores it."""
    try:
        return _score_all(model, chunk)
    except InputError:
        return _score_salvaging(model, chunk)


def iter_chunks(model: Any, samples: Sequence[Sample], *, progress: bool = False,
                ) -> Iterator[tuple[int, Sequence[Sample], list[Result], float]]:
    """Yield (start index, chunk, results, seconds) over ``samples`` in chunks of ``chunk_size(model)``.

    Streams through ``model.infer_batches`` (which decodes the next images while this chunk runs); a chunk
    that raises InputError is salvaged (:func:`score_chunk`) and the stream restarts after it, so chunk
    boundaries stay at multiples of the chunk size.
    """
    samples = list(samples)
    size = chunk_size(model)
    pos = 0
    while pos < len(samples):
        t0 = time.perf_counter()
        try:
            for chunk, scores, maps in model.infer_batches(samples[pos:], use_cache=False, progress=progress):
                results = _finish(model, chunk, scores, maps)
                yield pos, chunk, results, time.perf_counter() - t0
                pos += len(chunk)
                t0 = time.perf_counter()
        except InputError:
            bad = samples[pos : pos + size]
            results = _score_salvaging(model, bad)
            yield pos, bad, results, time.perf_counter() - t0
            pos += len(bad)


# --------------------------------------------------------------------------- rows + overlays


class RowWriter:
    """Rows of scored chunks, and their overlays / maps under ``out_dir/images`` (nothing written without it).

    ``display_dir``: the output folder as recorded in ``map_path`` (default ``out_dir``) — the Ray engine
    writes to an absolute path but records the folder as the user gave it, like the local engine.
    """

    def __init__(self, model: Any, out_dir: PathLike | None, *, save_maps: bool = False, overlays: bool = True,
                 display_dir: PathLike | None = None) -> None:
        self.model = model
        self.out = Path(out_dir) if out_dir is not None else None
        self.display = Path(display_dir) if display_dir is not None else self.out
        self.save_maps, self.overlays = save_maps, overlays
        self.desc = model.describe()
        self.thr, self.pix_thr = model.threshold_, model.pixel_threshold_
        self.vmin, self.vmax = model.pixel_calibration_.display_range()  # one fixed scale (docs/PROTOCOLS.md §5)
        if self.out is not None:
            (self.out / "images").mkdir(parents=True, exist_ok=True)

    def rows(self, start: int, chunk: Sequence[Sample], results: Sequence[Result], seconds: float,
             paths: Sequence[str] | None = None) -> list[Prediction | FailedImage]:
        """Records of one chunk; ``paths``: the paths to record (default each sample's)."""
        paths = list(paths) if paths is not None else [s.path for s in chunk]
        n_ok = sum(not isinstance(r, str) for r in results)
        latency = round(seconds * 1000.0 / max(n_ok, 1), 2)
        ok_scores = np.asarray([r[0] for r in results if not isinstance(r, str)], dtype=np.float64)
        norm = iter(self.model.calibration_.normalise(ok_scores))
        out: list[Prediction | FailedImage] = []
        for k, (sample, path, result) in enumerate(zip(chunk, paths, results)):
            if isinstance(result, str):
                out.append(FailedImage(path=path, error=result))
                continue
            score, amap = result
            rec = self._prediction(sample, path, score, float(next(norm)), amap, latency)
            try:
                self._write_images(start + k, sample, path, rec, score, amap)
            except InputError as err:  # decodable for the model, not for the overlay: an error row too
                out.append(FailedImage(path=path, error=str(err)))
                continue
            out.append(rec)
        return out

    def _prediction(self, sample: Sample, path: str, score: float, norm: float, amap: np.ndarray,
                    latency: float) -> Prediction:
        d = self.desc
        return Prediction(
            path=path, category=sample.category, split=sample.split,
            gt_label=int(sample.label) if sample.label in (0, 1) else None,
            pred_score=score, threshold=self.thr, pred_label=int(score > self.thr), score_normalised=norm,
            regions=regions_from_map(amap, self.pix_thr) if self.pix_thr is not None else [],
            backbone=d["backbone"], model=d["model"], weights_sha256=d["weights_sha256"],
            image_size=d["image_size"], latency_ms=latency,
        )

    def _write_images(self, index: int, sample: Sample, path: str, rec: Prediction, score: float,
                      amap: np.ndarray) -> None:
        if self.out is None:
            return
        stem = _output_name(index, path)
        if self.save_maps:
            save_map_npy(self.out / "images" / f"{stem}_map.npy", amap)
            rec.map_path = str(self.display / "images" / f"{stem}_map.npy")
        if self.overlays:
            png = render_overlay(read_image(sample), amap, vmin=self.vmin, vmax=self.vmax, threshold=self.thr,
                                 score=score, pixel_threshold=self.pix_thr, caption=Path(path).name)
            save_png(self.out / "images" / f"{stem}_overlay.png", png)

    def expected_files(self, index: int, path: str) -> list[Path]:
        """The image files a finished row at ``index`` has under ``out_dir`` (resume checks them)."""
        if self.out is None:
            return []
        stem = _output_name(index, path)
        return ([self.out / "images" / f"{stem}_map.npy"] if self.save_maps else []) + (
            [self.out / "images" / f"{stem}_overlay.png"] if self.overlays else [])


# --------------------------------------------------------------------------- files


def record_of(r: Prediction | FailedImage | Mapping[str, Any]) -> dict[str, Any]:
    """The predictions.jsonl row of a record (JSON-ready)."""
    return r.to_record() if isinstance(r, (Prediction, FailedImage)) else to_jsonable(dict(r))


def write_prediction_files(records: Sequence[Prediction | FailedImage | Mapping[str, Any]], out_dir: PathLike,
                           ) -> dict[str, Path]:
    """``predictions.jsonl`` + ``.csv`` (input order, error rows in place) and ``failed.txt``, atomically.

    The CSV has report.COLUMNS and, only when a file failed, a last ``error`` column (empty on scored rows;
    the other cells of an error row are empty). ``failed.txt``: one failed path per line; removed when
    nothing failed, so it never describes an earlier run.
    """
    import csv

    out = Path(out_dir)
    rows = [record_of(r) for r in records]
    columns = COLUMNS + ((ERROR_COLUMN,) if any(ERROR_COLUMN in r for r in rows) else ())
    with JsonlWriter(out / "predictions.jsonl") as jw, atomic_open(out / "predictions.csv", "w") as cf:
        cw = csv.writer(cf, lineterminator="\n")
        cw.writerow(columns)
        for rec in rows:
            jw.write(rec)
            cw.writerow([_csv_cell(c, rec.get(c)) for c in columns])
    failed = [r["path"] for r in rows if ERROR_COLUMN in r]
    paths = {"jsonl": out / "predictions.jsonl", "csv": out / "predictions.csv"}
    if failed:
        paths["failed"] = atomic_write_text(out / FAILED_FILE, "".join(f"{p}\n" for p in failed))
    else:
        (out / FAILED_FILE).unlink(missing_ok=True)
    return paths


# --------------------------------------------------------------------------- the local engine


def predict_samples(
    model: "AnomalyModel", samples: Sequence[Sample], out_dir: str | Path | None = None, *, save_maps: bool = False,
    overlays: bool = True, progress: bool = False, chunk: int | None = None,
) -> list[Prediction | FailedImage]:
    """Score ``samples`` in input order; with ``out_dir`` write predictions.jsonl/csv, overlays, optional maps.

    An unreadable image becomes a :class:`FailedImage` at its place (and a line of ``out_dir/failed.txt``);
    call :func:`raise_for_failures` to turn that into an error. ``chunk``: images per inference chunk
    (default the model's, see :func:`chunk_size`).
    """
    with _chunked(model, chunk):
        writer = RowWriter(model, out_dir, save_maps=save_maps, overlays=overlays)
        records: list[Prediction | FailedImage] = []
        for start, part, results, seconds in iter_chunks(model, samples, progress=progress):
            records.extend(writer.rows(start, part, results, seconds))
    if out_dir is not None:
        write_prediction_files(records, out_dir)
    return records


def predict_folder(model: "AnomalyModel", paths: Sequence[str], out_dir: str | Path, **kwargs,
                   ) -> list[Prediction | FailedImage]:
    samples = [Sample(path=p, label=-1, split="predict") for p in paths]
    return predict_samples(model, samples, out_dir, **kwargs)
