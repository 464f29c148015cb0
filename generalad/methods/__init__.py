"""Anomaly-detection methods as sklearn-style estimators, registered by name."""

from __future__ import annotations

from generalad.errors import ConfigError
from generalad.methods.base import AnomalyModel, load_model

_REGISTRY: dict[str, str] = {
    "patchcore": "generalad.methods.patchcore:PatchCore",
    "generalad": "generalad.methods.generalad:GeneralAD",
    "inreach": "generalad.methods.inreach:InReaCh",
}


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> type[AnomalyModel]:
    """The estimator class registered as ``name`` (imported lazily)."""
    import importlib

    try:
        module, attr = _REGISTRY[name.lower()].split(":")
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_methods())}") from None
    return getattr(importlib.import_module(module), attr)


__all__ = ["AnomalyModel", "get_method", "list_methods", "load_model"]
