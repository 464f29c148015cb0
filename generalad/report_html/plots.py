"""The report's charts, drawn by matplotlib and embedded as PNG data URIs (no network to open the page).

Figures are built with ``matplotlib.figure.Figure`` + the Agg canvas, never pyplot: no global state, no
display, safe inside a server or a test process. Every function takes raw scores (higher = more anomalous)
and returns ``data:image/png;base64,...``.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

NORMAL_COLOUR = "#2b8a3e"
ANOMALOUS_COLOUR = "#c92a2a"
THRESHOLD_COLOUR = "#1c1c1c"
DPI = 110


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols)


def to_data_uri(fig: Figure) -> str:
    """PNG of ``fig`` as a data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """(FPR, TPR, precision) of the decision ``score > threshold``."""
    pred = scores > threshold
    pos, neg = labels == 1, labels == 0
    tpr = float(pred[pos].mean()) if pos.any() else float("nan")
    fpr = float(pred[neg].mean()) if neg.any() else float("nan")
    precision = float(labels[pred].mean()) if pred.any() else float("nan")
    return fpr, tpr, precision


def roc_pr(scores: np.ndarray, labels: np.ndarray, threshold: float, auroc: float | None, ap: float | None) -> str:
    """Image-level ROC and precision-recall curves side by side, the calibrated threshold marked on both.

    ``scores``/``labels``: (N,) raw scores and 0/1 labels with both classes present.
    """
    fig, (ax_roc, ax_pr) = _figure(9.0, 3.8, ncols=2)
    fpr, tpr, _ = roc_curve(labels, scores)
    ax_roc.plot(fpr, tpr, color="#1864ab", lw=2, label=f"ROC (AUROC {_pct(auroc)})")
    ax_roc.plot([0, 1], [0, 1], color="#adb5bd", lw=1, ls="--", label="chance")
    op_fpr, op_tpr, op_prec = _operating_point(scores, labels, threshold)
    ax_roc.plot([op_fpr], [op_tpr], "o", color=THRESHOLD_COLOUR, label=f"calibrated threshold ({op_fpr:.2f}, {op_tpr:.2f})")
    _axes(ax_roc, "false positive rate (normal images flagged)", "true positive rate", "Image ROC")
    precision, recall, _ = precision_recall_curve(labels, scores)
    ax_pr.step(recall, precision, where="post", color="#5f3dc4", lw=2, label=f"PR (AP {_pct(ap)})")
    base = float(np.mean(labels == 1))
    ax_pr.axhline(base, color="#adb5bd", lw=1, ls="--", label=f"prevalence {base:.2f}")
    if np.isfinite(op_prec):
        ax_pr.plot([op_tpr], [op_prec], "o", color=THRESHOLD_COLOUR, label="calibrated threshold")
    _axes(ax_pr, "recall", "precision", "Image precision-recall")
    return to_data_uri(fig)


def pro(curve: Mapping[str, Any], aupro: float | None) -> str:
    """Per-region overlap vs per-pixel FPR up to the AUPRO limit (``curve``: evidence ``pro_curve``)."""
    fig, ax = _figure(4.8, 3.8)
    limit = float(curve["fpr_limit"])
    ax.plot(curve["fpr"], curve["pro"], color="#e67700", lw=2, label=f"PRO (AUPRO@{limit:g} {_pct(aupro)})")
    ax.fill_between(curve["fpr"], curve["pro"], color="#e67700", alpha=0.12)
    _axes(ax, "per-pixel false positive rate", "per-region overlap", f"PRO curve ({curve['n_regions']} regions)")
    ax.set_xlim(0, limit)
    return to_data_uri(fig)


def histogram(scores: np.ndarray, labels: np.ndarray, threshold: float) -> str:
    """Score histograms of the normal and the anomalous test images on shared bins, threshold as a line."""
    fig, ax = _figure(6.4, 3.8)
    finite = scores[np.isfinite(scores)]
    edges = np.histogram_bin_edges(np.r_[finite, threshold], bins=min(60, max(10, finite.size // 4)))
    for value, name, colour in ((0, "normal", NORMAL_COLOUR), (1, "anomalous", ANOMALOUS_COLOUR)):
        sel = scores[labels == value]
        if sel.size:
            ax.hist(sel, bins=edges, color=colour, alpha=0.55, label=f"{name} (n={sel.size})")
    fp = int(np.sum(scores[labels == 0] > threshold))
    fn = int(np.sum(scores[labels == 1] <= threshold))
    ax.axvline(threshold, color=THRESHOLD_COLOUR, lw=2, ls="--",
               label=f"calibrated threshold {threshold:.4g}\n({fp} false pos., {fn} false neg.)")
    _axes(ax, "raw image score (higher = more anomalous)", "test images", "Score distribution", square=False)
    return to_data_uri(fig)


def grouped_bars(groups: Sequence[str], series: Mapping[str, Sequence[float | None]], ylabel: str, title: str) -> str:
    """Bars per group (e.g. category) and series (e.g. model), values in [0, 1] shown in %. None = no bar."""
    fig, ax = _figure(max(5.0, 1.2 + 0.9 * len(groups) * max(1, len(series)) ** 0.5), 3.6)
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for i, (name, values) in enumerate(series.items()):
        vals = np.array([np.nan if v is None else 100.0 * float(v) for v in values])
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=name)
        ax.bar_label(bars, labels=["" if not np.isfinite(v) else f"{v:.1f}" for v in vals], fontsize=7, padding=2)
    ax.set_xticks(x, groups, rotation=20 if len(groups) > 4 else 0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return to_data_uri(fig)


def _axes(ax: Any, xlabel: str, ylabel: str, title: str, *, square: bool = True) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if square:
        ax.set_xlim(-0.01, 1.01)
        ax.set_ylim(-0.01, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right" if square else "best")


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100.0 * value:.1f} %"
