"""Read a results folder written by ``generalad test`` (or one benchmark run): the report's only input.

``RES/metrics.json`` (required), ``RES/predictions.jsonl`` (required: per-image raw scores and labels) and
``RES/inspect.json`` (optional: PRO curve and gallery, written by ``test`` since issue 18; an older folder
gives a report without them, saying why). Every problem is one line naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from generalad.errors import InputError
from generalad.report_html.evidence import EVIDENCE_FILE


@dataclass
class Results:
    """One results folder. ``scores`` / ``labels``: (N,) float64 raw scores and int labels (-1 = unknown)."""

    folder: Path
    metrics: dict[str, Any]
    predictions: list[dict[str, Any]]
    evidence: dict[str, Any] | None

    @property
    def scores(self) -> np.ndarray:
        return np.array([_score(r) for r in self.predictions], dtype=np.float64)

    @property
    def labels(self) -> np.ndarray:
        return np.array([_label(r) for r in self.predictions], dtype=np.int64)

    @property
    def threshold(self) -> float:
        return float(self.metrics["threshold"])


def _score(rec: dict[str, Any]) -> float:
    value = rec.get("pred_score", rec.get("score"))
    return float("nan") if value is None else float(value)


def _label(rec: dict[str, Any]) -> int:
    value = rec.get("gt_label", rec.get("label"))
    return -1 if value is None else int(value)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise InputError(f"{path} is not valid JSON: {' '.join(str(err).split())}") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise InputError(f"{path} line {number} is not valid JSON: {' '.join(str(err).split())}") from None
        if not isinstance(row, dict) or ("pred_score" not in row and "score" not in row):
            raise InputError(f"{path} line {number} has no pred_score: not a generalad predictions file")
        rows.append(row)
    return rows


def load_results(folder: str | Path) -> Results:
    """Load ``folder`` (see the module docstring); InputError when it is not a ``test`` results folder."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"results folder not found: {root} (write one with generalad test --out)")
    metrics_path, preds_path = root / "metrics.json", root / "predictions.jsonl"
    for path in (metrics_path, preds_path):
        if not path.is_file():
            raise InputError(f"{root} has no {path.name}: not a results folder of generalad test")
    metrics = _read_json(metrics_path)
    if not isinstance(metrics, dict) or "threshold" not in metrics or "model" not in metrics:
        raise InputError(f"{metrics_path} lacks threshold / model: not a generalad metrics file")
    predictions = _read_jsonl(preds_path)
    if not predictions:
        raise InputError(f"{preds_path} holds no predictions")
    evidence_path = root / EVIDENCE_FILE
    evidence = _read_json(evidence_path) if evidence_path.is_file() else None
    return Results(root, metrics, predictions, evidence)
