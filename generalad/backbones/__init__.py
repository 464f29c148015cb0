"""Frozen feature extractors by name: ``create_backbone("dinov2_vits14", weights="w.safetensors")``.

Every backbone is an ``nn.Module`` in eval mode without gradients, whose ``forward(x, with_attention=False)``
returns ``Features(maps=[(B, C, h, w), ...], attention=(B, heads, h*w) | None)``. ``extract_features`` runs
it over samples in batches with an optional on-disk cache.
"""

from __future__ import annotations

from collections.abc import Sequence

from generalad.backbones.base import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDOM_INIT,
    Backbone,
    Features,
    FeatureSet,
    preprocess,
)
from generalad.backbones.cache import backbone_throughput, extract_features, iter_features
from generalad.backbones.cnn import CNN_MODELS, CNNBackbone, create_cnn
from generalad.backbones.vit import VIT_MODELS, ViTBackbone, create_dinov2
from generalad.backbones.weights import resolve_weights, sha256_file
from generalad.errors import ConfigError

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "RANDOM_INIT", "Backbone", "CNNBackbone", "FeatureSet", "Features",
    "ViTBackbone", "backbone_throughput", "create_backbone", "extract_features", "iter_features", "list_backbones", "preprocess",
    "resolve_weights", "sha256_file",
]


def list_backbones() -> list[str]:
    return sorted([*VIT_MODELS, *CNN_MODELS])


def create_backbone(
    name: str,
    *,
    weights: str | None = None,
    layers: Sequence[str] | None = None,
    expected_sha256: str | None = None,
    cache_dir: str | None = None,
) -> Backbone:
    """Build a frozen backbone.

    ``weights``: a local ``.pth``/``.safetensors`` file; ``None`` for the bundled / cached / downloaded
    default; ``"random"`` for an untrained network (tests; ``weights_sha256 == "random-init"``).
    ``layers``: module names to tap (CNN: ``["layer2", "layer3"]``; ViT: ``["blocks.11"]``); ``None`` → default.
    ``expected_sha256``: refuse a weights file with another hash (a saved model's recorded backbone).
    """
    key = name.strip().lower() if isinstance(name, str) else name
    kwargs = dict(weights=weights, layers=layers, expected_sha256=expected_sha256, cache_dir=cache_dir)
    if key in VIT_MODELS:
        return create_dinov2(key, **kwargs)
    if key in CNN_MODELS:
        return create_cnn(key, **kwargs)
    raise ConfigError(f"unknown backbone {name!r} (--backbone); choose one of: {', '.join(list_backbones())}")
