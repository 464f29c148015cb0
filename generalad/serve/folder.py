"""``--images DIR``: the folder's images, scored in the background, and the only files the app serves.

Safety: the app serves a file only if it is in this index, which is built once at start-up from the
regular image files under the root whose *resolved* path stays inside the resolved root. A request names a
file by its relative POSIX path; it is looked up in the index, never joined onto the root, so ``..``,
absolute paths, encoded separators and symlinks that leave the root all end in "not found".
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from generalad.data import Sample
from generalad.errors import GeneralADError, InputError
from generalad.serve.model import IMAGE_EXTS, ServedModel

THUMB_SIDE = 112
THUMB_CACHE = 4096  # thumbnails kept (~5 KB each as JPEG): bounded, so memory does not grow with browsing
SCORE_BATCH = 8


class NotInFolder(InputError):
    """A requested path that is not an image of the ``--images`` folder (answered with 404)."""


def list_folder(root: Path) -> dict[str, Path]:
    """{relative POSIX path: resolved file} of every image file whose resolved path lies under ``root``."""
    base = root.resolve()
    found: dict[str, Path] = {}
    for path in sorted(base.rglob("*")):
        if path.suffix.lower() not in IMAGE_EXTS or not path.is_file():
            continue
        real = path.resolve()
        if real.is_relative_to(base):  # a symlink may point anywhere: keep only what stays inside
            found[path.relative_to(base).as_posix()] = real
    return found


class FolderIndex:
    """The images of one folder with their scores; ``start()`` scores them in a daemon thread."""

    def __init__(self, root: str | Path, served: ServedModel) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"--images folder not found: {self.root}")
        self.files = list_folder(self.root)
        if not self.files:
            raise InputError(f"no images found in folder {self.root} (looked for {', '.join(IMAGE_EXTS)})")
        self.served = served
        self.rows: dict[str, dict[str, Any]] = {rel: {"path": rel, "score": None} for rel in self.files}
        self.done = 0
        self._thumbs: OrderedDict[str, bytes] = OrderedDict()
        self._thumb_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ files
    def resolve(self, rel: str) -> Path:
        """The file for a relative path from a request; NotInFolder unless it is in the index."""
        path = self.files.get(rel)
        if path is None:
            raise NotInFolder(f"not an image of the --images folder: {rel!r}")
        return path

    def thumbnail(self, rel: str) -> bytes:
        """JPEG thumbnail (longer side ``THUMB_SIDE``) of one indexed image, cached (LRU, bounded)."""
        path = self.resolve(rel)
        with self._thumb_lock:
            if rel in self._thumbs:
                self._thumbs.move_to_end(rel)
                return self._thumbs[rel]
        image = self.served.decode_path(path)
        im = Image.fromarray(np.rint(image * 255.0).astype(np.uint8))
        im.thumbnail((THUMB_SIDE, THUMB_SIDE))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
        with self._thumb_lock:
            self._thumbs[rel] = data
            while len(self._thumbs) > THUMB_CACHE:
                self._thumbs.popitem(last=False)
        return data

    # ------------------------------------------------------------------ scores
    def status(self) -> dict[str, Any]:
        """GET /api/images: progress and one row per image (score None until scored, or an error line)."""
        thr = self.served.model.threshold_
        rows = []
        for row in self.rows.values():
            score = row.get("score")
            rows.append({**row, "is_anomalous": None if score is None else bool(score > thr)})
        return {"root": str(self.root.resolve()), "n_images": len(self.files), "n_scored": self.done,
                "threshold": thr, "images": rows}

    def start(self) -> None:
        self._thread = threading.Thread(target=self.score_all, name="generalad-folder", daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until scoring ends (tests, benchmarks); True when it did."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done == len(self.files)

    def score_all(self, on_batch: Callable[[int], None] | None = None) -> None:
        """Score every image in batches; a batch with a bad file is retried one image at a time, so one
        corrupt file marks only its own row."""
        rels = list(self.files)
        for i in range(0, len(rels), SCORE_BATCH):
            batch = rels[i : i + SCORE_BATCH]
            try:
                self._store(batch, self.served.score_files([self._sample(r) for r in batch]))
            except GeneralADError:
                for rel in batch:
                    self._score_one(rel)
            if on_batch is not None:
                on_batch(self.done)

    def _score_one(self, rel: str) -> None:
        try:
            self._store([rel], self.served.score_files([self._sample(rel)]))
        except GeneralADError as err:
            self.rows[rel]["error"] = " ".join(str(err).split())
            self.done += 1

    def _store(self, rels: list[str], scores: list[float]) -> None:
        for rel, score in zip(rels, scores):
            self.rows[rel]["score"] = score
        self.done += len(rels)

    def _sample(self, rel: str) -> Sample:
        return Sample(path=str(self.files[rel]), label=-1, split="predict")
