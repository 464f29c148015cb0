"""Image and pixel metrics on raw scores (higher = more anomalous): AUROC, AP, F1-max, AUPRO, sPRO.

Definitions follow docs/PROTOCOLS.md §3; thresholds follow docs/PROTOCOLS.md §4 (decision: ``score > threshold``).
Undefined metrics (one class only) are NaN, never an exception.
"""

from generalad.metrics.aupro import aupro
from generalad.metrics.image import average_precision, f1_max, image_auroc, image_metrics, threshold_metrics
from generalad.metrics.pixel import PixelMetrics, PixelMetricsByType, resize_for_eval, resize_masks
from generalad.metrics.spro import SPROMetrics, saturation_area

__all__ = [
    "image_metrics",
    "image_auroc",
    "average_precision",
    "f1_max",
    "threshold_metrics",
    "PixelMetrics",
    "PixelMetricsByType",
    "aupro",
    "resize_for_eval",
    "resize_masks",
    "SPROMetrics",
    "saturation_area",
]
