"""generalad — visual anomaly detection across domains.

Estimators follow the scikit-learn contract: ``PatchCore(...).fit(normal_samples)``, ``score``,
``anomaly_maps``, ``predict``, ``save``/``load_model``. Imports are lazy so the CLI starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "PatchCore": "generalad.methods.patchcore",
    "GeneralAD": "generalad.methods.generalad",
    "InReaCh": "generalad.methods.inreach",
    "load_model": "generalad.methods.base",
    "open_dataset": "generalad.data",
    "evaluate": "generalad.evaluate",
    "create_backbone": "generalad.backbones",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'generalad' has no attribute {name!r}")
