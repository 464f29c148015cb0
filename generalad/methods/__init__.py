"""Anomaly-detection methods as sklearn-style estimators, registered by name.

The registry below is the one place a method is announced: the CLI's ``--model`` choices, its help and the
method-specific flags, ``generalad demo``, the lazy names of ``generalad`` (``generalad.PatchCore``) and
the docs all read it. Adding a method is one folder under ``generalad/methods/`` and one ``register_method``
line here (tests and plug-ins may call ``register_method`` at run time, with a class or a "module:Class").
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any

from generalad.errors import ConfigError

if TYPE_CHECKING:
    from generalad.methods.base import AnomalyModel

#: re-exported from generalad.methods.base on first use, so building the CLI parser does not import torch
_LAZY_BASE = ("AnomalyModel", "BaseConfig", "load_model")


@dataclasses.dataclass(frozen=True)
class Flag:
    """A method-specific CLI flag ``--name`` that sets the config field ``field`` (``type`` parses it)."""

    field: str
    type: type = str
    help: str = ""


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """What the CLI, the demo and the docs know of a method before importing it."""

    name: str  # the --model name, lower case
    target: str | type  # "package.module:Class" (imported lazily) or the class itself
    summary: str  # one line for --help and docs
    flags: tuple[Flag, ...] = ()
    demo: dict[str, Any] | None = None  # options for ``generalad demo`` (None: not part of the demo)
    doc: str = ""  # the method doc, e.g. docs/methods/patchcore.md

    @property
    def class_name(self) -> str:
        return self.target.rsplit(":", 1)[1] if isinstance(self.target, str) else self.target.__name__


_REGISTRY: dict[str, MethodInfo] = {}


def register_method(info: MethodInfo, *, replace: bool = False) -> MethodInfo:
    """Announce a method; a second registration of the same name needs ``replace=True``."""
    name = info.name.lower()
    if name in _REGISTRY and not replace:
        raise ConfigError(f"method {name!r} is already registered")
    _REGISTRY[name] = dataclasses.replace(info, name=name)
    return _REGISTRY[name]


def unregister_method(name: str) -> None:
    _REGISTRY.pop(name.lower(), None)


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def method_info(name: str) -> MethodInfo:
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_methods())}") from None


def get_method(name: str) -> type[AnomalyModel]:
    """The estimator class registered as ``name`` (imported on first use)."""
    target = method_info(name).target
    if not isinstance(target, str):
        return target
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


register_method(MethodInfo(
    "patchcore", "generalad.methods.patchcore:PatchCore",
    "PatchCore baseline: coreset memory bank of locally aware patch features, 1-NN distance",
    flags=(Flag("coreset_ratio", float, "fraction of training patches kept in the memory bank"),),
    demo={"image_size": 160}, doc="docs/methods/patchcore.md",
))
register_method(MethodInfo(
    "generalad", "generalad.methods.generalad:GeneralAD",
    "GeneralAD (ECCV 2024): feature distortions + cross-patch attention discriminator",
    flags=(Flag("preset", str, "generalad: industrial | logical | semantic | near_distribution"),
           Flag("epochs", int, "training epochs (default: the preset's)")),
    demo={"image_size": 160}, doc="docs/methods/generalad.md",
))
register_method(MethodInfo(
    "inreach", "generalad.methods.inreach:InReaCh",
    "InReaCh (ICCV 2023): nominal patch channels from training data that may contain anomalies",
    doc="docs/methods/inreach.md",
))
_RD_FLAGS = (
    Flag("preset", str, "rd/ard: cpu | paper | cpu_novelty | paper_novelty"),
    Flag("epochs", int, "training epochs (default: the preset's)"),
    Flag("attn_at", str, "attention placement none | oce | mff | both"),
    Flag("attention", str, "attention block cbam | se | eca"),
    Flag("loss", str, "flattened (official code) | per_position (paper)"),
)
register_method(MethodInfo(
    "rd", "generalad.methods.rd:ReverseDistillation",
    "RD4AD (CVPR 2022): reverse distillation from a one-class embedding, frozen CNN teacher",
    flags=_RD_FLAGS, doc="docs/methods/ard.md",
))
register_method(MethodInfo(
    "ard", "generalad.methods.rd:ARD",
    "ARD: RD4AD with CBAM attention in its one-class bottleneck (fused map + embedding blocks)",
    flags=_RD_FLAGS, doc="docs/methods/ard.md",
))
register_method(MethodInfo(
    "anomalyhybrid", "generalad.methods.anomalyhybrid:AnomalyHybrid",
    "AnomalyHybrid (CVPR-W 2025): depth/edge-conditioned anomaly generator + DRAEM-style UNet detector",
    flags=(Flag("preset", str, "anomalyhybrid: cpu | paper | smoke"),
           Flag("generator", str, "reuse the generator of this fitted anomalyhybrid run"),
           Flag("depth", str, "pseudo | sensor | none | onnx:<file>"),
           Flag("edges", str, "sobel_nms | onnx:<file>")),
    doc="docs/methods/anomalyhybrid.md",
))


def __getattr__(name: str) -> Any:
    if name in _LAZY_BASE:
        return getattr(importlib.import_module("generalad.methods.base"), name)
    raise AttributeError(f"module 'generalad.methods' has no attribute {name!r}")


__all__ = [
    "AnomalyModel", "BaseConfig", "Flag", "MethodInfo", "get_method", "list_methods", "load_model", "method_info",
    "register_method", "unregister_method",
]
