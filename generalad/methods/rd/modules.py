"""RD4AD's trained parts as pure ``nn.Module``s: the one-class bottleneck (OCBE) and the student decoder
(docs/methods/ard.md §2; RD4AD, Deng & Li, CVPR 2022).

Shapes for a teacher with stage channels (c1, c2, c3) at strides (4, 8, 16) and an H×W input:

* ``OCBE([f1 (B,c1,H/4,W/4), f2 (B,c2,H/8,W/8), f3 (B,c3,H/16,W/16)]) -> φ (B, 2·c3, H/32, W/32)``:
  multi-scale fusion (MFF: f1 → two stride-2 3×3 conv+BN+ReLU to c3 channels, f2 → one to c3, concatenated
  with f3 → 3·c3 at H/16), then the one-class embedding (OCE): one ResNet stage whose first block has
  stride 2 and a 1×1 stride-2 conv+BN shortcut. For ResNets the MFF widths are exactly the official
  code's (c1 → 2c1 → 4c1 = c3, c2 → 2c2 = c3); for other teachers each scale is brought to c3 channels.
* ``Decoder(φ) -> [f1_D, f2_D, f3_D]``, the teacher's shapes: three stages mirroring the teacher, each
  first block upsampling with a 2×2 stride-2 transposed conv (and a transposed-conv+BN shortcut).

ARD (docs/methods/ard.md §3) adds attention: ``attn_at="oce"`` puts one block inside every OCE residual
block, after its last conv+BN and before the residual addition; ``"mff"`` one on the fused 3·c3 map;
``"both"``. Initialisation as torchvision / the official code: Kaiming fan-out for ``Conv2d`` (transposed
convs keep PyTorch's default, as upstream, whose init loop only matches ``nn.Conv2d``), BN weight 1 bias 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from generalad.errors import ConfigError
from generalad.methods.rd.attention import make_attention

PLACEMENTS = ("none", "oce", "mff", "both")
AttentionFactory = Callable[[int], nn.Module] | None


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def deconv2x2(cin: int, cout: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False)


# ----------------------------------------------------------------------------------------- residual blocks
class _Residual(nn.Module):
    """What both block types share after their convs: optional attention, the shortcut, the final ReLU.

    Subclasses call ``_attach`` after building their convs, so attention and shortcut are registered after
    them (``init_weights`` walks the modules in that order: the seeded weights depend on it).
    """

    def _attach(self, shortcut: nn.Module | None, attention: nn.Module | None, final_relu: bool) -> None:
        self.relu = nn.ReLU(inplace=True)
        self.attention = attention
        self.shortcut = shortcut
        self.final_relu = final_relu

    def _merge(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.attention is not None:
            out = self.attention(out)
        out = out + (x if self.shortcut is None else self.shortcut(x))
        return self.relu(out) if self.final_relu else out


class BasicBlock(_Residual):
    """ResNet basic block; ``up=True``: the first conv is a 2×2 stride-2 transposed conv (decoder)."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None, *,
                 up: bool = False, base_width: int = 64, attention: nn.Module | None = None,
                 final_relu: bool = True) -> None:
        super().__init__()
        self.conv1 = deconv2x2(cin, planes) if up else conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self._attach(shortcut, attention, final_relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self._merge(self.bn2(self.conv2(out)), x)


class Bottleneck(_Residual):
    """ResNet (v1.5) bottleneck, width ``planes·base_width/64``; ``up=True``: the 3×3 becomes a 2×2 deconv."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None, *,
                 up: bool = False, base_width: int = 64, attention: nn.Module | None = None,
                 final_relu: bool = True) -> None:
        super().__init__()
        width = int(planes * base_width / 64)
        self.conv1 = conv1x1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = deconv2x2(width, width) if up else conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self._attach(shortcut, attention, final_relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self._merge(self.bn3(self.conv3(out)), x)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_stage(block: type, cin: int, planes: int, blocks: int, *, up: bool, base_width: int,
               attention: AttentionFactory = None, final_relu: bool = True) -> nn.Sequential:
    """One stride-2 stage: down (conv, 1×1 conv shortcut) in the OCE, up (transposed convs) in the decoder.

    ``final_relu=False`` leaves the stage's output un-rectified (decoders of teachers with signed features).
    """
    cout = planes * block.expansion
    shortcut = nn.Sequential(deconv2x2(cin, cout) if up else conv1x1(cin, cout, 2), nn.BatchNorm2d(cout))
    layers = []
    for i in range(blocks):
        first, last = i == 0, i == blocks - 1
        layers.append(block(cin if first else cout, planes, 2 if first else 1, shortcut if first else None,
                            up=up and first, base_width=base_width,
                            attention=attention(cout) if attention is not None else None,
                            final_relu=final_relu or not last))
    return nn.Sequential(*layers)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv3x3(cin, cout, 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


# ----------------------------------------------------------------------------------------- student spec
@dataclass(frozen=True)
class StudentSpec:
    """The trained parts' architecture for one teacher (docs/methods/ard.md §2, table "Teachers")."""

    channels: tuple[int, int, int]  # teacher stage channels (c1, c2, c3) at strides 4, 8, 16
    block: str = "basic"  # "basic" | "bottleneck"
    oce_blocks: int = 3
    decoder_blocks: tuple[int, int, int] = (3, 4, 6)  # stages producing c3, c2, c1
    base_width: int = 64  # bottleneck width per group (128 for Wide-ResNet-50-2)
    # teacher maps that can be negative (EfficientNet's linear-bottleneck outputs): each decoder stage ends
    # without its ReLU, or the student's outputs could not even point the teacher's way (ResNet maps are post-ReLU)
    signed_features: bool = False

    @property
    def embedding_channels(self) -> int:
        return 2 * self.channels[2]


# ----------------------------------------------------------------------------------------- OCBE + decoder
class OCBE(nn.Module):
    """Multi-scale feature fusion + one-class embedding: three teacher maps → φ (B, 2·c3, H/32, W/32)."""

    def __init__(self, spec: StudentSpec, *, attention: str = "cbam", attn_at: str = "none", reduction: int = 16) -> None:
        super().__init__()
        if attn_at not in PLACEMENTS:
            raise ConfigError(f"attn_at must be one of {', '.join(PLACEMENTS)}, got {attn_at!r} (--attn-at)")
        c1, c2, c3 = spec.channels
        block = BLOCKS[spec.block]
        self.fuse1 = nn.Sequential(_conv_bn_relu(c1, c3 // 2), _conv_bn_relu(c3 // 2, c3))
        self.fuse2 = _conv_bn_relu(c2, c3)
        factory = (lambda c: make_attention(attention, c, reduction)) if attn_at != "none" else None
        self.mff_attention = factory(3 * c3) if attn_at in ("mff", "both") else None
        planes = spec.embedding_channels // block.expansion
        self.oce = make_stage(block, 3 * c3, planes, spec.oce_blocks, up=False, base_width=spec.base_width,
                              attention=factory if attn_at in ("oce", "both") else None)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        f1, f2, f3 = feats
        fused = torch.cat([self.fuse1(f1), self.fuse2(f2), f3], dim=1)
        if self.mff_attention is not None:
            fused = self.mff_attention(fused)
        return self.oce(fused)


class Decoder(nn.Module):
    """φ → [f1_D, f2_D, f3_D] in the teacher's shapes (shallow to deep, as the teacher's list)."""

    def __init__(self, spec: StudentSpec) -> None:
        super().__init__()
        block = BLOCKS[spec.block]
        c1, c2, c3 = spec.channels
        cin = spec.embedding_channels
        stages = []
        for cout, n in zip((c3, c2, c1), spec.decoder_blocks):
            if cout % block.expansion:
                raise ConfigError(f"{spec.block} blocks need channels divisible by {block.expansion}, got {cout}")
            stages.append(make_stage(block, cin, cout // block.expansion, n, up=True, base_width=spec.base_width,
                                     final_relu=not spec.signed_features))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, phi: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        x = phi
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs[::-1]


class Student(nn.Module):
    """OCBE + decoder: ``Student(spec)(teacher_maps) -> student maps`` of the same shapes."""

    def __init__(self, spec: StudentSpec, *, attention: str = "cbam", attn_at: str = "none", reduction: int = 16) -> None:
        super().__init__()
        self.spec = spec
        self.ocbe = OCBE(spec, attention=attention, attn_at=attn_at, reduction=reduction)
        self.decoder = Decoder(spec)
        init_weights(self)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.decoder(self.ocbe(feats))
