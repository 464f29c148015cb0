"""The one run pipeline shared by ``fit``, ``benchmark``, ``demo`` and ``clean``.

data folder → ``open_dataset`` → leak-free contamination → exclusion list → few-shot sampling → the
training list and its calibration set (MVTec LOCO: ``validation/good``; otherwise the estimator holds out a
slice of the training normals) → ``model.fit`` with the run info every model file records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from generalad.data import Dataset, Sample, contaminate, open_dataset, sample_shots, split_holdout
from generalad.errors import InputError


@dataclasses.dataclass
class TrainingRun:
    """What a fit trains on, and where it came from (``info`` goes into the model file as ``data``)."""

    dataset: Dataset  # after contamination: its test split no longer holds the moved images
    train: list[Sample]
    calibration: list[Sample] | None  # None → the estimator's held-out slice of ``train``
    contaminants: list[Sample]
    excluded: list[str]
    info: dict[str, Any]


def read_path_list(path: str | Path) -> set[str]:
    """Paths listed one per line (first tab-separated column; ``#`` comments), e.g. ``generalad clean``'s LIST."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise InputError(f"cannot read exclude list {path}: {err.strerror}") from None
    return {line.split("\t")[0].strip() for line in lines if line.strip() and not line.startswith("#")}


def open_training(
    data: str | Path,
    *,
    layout: str = "auto",
    category: str | None = None,
    normal_class: str | int | None = None,
    split: str = "official",
    data_options: dict[str, Any] | None = None,
    contaminate_n: int = 0,
    exclude: str | Path | Iterable[str] | None = None,
    shots: int | None = None,
    shots_mode: str = "random",
    seed: int = 0,
) -> TrainingRun:
    """Open ``data`` and build the training list in the fixed order: contaminate, exclude, sample shots.

    ``contaminate_n`` moves that many anomalous test images into training (seeded, leak-free: they leave
    the test split). ``exclude`` is a path list file or an iterable of paths. ``seed`` seeds contamination
    and shot sampling. With ``shots`` every shot is trained on and the calibration normals are a seeded
    10 % (at least 5) of the *other* training images (docs/PROTOCOLS.md §4).
    """
    ds = open_dataset(data, layout=layout, category=category, normal_class=normal_class, split=split,
                      **(data_options or {}))
    moved: list[Sample] = []
    if contaminate_n:
        ds, moved = contaminate(ds, contaminate_n, seed=seed)
    train = list(ds.train)
    excluded: set[str] = set()
    if exclude is not None:
        excluded = read_path_list(exclude) if isinstance(exclude, (str, Path)) else set(exclude)
        train = [s for s in train if s.path not in excluded]
    calibration = list(ds.validation) or None
    if shots:
        pool = train
        train = sample_shots(pool, shots, seed=seed, mode=shots_mode)
        if calibration is None:
            # Every shot trains: thresholds come from other training normals, never from the shots (a
            # held-out slice of 8 shots would leave 3 to train on) and never from test images.
            chosen = {s.path for s in train}
            _, calibration = split_holdout([s for s in pool if s.path not in chosen], seed=seed)
            calibration = calibration or None
    info = {
        "root": str(Path(data).resolve()),
        "dataset": ds.name,
        "category": ds.category,
        "category_arg": category,
        "normal_class": normal_class,
        "split": split,
        "shots": shots,
        "shots_mode": shots_mode if shots else None,
        "contaminated_with": [s.path for s in moved],
        "excluded": sorted(excluded),
    }
    return TrainingRun(ds, train, calibration, moved, sorted(excluded), info)


def fit_on(model, run: TrainingRun, *, select_on_test: bool = False, progress: bool = False):
    """Fit ``model`` on ``run`` (its run info recorded); ``select_on_test`` is a parity option, stamped."""
    model.run_info_ = dict(run.info)
    kwargs = {"select_on_test": run.dataset.test} if select_on_test else {}
    return model.fit(run.train, calibration=run.calibration, progress=progress, **kwargs)
