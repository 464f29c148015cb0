"""``Inferencer(DIR)``: run an exported model with numpy, Pillow and one runtime — no torch (docs/DEPLOY.md).

An export directory holds the graph (``model.onnx`` or ``model.xml`` + ``model.bin``) and ``deploy.json``: the
working size, the normalisation constants, the calibrated image and pixel thresholds, and the method / backbone
/ weights sha256 the graph was made from. The graph itself maps pre-processed images to *raw* scores and maps;
everything a user decides on (threshold, resize back to the image) happens here, in the open.

``predict(image)`` returns the fields of a ``predictions.jsonl`` row plus the map at the image's own size;
``infer_batches`` / ``to_original_size`` give ``generalad.predict.predict_samples`` the same interface as a
torch model, so ``generalad predict --run EXPORT_DIR`` writes the same files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from generalad.calibration import Calibration, PixelCalibration
from generalad.data.images import image_hw, read_image
from generalad.data.sample import Sample
from generalad.deploy.preprocess import resize_map, to_batch
from generalad.deploy.runtime import RUNTIMES
from generalad.errors import ConfigError, InputError
from generalad.io import sha256_file

META_FILE = "deploy.json"
FORMAT_VERSION = 1
GRAPH_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
# deploy.json keys the graph's own metadata must repeat exactly (a graph swapped under a deploy.json is refused)
CHECKED_KEYS = ("model", "backbone", "weights_sha256", "image_size", "input", "threshold", "pixel_threshold")


def read_deploy_meta(directory: str | Path) -> dict[str, Any]:
    """``deploy.json`` of an export directory, checked for the keys inference needs (one-line errors)."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise InputError(f"not an exported generalad model (no {META_FILE}): {directory}")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {path}: {' '.join(str(err).split())}") from None
    missing = [k for k in ("format_version", "format", "graph", "graph_sha256", *CHECKED_KEYS, "calibration",
                           "pixel_calibration") if k not in meta]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}: the export is incomplete; export it again")
    if meta["format_version"] != FORMAT_VERSION:
        raise InputError(f"{path} has format_version {meta['format_version']}; this generalad reads {FORMAT_VERSION}")
    if meta["format"] not in RUNTIMES:
        raise InputError(f"{path}: unknown format {meta['format']!r} (expected one of {', '.join(RUNTIMES)})")
    return meta


def is_export_dir(directory: str | Path) -> bool:
    return (Path(directory) / META_FILE).is_file()


class Inferencer:
    """An exported model ready to score: ``Inferencer("export/").predict("part.png")``.

    ``runtime_options``: ``threads`` (both runtimes), ``precision`` (OpenVINO: "f32" default, "bf16" where the
    CPU has it). ``batch_size``: images per graph call in ``infer_batches``.
    """

    def __init__(self, directory: str | Path, *, batch_size: int = 8, **runtime_options: Any) -> None:
        self.directory = Path(directory)
        self.meta = read_deploy_meta(self.directory)
        graph = self.directory / self.meta["graph"]
        self._check_graph_file(graph)
        self.runtime = RUNTIMES[self.meta["format"]](graph, **runtime_options)
        self._check_graph_metadata(graph)
        self.batch_size = int(batch_size)
        inp = self.meta["input"]
        self.size = (int(inp["size"][0]), int(inp["size"][1]))
        self.mean, self.std = inp["mean"], inp["std"]
        self.draft = self.size if inp.get("jpeg_draft") else None  # JPEG decode scale, as the model was fitted
        self.calibration_ = Calibration.from_dict(self.meta["calibration"])
        self.pixel_calibration_ = PixelCalibration.from_dict(self.meta["pixel_calibration"])

    # ------------------------------------------------------------------ checks
    def _check_graph_file(self, graph: Path) -> None:
        if not graph.is_file():
            raise InputError(f"exported model {self.directory} has no graph file {graph.name}: copy the whole directory")
        if self.meta["format"] == "openvino" and not graph.with_suffix(".bin").is_file():
            raise InputError(f"exported model {self.directory} has no {graph.with_suffix('.bin').name} beside {graph.name}")
        actual = sha256_file(graph)
        if actual != self.meta["graph_sha256"]:
            raise InputError(f"{graph} has sha256 {actual[:12]}…, {META_FILE} says {self.meta['graph_sha256'][:12]}…: "
                             "the graph was modified or belongs to another export")

    def _check_graph_metadata(self, graph: Path) -> None:
        inside = self.runtime.graph_metadata()
        if inside is None:
            raise InputError(f"{graph} carries no generalad metadata: not a generalad export")
        wrong = [k for k in CHECKED_KEYS if inside.get(k) != self.meta.get(k)]
        if wrong:
            k = wrong[0]
            raise InputError(f"{graph}'s metadata disagrees with {META_FILE} on {', '.join(wrong)} "
                             f"({k}: graph {inside.get(k)!r} vs {self.meta.get(k)!r})")
        shape = self.runtime.input_shape
        want = [3, *self.meta["input"]["size"]]
        if len(shape) != 4 or [v for v in shape[1:]] != want:
            raise InputError(f"{graph} takes input {shape}, {META_FILE} says (batch, {', '.join(map(str, want))})")

    # ------------------------------------------------------------------ the model-like interface
    @property
    def threshold_(self) -> float:
        return float(self.calibration_.threshold)

    @property
    def pixel_threshold_(self) -> float | None:
        return None if self.meta.get("pixel_threshold") is None else float(self.meta["pixel_threshold"])

    @property
    def working_size(self) -> int:
        return self.size[0]

    def describe(self) -> dict[str, Any]:
        return {**self.meta["describe"], "runtime": f"{self.runtime.name} {self.runtime.version}",
                "export_format": self.meta["format"], "precision": getattr(self.runtime, "precision", "fp32")}

    def decide(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold_

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph on a pre-processed (B, 3, S, S) float32 batch → raw (scores (B,) float64, maps (B, S, S))."""
        if batch.ndim != 4 or batch.shape[1:] != (3, *self.size) or batch.dtype != np.float32:
            raise InputError(f"the exported graph takes float32 (B, 3, {self.size[0]}, {self.size[1]}) batches, "
                             f"got {batch.dtype} {tuple(batch.shape)}")
        try:
            scores, maps = self.runtime.run(np.ascontiguousarray(batch))
        except Exception as err:  # noqa: BLE001 — runtime failures become one line
            raise InputError(f"{self.runtime.name} failed on a batch of {batch.shape[0]}: {' '.join(str(err).split())[:300]}") from None
        return np.asarray(scores, dtype=np.float64), np.asarray(maps, dtype=np.float32)

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return to_batch(images, self.size, self.mean, self.std)

    def infer_batches(self, samples: Sequence[Sample], *, use_cache: bool = False, progress: bool = False,
                      ) -> Iterator[tuple[Sequence[Sample], np.ndarray, np.ndarray]]:
        """Yield (samples, raw scores, maps at the working size) per batch, like ``AnomalyModel.infer_batches``."""
        del use_cache, progress
        samples = list(samples)
        chunks = [samples[i : i + self.batch_size] for i in range(0, len(samples), self.batch_size)]
        if not chunks:
            return

        def load(chunk: Sequence[Sample]) -> np.ndarray:
            return self.preprocess([read_image(s, draft=self.draft) for s in chunk])

        # decode + resize the next batch in a thread while the runtime works on this one (Pillow, numpy's
        # matrix products and both runtimes release the GIL)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(load, chunks[0])
            for i, chunk in enumerate(chunks):
                batch = pending.result()
                if i + 1 < len(chunks):
                    pending = pool.submit(load, chunks[i + 1])
                scores, maps = self.run(batch)
                yield chunk, scores, maps

    @staticmethod
    def to_original_size(chunk: Sequence[Sample], maps: np.ndarray) -> list[np.ndarray]:
        return [resize_map(m, image_hw(s)) for s, m in zip(chunk, maps)]

    # ------------------------------------------------------------------ one image
    def predict(self, image: str | Path | np.ndarray) -> dict[str, Any]:
        """Score one image (a path or an (H, W[, C]) array): the predictions.jsonl fields + ``map`` (H, W) float32."""
        from generalad.report import regions_from_map

        t0 = time.perf_counter()
        if isinstance(image, np.ndarray):
            decoded, path, hw = read_image(image), "<array>", tuple(np.asarray(image).shape[:2])
        elif isinstance(image, (str, Path)):
            decoded, path = read_image(str(image), draft=self.draft), str(image)
            hw = image_hw(path)  # the file's own size (a drafted JPEG decodes smaller)
        else:
            raise InputError(f"predict takes an image path or a numpy array, got {type(image).__name__}")
        scores, maps = self.run(self.preprocess([decoded]))
        score, amap = float(scores[0]), resize_map(maps[0], hw)
        pix = self.pixel_threshold_
        desc = self.describe()
        return {
            "path": path, "score": score, "pred_score": score, "threshold": self.threshold_,
            "is_anomalous": bool(score > self.threshold_), "pred_label": int(score > self.threshold_),
            "score_normalised": float(self.calibration_.normalise(np.asarray([score]))[0]),
            "regions": regions_from_map(amap, pix) if pix is not None else [],
            "model": desc["model"], "backbone": desc["backbone"], "weights_sha256": desc["weights_sha256"],
            "image_size": [int(hw[0]), int(hw[1])], "latency_ms": round((time.perf_counter() - t0) * 1000.0, 2),
            "map": amap,
        }


def check_runtime_choice(fmt: str) -> str:
    if fmt not in GRAPH_FILES:
        raise ConfigError(f"export format must be one of {', '.join(GRAPH_FILES)}, got {fmt!r} (--format)")
    return fmt
