"""RD / ARD modules (docs/methods/ard.md §2–3): shapes per teacher and size, attention blocks, placements.

ResNet-18/34 and Wide-ResNet-50-2 teachers use RANDOM weights here (no ImageNet ResNet weights offline):
these tests check mechanics and shapes only. EfficientNet-Lite0 uses its bundled ImageNet weights.
"""

from __future__ import annotations

import pytest
import torch

from generalad.backbones import create_backbone
from generalad.errors import ConfigError
from generalad.methods.rd.attention import ATTENTIONS, make_attention
from generalad.methods.rd.config import TEACHERS, student_spec
from generalad.methods.rd.modules import PLACEMENTS, Student

EXPECTED = {  # (c1, c2, c3), φ channels
    "efficientnet_lite0": ((24, 40, 112), 224),
    "resnet18": ((64, 128, 256), 512),
    "resnet34": ((64, 128, 256), 512),
    "wide_resnet50_2": ((256, 512, 1024), 2048),
}


@pytest.fixture(scope="module")
def teachers() -> dict:
    return {name: create_backbone(name, weights=None if name == "efficientnet_lite0" else "random",
                                  layers=list(TEACHERS[name][0])) for name in TEACHERS}


@pytest.mark.parametrize("size", [32, 128, 256])
@pytest.mark.parametrize("name", sorted(TEACHERS))
@torch.no_grad()
def test_teacher_ocbe_decoder_shapes(teachers, name: str, size: int) -> None:
    feats = teachers[name](torch.rand(1, 3, size, size)).maps
    channels, phi_channels = EXPECTED[name]
    assert [tuple(f.shape) for f in feats] == [(1, c, size // s, size // s) for c, s in zip(channels, (4, 8, 16))]
    student = Student(student_spec(name, channels), attn_at="oce").eval()
    phi = student.ocbe(feats)
    assert tuple(phi.shape) == (1, phi_channels, size // 32, size // 32)
    assert [tuple(o.shape) for o in student.decoder(phi)] == [tuple(f.shape) for f in feats]


def test_official_depths_and_widths() -> None:
    """ResNet-34 / WRN-50-2: 3 OCE blocks, decoder 3-4-6; ResNet-18: 2 and 2-2-2 (the official code)."""
    r18 = Student(student_spec("resnet18", (64, 128, 256)))
    assert len(r18.ocbe.oce) == 2 and [len(s) for s in r18.decoder.stages] == [2, 2, 2]
    wrn = Student(student_spec("wide_resnet50_2", (256, 512, 1024)))
    assert len(wrn.ocbe.oce) == 3 and [len(s) for s in wrn.decoder.stages] == [3, 4, 6]
    assert wrn.ocbe.oce[0].conv1.in_channels == 3 * 1024 and wrn.ocbe.oce[0].conv2.out_channels == 1024  # wide
    assert isinstance(wrn.decoder.stages[0][0].conv2, torch.nn.ConvTranspose2d)


@pytest.mark.parametrize("kind", ATTENTIONS)
def test_attention_keeps_shape_and_passes_gradients(kind: str) -> None:
    block = make_attention(kind, 64)
    x = torch.randn(2, 64, 5, 7, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


def test_cbam_parameter_count_matches_the_note() -> None:
    """≈ 33 k parameters for a 512-channel CBAM with r = 16 (2·512·32 + biases + the 7×7 conv + its BN)."""
    n = sum(p.numel() for p in make_attention("cbam", 512).parameters())
    assert 32_000 < n < 34_000


@pytest.mark.parametrize("attn_at", PLACEMENTS)
def test_every_placement_builds_and_trains(attn_at: str) -> None:
    spec = student_spec("efficientnet_lite0", (24, 40, 112))
    student = Student(spec, attn_at=attn_at)
    feats = [torch.randn(2, 24, 16, 16), torch.randn(2, 40, 8, 8), torch.randn(2, 112, 4, 4)]
    sum(o.square().mean() for o in student(feats)).backward()
    atts = [m for m in student.modules() if type(m).__name__ == "CBAM"]
    assert len(atts) == {"none": 0, "oce": 3, "mff": 1, "both": 4}[attn_at]
    assert all(p.grad is not None for m in atts for p in m.parameters())


def test_unknown_attention_and_placement_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="unknown attention"):
        make_attention("transformer", 8)
    with pytest.raises(ConfigError, match="attn_at"):
        Student(student_spec("resnet18", (64, 128, 256)), attn_at="decoder")
