"""Input conversion and validation shared by the metric modules (numpy or torch in, numpy out)."""

from __future__ import annotations

from typing import Any

import numpy as np

from generalad.errors import InputError


def to_numpy(x: Any) -> np.ndarray:
    """numpy view of a numpy array, torch tensor (any device) or nested sequence."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch here
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def scores_1d(scores: Any, name: str = "scores") -> np.ndarray:
    """1-D float64 scores; NaN/inf are rejected because they have no place in a ranking."""
    s = to_numpy(scores)
    if s.ndim != 1:
        s = s.reshape(-1)
    if not np.issubdtype(s.dtype, np.number) or np.issubdtype(s.dtype, np.complexfloating):
        raise InputError(f"{name}: expected real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if not np.isfinite(s).all():
        raise InputError(f"{name}: {int((~np.isfinite(s)).sum())} value(s) are NaN or infinite")
    return s


def labels_1d(labels: Any, n: int) -> np.ndarray:
    """1-D bool labels (1/True = anomalous) of length n; only 0/1 values are accepted."""
    y = to_numpy(labels).reshape(-1)
    if y.shape[0] != n:
        raise InputError(f"labels: got {y.shape[0]} labels for {n} scores")
    if y.dtype != np.bool_:
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            raise InputError(f"labels: expected 0/1 (normal/anomalous), found value {y[bad][0]!r}")
        y = y.astype(bool)
    return y


def maps_3d(maps: Any) -> np.ndarray:
    """(B, H, W) float32 anomaly maps (a single (H, W) map becomes B = 1); finite values only."""
    m = to_numpy(maps)
    if m.ndim == 2:
        m = m[None]
    if m.ndim == 4 and m.shape[1] == 1:  # (B, 1, H, W) as produced by most torch heads
        m = m[:, 0]
    if m.ndim != 3:
        raise InputError(f"anomaly maps: expected shape (B, H, W), got {tuple(m.shape)}")
    m = np.ascontiguousarray(m, dtype=np.float32)
    if not np.isfinite(m).all():
        raise InputError("anomaly maps: contain NaN or infinite values")
    return m


def masks_3d(masks: Any, shape: tuple[int, ...]) -> np.ndarray:
    """(B, H, W) bool masks matching ``shape``; any value > 0 is anomalous (0/1, 0/255, bool)."""
    g = to_numpy(masks)
    if g.ndim == 2:
        g = g[None]
    if g.ndim == 4 and g.shape[1] == 1:
        g = g[:, 0]
    if tuple(g.shape) != tuple(shape):
        raise InputError(f"masks: shape {tuple(g.shape)} does not match anomaly maps {tuple(shape)}")
    return np.ascontiguousarray(g if g.dtype == np.bool_ else g > 0)


def nan_if_undefined(value: float, defined: bool) -> float:
    """Python float, NaN where the metric is undefined (the report layer writes null)."""
    return float(value) if defined else float("nan")
