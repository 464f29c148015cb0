"""Image-level metrics on raw scores (higher = more anomalous), docs/PROTOCOLS.md §3 and §4.

The threshold-free metrics reproduce scikit-learn's arithmetic step by step (same sort, same tie
collapsing, same collinear-point dropping, same trapezoid / step sums), so they equal
``roc_auc_score`` and ``average_precision_score`` bit for bit, without their warnings.

Undefined cases return NaN instead of raising: the report layer writes NaN as null. A metric is
undefined when the labels hold one class only (no anomalous or no normal image); this is applied to
AP and F1-max too, because a one-class "score" (AP = 1 when every image is anomalous) says nothing
about the model.

Decision rule for thresholds (``threshold_metrics``): **an image is anomalous iff score > threshold**
(strict). A score equal to the threshold is normal. The same rule is used by ``f1_max`` when it
returns the threshold that realises the optimum.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from generalad.metrics._inputs import labels_1d, nan_if_undefined, scores_1d

NAN = float("nan")


def _inputs(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = scores_1d(scores)
    return s, labels_1d(labels, s.size)


def _clf_curve(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fps, tps, thresholds) at each distinct score, descending; scikit-learn's construction."""
    order = np.argsort(s, kind="stable")[::-1]
    s, y = s[order], y[order]
    idx = np.r_[np.flatnonzero(np.diff(s)), y.size - 1]  # last position of each run of equal scores
    tps = np.cumsum(y, dtype=np.float64)[idx]
    fps = 1.0 + idx - tps
    return fps, tps, s[idx]


def _two_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < y.size


def image_auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (trapezoid over distinct thresholds); NaN if only one class."""
    s, y = _inputs(scores, labels)
    if not _two_classes(y):
        return NAN
    fps, tps, _ = _clf_curve(s, y)
    if fps.size > 2:  # drop collinear points exactly as scikit-learn does (changes rounding only)
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps = fps[keep], tps[keep]
    fpr = np.r_[0.0, fps] / fps[-1]
    tpr = np.r_[0.0, tps] / tps[-1]
    return float(np.trapezoid(tpr, fpr))


def average_precision(scores: Any, labels: Any) -> float:
    """Step-rule AP = sum_n (R_n - R_{n-1}) P_n (scikit-learn's rule; not a trapezoid AUPR)."""
    s, y = _inputs(scores, labels)
    if not _two_classes(y):
        return NAN
    fps, tps, _ = _clf_curve(s, y)
    precision = np.r_[(tps / (tps + fps))[::-1], 1.0]
    recall = np.r_[(tps / tps[-1])[::-1], 0.0]
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def f1_max(scores: Any, labels: Any, *, return_threshold: bool = False) -> float | tuple[float, float]:
    """Maximum F1 = 2PR / (P + R) over all thresholds: an ORACLE number (chosen on test labels).

    Report it as F1-max, never as a deployable operating point. With ``return_threshold=True`` also
    returns the threshold t such that ``score > t`` realises the optimum: the largest score strictly
    below the optimal cut (``-inf`` when the optimum flags every image). NaN if only one class.
    """
    s, y = _inputs(scores, labels)
    if not _two_classes(y):
        return (NAN, NAN) if return_threshold else NAN
    fps, tps, thr = _clf_curve(s, y)
    f1 = 2.0 * tps / (tps + fps + tps[-1])  # = 2PR / (P + R) with P = tps/(tps+fps), R = tps/n_pos
    best = int(np.argmax(f1))
    if not return_threshold:
        return float(f1[best])
    below = thr[best + 1] if best + 1 < thr.size else -np.inf
    return float(f1[best]), float(below)


def threshold_metrics(scores: Any, labels: Any, threshold: float) -> dict[str, Any]:
    """Confusion counts and rates at a fixed threshold, decision ``score > threshold`` = anomalous.

    Rates whose denominator is zero are NaN (e.g. tpr on normal-only held-out data, precision when
    nothing is flagged). Works with one class only: that is how the realised false-alarm rate on
    held-out normals is measured (docs/PROTOCOLS.md §4).
    """
    s, y = _inputs(scores, labels)
    pred = s > float(threshold)
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    tn = int(np.sum(~pred & ~y))
    return {
        "threshold": float(threshold),
        "rule": "score > threshold",
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n_anomalous": tp + fn,
        "n_normal": fp + tn,
        "tpr": nan_if_undefined(tp / max(tp + fn, 1), tp + fn > 0),
        "fpr": nan_if_undefined(fp / max(fp + tn, 1), fp + tn > 0),
        "precision": nan_if_undefined(tp / max(tp + fp, 1), tp + fp > 0),
        "f1": nan_if_undefined(2 * tp / max(2 * tp + fp + fn, 1), 2 * tp + fp + fn > 0),
    }


def image_metrics(scores: Any, labels: Any) -> dict[str, float]:
    """``{"image_auroc", "image_ap", "image_f1max"}`` on raw scores; NaN values if only one class."""
    return {
        "image_auroc": image_auroc(scores, labels),
        "image_ap": average_precision(scores, labels),
        "image_f1max": f1_max(scores, labels),
    }
