"""The "simple UNet" detector: DRAEM's discriminative sub-network and its focal loss (docs/methods/anomalyhybrid.md §4).

``DiscriminativeUNet(base)``: RGB (B, 3, S, S) in [0, 1] → 2 logits (B, 2, S, S). Encoder: 6 stages of two
[conv3×3 + BN + ReLU] with base·(1, 2, 4, 8, 8, 8) channels, max-pooling between stages; decoder: 5 ×
[bilinear ×2 + conv + BN + ReLU, concatenate the encoder skip, two conv + BN + ReLU]; a final 3×3 conv to 2
logits. Weights N(0, 0.02) (BN: N(1, 0.02), bias 0) as in the AnomalyDiffusion / DRAEM code. S must be a
multiple of 32. ``base`` 64 is the paper's (≈ 200 GFLOP per 256² training sample); the CPU preset uses 16 at 128².
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STAGE_MULTIPLIERS = (1, 2, 4, 8, 8, 8)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class _Up(nn.Module):
    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.conv = _double_conv(cout + skip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class DiscriminativeUNet(nn.Module):
    def __init__(self, base: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        chans = [base * m for m in STAGE_MULTIPLIERS]
        self.down = nn.ModuleList([_double_conv(in_channels, chans[0])] +
                                  [_double_conv(chans[i], chans[i + 1]) for i in range(5)])
        self.up = nn.ModuleList(_Up(chans[i + 1] if i == 4 else chans[i + 1], chans[i], chans[i]) for i in range(4, -1, -1))
        self.head = nn.Conv2d(chans[0], 2, 3, padding=1)
        self.apply(_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, stage in enumerate(self.down):
            x = stage(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        x = skips.pop()
        for up in self.up:
            x = up(x, skips.pop())
        return self.head(x)


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def focal_loss(logits: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean focal loss on the softmax of (B, 2, H, W) ``logits`` against a binary (B, 1, H, W) ``mask``."""
    logp = F.log_softmax(logits, dim=1)
    target = mask.long().squeeze(1)
    logp_t = logp.gather(1, target[:, None]).squeeze(1)
    return (-(1 - logp_t.exp()) ** gamma * logp_t).mean()


def pooled_max(prob: torch.Tensor, window: int) -> torch.Tensor:
    """Image scores (B,): max of the ``window``×``window`` average-pooled (B, H, W) map (stride 1, no padding)."""
    pooled = F.avg_pool2d(prob[:, None], window, stride=1, padding=window // 2, count_include_pad=False)
    return pooled.flatten(1).amax(dim=1)


def score_window(size: int) -> int:
    """[AD]'s 21 × 21 window at 256 px, scaled with the resolution and kept odd."""
    w = max(1, round(21 * size / 256))
    return w if w % 2 else w + 1
