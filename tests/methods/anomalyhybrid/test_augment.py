"""Self-supervised pairs (docs/methods/anomalyhybrid.md §3): the local TPS warp is the identity at zero
displacement and moves nothing outside its box; pairs are seeded."""

from __future__ import annotations

import torch

from generalad.methods.anomalyhybrid.augment import (
    PairConfig, global_aug, identity_grid, local_tps, local_tps_flow, make_pairs, tps_displacement,
)


def _image(b: int = 2, s: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 5, s, s, generator=g)


def test_tps_interpolates_its_control_points() -> None:
    t = torch.linspace(0, 1, 4)
    cy, cx = torch.meshgrid(t, t, indexing="ij")
    ctrl = torch.stack([cx.flatten(), cy.flatten()], 1)
    shift = torch.randn(16, 2, generator=torch.Generator().manual_seed(1)) * 0.1
    assert torch.allclose(tps_displacement(ctrl, shift, ctrl), shift, atol=1e-4)


def test_zero_displacement_is_the_identity() -> None:
    x = _image()
    flow = local_tps_flow(48, 48, (10, 8, 20, 24), 4, torch.zeros(16, 2))
    assert float(flow.abs().max()) == 0.0
    warped = torch.nn.functional.grid_sample(x, identity_grid(2, 48, 48) + flow, mode="bilinear",
                                             padding_mode="border", align_corners=True)
    assert torch.allclose(warped, x, atol=1e-5)


def test_the_warp_moves_only_points_inside_its_box() -> None:
    flow = local_tps_flow(48, 48, (10, 8, 20, 24), 4, torch.full((16, 2), 0.3))
    moved = flow.abs().sum(-1) > 0
    assert moved.any()
    inside = torch.zeros(48, 48, dtype=torch.bool)
    inside[10:30, 8:32] = True
    assert not (moved & ~inside).any()
    x = _image()
    warped, boxes = local_tps(x, torch.Generator().manual_seed(3), PairConfig(p_tps=1.0))
    outside = boxes.expand_as(x) == 0
    assert torch.allclose(warped[outside], x[outside], atol=1e-5)
    assert (warped - x).abs()[~outside].max() > 1e-3  # and something inside did move


def test_pairs_are_seeded_and_aligned_outside_the_change() -> None:
    x = _image(4)
    a = make_pairs(x, torch.Generator().manual_seed(5), PairConfig(p_global=0.0))
    b = make_pairs(x, torch.Generator().manual_seed(5), PairConfig(p_global=0.0))
    assert all(torch.equal(a[k], b[k]) for k in a)
    same = (a["boxes"] == 0).expand_as(a["reference"])
    assert torch.allclose(a["reference"][same], a["target"][same], atol=1e-5)  # only the warped box differs
    c = make_pairs(x, torch.Generator().manual_seed(6), PairConfig(p_global=0.0))
    assert not torch.equal(a["target"], c["target"])


def test_global_augmentation_keeps_range_and_shape() -> None:
    x = _image(3)
    y = global_aug(x, torch.Generator().manual_seed(0), PairConfig())
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
