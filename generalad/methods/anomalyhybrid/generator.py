"""The hybrid generator and its conditional PatchGAN (docs/methods/anomalyhybrid.md §3; modules only).

Shapes (S = working size, divisible by 2**len(widths)):

* ``Encoder``: reference ``C_in ⊕ d_ref ⊕ e_ref`` (B, 5, S, S) → skips [(B, w_i, S/2^(i+1), …)] for each of
  the stride-2 stages ``widths`` (CPU preset 32-64-128-256).
* ``StructureDecoder`` (AHD for depth, AHE for edges): bottleneck + skips, with the target structure map
  injected at **every** scale by spatially-adaptive normalisation (SPADE: instance-normalise, then per-pixel
  γ, β predicted from the map resized to that scale) and concatenated at the output scale with the
  reference image, the reference's own map of that kind and their absolute difference; heads ``A_gen`` (3, tanh mapped to [0, 1]) and
  ``M`` (1, sigmoid). Output ``A_out = C_in·(1 − M) + A_gen·M`` — pixel-exact ``C_in`` where M = 0.
* ``HybridGenerator``: one encoder, decoders {"depth": AHD, "edges": AHE} (AHD absent when depth is off).
* ``PatchDiscriminator``: 3 stride-2 conv layers + 1 stride-1 + 1-channel logits over (image ⊕ structure
  map), spectral-normalised (hinge loss); one per decoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

STRUCTURE_CHANNEL = {"depth": 0, "edges": 1}  # channel of each map in the (B, 2, S, S) structure stack


def compose(reference: torch.Tensor, generated: torch.Tensor, fusion: torch.Tensor) -> torch.Tensor:
    """``A_out = C_in·(1 − M) + A_gen·M`` (the reference copied exactly where M = 0)."""
    return reference * (1 - fusion) + generated * fusion


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.InstanceNorm2d(cout, affine=True), nn.LeakyReLU(0.2))


class Encoder(nn.Module):
    def __init__(self, in_channels: int, widths: Sequence[int]) -> None:
        super().__init__()
        chans = [in_channels, *widths]
        self.stages = nn.ModuleList(
            nn.Sequential(_conv(chans[i], chans[i + 1], stride=2), _conv(chans[i + 1], chans[i + 1]))
            for i in range(len(widths))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class SPADE(nn.Module):
    """Instance norm whose per-pixel scale and shift come from the structure map (Park et al., 2019)."""

    def __init__(self, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or max(16, min(64, channels // 2))  # narrow at full resolution, where it costs most
        self.norm = nn.InstanceNorm2d(channels, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(1, hidden, 3, padding=1), nn.ReLU())
        self.gamma_beta = nn.Conv2d(hidden, 2 * channels, 3, padding=1)

    def forward(self, x: torch.Tensor, structure: torch.Tensor) -> torch.Tensor:
        s = F.interpolate(structure, size=x.shape[-2:], mode="bilinear", align_corners=False)
        gamma, beta = self.gamma_beta(self.shared(s)).chunk(2, dim=1)
        return self.norm(x) * (1 + gamma) + beta


class _UpBlock(nn.Module):
    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin + skip, cout, 3, padding=1)
        self.spade1 = SPADE(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.spade2 = SPADE(cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, structure: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        x = F.leaky_relu(self.spade1(self.conv1(x), structure), 0.2)
        return F.leaky_relu(self.spade2(self.conv2(x), structure), 0.2)


class StructureDecoder(nn.Module):
    """AHD / AHE: bottleneck (+ SPADE from the target map) → up-blocks with skips → (A_gen, M) heads."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        rev = list(widths)[::-1]  # e.g. 256, 128, 64, 32
        self.bottleneck = SPADE(rev[0])
        # the last up-block returns to full resolution at half the first width: that scale costs the most
        outs = [*rev[1:], max(8, rev[-1] // 2)]
        skips = [*rev[1:], 0]
        blocks, cin = [], rev[0]
        for skip, cout in zip(skips, outs):
            blocks.append(_UpBlock(cin, skip, cout))
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        # output scale: decoder features ⊕ reference RGB ⊕ reference map ⊕ target map ⊕ |target − reference|
        self.fuse = nn.Sequential(nn.Conv2d(cin + 6, cin, 3, padding=1), nn.LeakyReLU(0.2))
        self.to_image = nn.Conv2d(cin, 3, 3, padding=1)
        self.to_fusion = nn.Conv2d(cin, 1, 3, padding=1)

    def forward(self, skips: list[torch.Tensor], reference: torch.Tensor, ref_map: torch.Tensor,
                target_map: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.leaky_relu(self.bottleneck(skips[-1], target_map), 0.2)
        inner = skips[:-1][::-1] + [None]
        for block, skip in zip(self.blocks, inner):
            x = block(x, skip, target_map)
        # |target − reference| is given explicitly: where the structures differ is what M has to find (ours, docs §3)
        x = self.fuse(torch.cat([x, reference, ref_map, target_map, (target_map - ref_map).abs()], dim=1))
        generated = (torch.tanh(self.to_image(x)) + 1) / 2
        fusion = torch.sigmoid(self.to_fusion(x))
        return {"image": compose(reference, generated, fusion), "generated": generated, "fusion": fusion}


class HybridGenerator(nn.Module):
    """``forward(reference_rgb (B,3,S,S), ref_structure (B,2,S,S), target_structure (B,2,S,S), decoders)``."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), decoders: Sequence[str] = ("depth", "edges")) -> None:
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        self.encoder = Encoder(5, self.widths)
        self.decoders = nn.ModuleDict({name: StructureDecoder(self.widths) for name in decoders})

    @property
    def stride(self) -> int:
        return 2 ** len(self.widths)

    def forward(self, reference: torch.Tensor, ref_structure: torch.Tensor, target_structure: torch.Tensor,
                decoders: Sequence[str] | None = None) -> dict[str, dict[str, torch.Tensor]]:
        skips = self.encoder(torch.cat([reference, ref_structure], dim=1))
        out = {}
        for name in decoders or list(self.decoders):
            c = STRUCTURE_CHANNEL[name]
            out[name] = self.decoders[name](skips, reference, ref_structure[:, c : c + 1], target_structure[:, c : c + 1])
        return out


class PatchDiscriminator(nn.Module):
    """Conditional PatchGAN on (image ⊕ structure map): (B, 4, S, S) → logits (B, 1, S/8 − 2, …)."""

    def __init__(self, in_channels: int = 4, width: int = 64) -> None:
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        layers, cin = [], in_channels
        for cout in (width, 2 * width, 4 * width):
            layers += [sn(nn.Conv2d(cin, cout, 4, 2, 1)), nn.LeakyReLU(0.2)]
            cin = cout
        layers += [sn(nn.Conv2d(cin, 4 * width, 3, 1, 1)), nn.LeakyReLU(0.2), sn(nn.Conv2d(4 * width, 1, 3, 1, 1))]
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, structure: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, structure], dim=1))
