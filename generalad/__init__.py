"""generalad — visual anomaly detection across domains.

Estimators follow the scikit-learn contract: ``PatchCore(...).fit(normal_samples)``, ``score``,
``anomaly_maps``, ``predict``, ``save``/``load_model``. Imports are lazy so the CLI starts fast; the method
classes (``generalad.PatchCore``, ``generalad.GeneralAD``, ...) come from the method registry
(``generalad.methods.list_methods()``).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_model": "generalad.methods.base",
    "open_dataset": "generalad.data",
    "evaluate": "generalad.evaluate",
    "create_backbone": "generalad.backbones",
    "list_methods": "generalad.methods",
    "get_method": "generalad.methods",
}


def _method_classes() -> dict[str, str]:
    from generalad.methods import list_methods, method_info

    return {method_info(n).class_name: n for n in list_methods()}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    classes = _method_classes()
    if name in classes:
        from generalad.methods import get_method

        return get_method(classes[name])
    raise AttributeError(f"module 'generalad' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, *_method_classes()])
