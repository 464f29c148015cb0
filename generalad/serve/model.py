"""The model behind ``generalad serve``: one image in, one predictions.jsonl row (+ overlay) out.

Works with a torch model directory (``AnomalyModel``) and an exported one (``generalad.deploy.Inferencer``):
both give ``infer_batches`` / ``to_original_size`` / ``threshold_`` / ``pixel_threshold_`` /
``calibration_`` / ``pixel_calibration_`` / ``describe``. Calls into the model are serialised by one lock
(neither a torch module nor a runtime session is promised to be safe under concurrent calls, and on a CPU
two at once only share the same cores).
"""

from __future__ import annotations

import base64
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from generalad.data import Sample, image_hw, read_image
from generalad.deploy import Inferencer  # torch-free: an exported model is served without torch
from generalad.errors import InputError
from generalad.report import Prediction, regions_from_map
from generalad.report_html.overlay import overlay_at_display_size, png_bytes

OVERLAY_MAX_SIDE = 1024  # the API's overlay PNG: the longer side at most this (the raw score is unaffected)
DEFAULT_MAX_PIXELS = 40_000_000  # decoded size limit: a 20 MB PNG can hold a 1 GB float32 image
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageTooLarge(InputError):
    """An image whose decoded size is over the server's pixel limit (answered with 413)."""


class ServedModel:
    """``ServedModel(model, run)``: predictions and the model card for the web app."""

    def __init__(self, model: Any, run: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.model = model
        self.run = str(run)
        self.max_pixels = int(max_pixels)
        self.lock = threading.Lock()
        self.desc = model.describe()  # once: a torch model builds its backbone for it
        self._tmp = tempfile.TemporaryDirectory(prefix="generalad-serve-")

    # ------------------------------------------------------------------ model card
    def card(self) -> dict[str, Any]:
        """What the model is and how its threshold was set (GET /api/model)."""
        cal = self.model.calibration_.to_dict()
        exported = isinstance(self.model, Inferencer)
        protocol = self.model.meta.get("protocol", {}) if exported else self.model.protocol()
        return {
            "run": self.run,
            "kind": f"export ({self.model.meta['format']})" if exported else "torch",
            "method": self.desc.get("model"),
            "backbone": self.desc.get("backbone"),
            "weights_sha256": self.desc.get("weights_sha256"),
            "image_size": self.desc.get("image_size"),
            "precision": self.desc.get("precision"),
            "device": self.desc.get("device", "cpu"),
            "runtime": self.desc.get("runtime", "torch"),
            "threshold": self.model.threshold_,
            "pixel_threshold": self.model.pixel_threshold_,
            "calibration_source": cal.get("source"),
            "calibration": {k: cal.get(k) for k in ("rule", "applied", "n", "source", "stats")},
            "selection": protocol.get("selection"),
            "display_range": list(self.model.pixel_calibration_.display_range()),
        }

    # ------------------------------------------------------------------ decoding
    def decode_upload(self, data: bytes, filename: str) -> np.ndarray:
        """Bytes of an uploaded file → float32 (H, W, 3) in [0, 1], through the same decoder as every other
        image (``generalad.data.read_image``: EXIF, 16-bit, grey). InputError (one line) when undecodable."""
        name = _display_name(filename)
        if not data:
            raise InputError(f"upload {name} is empty")
        suffix = Path(filename).suffix.lower() if Path(filename).suffix.lower() in IMAGE_EXTS else ".img"
        with tempfile.NamedTemporaryFile(dir=self._tmp.name, suffix=suffix) as handle:
            handle.write(data)
            handle.flush()
            try:
                return self._decode_file(Path(handle.name))
            except InputError as err:  # the message names our temp file: name the user's file instead
                text = str(err).replace(f"'{handle.name}'", name).replace(handle.name, f"upload {name}")
                raise type(err)(text) from None

    def _decode_file(self, path: Path) -> np.ndarray:
        h, w = image_hw(Sample(path=str(path), label=-1))  # header only: refuse huge images before decoding
        if h * w > self.max_pixels:
            raise ImageTooLarge(f"image {path} is {w}x{h} = {h * w} pixels, above the limit of {self.max_pixels}")
        return read_image(str(path))

    def decode_path(self, path: Path) -> np.ndarray:
        return self._decode_file(path)

    # ------------------------------------------------------------------ predictions
    def predict(self, image: np.ndarray, name: str, *, overlay_max_side: int = OVERLAY_MAX_SIDE) -> dict[str, Any]:
        """One decoded image → the predictions.jsonl fields + ``original_size`` [H, W] + ``overlay_png``
        (base64 PNG: heat-map on the run's fixed scale, predicted-region contour, caption)."""
        t0 = time.perf_counter()
        sample = Sample(path=name, label=-1, split="predict", array=image)
        with self.lock:
            chunk, scores, maps = next(iter(self.model.infer_batches([sample], use_cache=False)))
            amap = self.model.to_original_size(chunk, maps)[0]
        score = float(scores[0])
        record = self._record(name, score, amap)
        png = png_bytes(overlay_at_display_size(self.model, image, amap, score, max_side=overlay_max_side,
                                                caption=Path(name).name))
        record["latency_ms"] = round((time.perf_counter() - t0) * 1000.0, 2)
        record["original_size"] = [int(image.shape[0]), int(image.shape[1])]
        record["overlay_png"] = base64.b64encode(png).decode("ascii")
        return record

    def score_files(self, samples: Sequence[Sample]) -> list[float]:
        """Raw scores of files (the folder table), one model call per batch."""
        out: list[float] = []
        with self.lock:
            for _chunk, scores, _maps in self.model.infer_batches(list(samples), use_cache=False):
                out.extend(float(s) for s in scores)
        return out

    def _record(self, name: str, score: float, amap: np.ndarray) -> dict[str, Any]:
        thr, pix = self.model.threshold_, self.model.pixel_threshold_
        norm = float(self.model.calibration_.normalise(np.asarray([score]))[0])
        return Prediction(
            path=name, split="predict", pred_score=score, threshold=thr, pred_label=int(score > thr),
            score_normalised=norm, regions=regions_from_map(amap, pix) if pix is not None else [],
            model=self.desc["model"], backbone=self.desc["backbone"], weights_sha256=self.desc["weights_sha256"],
            image_size=self.desc["image_size"],
        ).to_record()

    def close(self) -> None:
        self._tmp.cleanup()


def _display_name(filename: str) -> str:
    """The upload's own name, quoted, without any client-side folder (for messages)."""
    base = Path(filename.replace("\\", "/")).name if filename else ""
    return repr(base or "(no name)")
