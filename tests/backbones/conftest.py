"""Tiny random ViTs and a stand-in for generalad.data when it cannot be imported."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from generalad.backbones import ViTBackbone


def tiny_vit(reg_tokens: int = 0, qk_norm: bool = False, depth: int = 2, seed: int = 0) -> VisionTransformer:
    """A 2-block, 32-wide ViT/14 laid out like timm's DINOv2 (registers → no_embed_class, layer scale)."""
    torch.manual_seed(seed)
    model = VisionTransformer(
        img_size=56, patch_size=14, embed_dim=32, depth=depth, num_heads=4, num_classes=0, init_values=0.5,
        reg_tokens=reg_tokens, no_embed_class=reg_tokens > 0, qk_norm=qk_norm, dynamic_img_size=True,
    )
    # Larger-than-init weights so attention is far from uniform and errors would show.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def tiny_backbone(reg_tokens: int = 0, **kw) -> ViTBackbone:
    return ViTBackbone(tiny_vit(reg_tokens, **kw), name=f"tiny_vit_reg{reg_tokens}", arch="test")


@pytest.fixture
def data_api(monkeypatch):
    """generalad.data's read_image / content_hash, or a minimal local version while it is being written."""
    try:
        from generalad.data import content_hash, read_image
    except ImportError:

        def read_image(x):
            return np.asarray(x, dtype=np.float32)

        def content_hash(x):
            return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()

        monkeypatch.setattr("generalad.backbones.cache._data_api", lambda: (read_image, content_hash))
    return read_image, content_hash
