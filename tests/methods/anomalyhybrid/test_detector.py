"""The DRAEM-style UNet detector (docs/methods/anomalyhybrid.md §4): shapes, focal loss, pooled-max score,
and a short overfit that localises a synthetic defect."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from generalad.methods.anomalyhybrid.detector import DiscriminativeUNet, focal_loss, pooled_max, score_window
from generalad.metrics import PixelMetrics


def test_unet_shape_and_official_widths() -> None:
    net = DiscriminativeUNet(base=8)
    assert net(torch.rand(2, 3, 64, 64)).shape == (2, 2, 64, 64)
    widths = [stage[0].out_channels for stage in net.down]
    assert widths == [8, 16, 32, 64, 64, 64]


def test_focal_loss_is_small_for_confident_correct_logits_and_down_weights_easy_pixels() -> None:
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1
    good = torch.cat([(1 - mask) * 10, mask * 10], dim=1)
    assert float(focal_loss(good, mask)) < 1e-6
    logits = torch.zeros(1, 2, 4, 4)
    ce = F.cross_entropy(logits, mask.long().squeeze(1))
    assert float(focal_loss(logits, mask)) == pytest.approx(0.25 * float(ce), rel=1e-5)  # (1 - ½)² · CE


def test_image_score_is_the_max_of_the_average_pooled_map() -> None:
    prob = torch.zeros(1, 32, 32)
    prob[0, 10:13, 20:23] = 1.0
    assert float(pooled_max(prob, 3)[0]) == pytest.approx(1.0)
    assert float(pooled_max(prob, 5)[0]) == pytest.approx(9 / 25)
    assert score_window(256) == 21 and score_window(128) == 11 and score_window(64) % 2 == 1


def test_detector_overfits_a_synthetic_defect() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 32, 32, generator=g) * 0.2 + 0.4
    mask = torch.zeros(16, 1, 32, 32)
    for i in range(8):  # half the batch: a dark square at a random place
        y0, x0 = torch.randint(0, 24, (2,), generator=g).tolist()
        mask[i, :, y0 : y0 + 6, x0 : x0 + 6] = 1
    x = x * (1 - mask) + 0.05 * mask
    net = DiscriminativeUNet(base=8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(60):
        opt.zero_grad()
        loss = focal_loss(net(x), mask)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        prob = torch.softmax(net(x), 1)[:, 1]
    auroc = PixelMetrics((32, 32)).update(prob.numpy(), mask[:, 0].bool().numpy()).compute()["pixel_auroc"]
    assert auroc > 0.95
