"""GeneralAD loss: hand computation, batch pooling, empty-set guard."""

from __future__ import annotations

import math

import torch

from generalad.methods.generalad.losses import constant_bce, generalad_loss, masked_bce, partial_bce


def _bce(x: float, y: float) -> float:
    p = 1.0 / (1.0 + math.exp(-x))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_equals_hand_computation() -> None:
    clean = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    noise = torch.tensor([[1.0, 3.0], [-0.5, 0.2]])
    part = torch.tensor([[0.3, -0.7], [1.5, -2.0]])
    labels = torch.tensor([[True, False], [False, False]])
    total, terms = generalad_loss(clean, noise, [(part, labels)], return_terms=True)
    exp_clean = sum(_bce(v, 0) for v in [0.5, -1.0, 2.0, 0.0]) / 4
    exp_noise = sum(_bce(v, 1) for v in [1.0, 3.0, -0.5, 0.2]) / 4
    # pooled over the batch: 3 zero-patches from two images, 1 one-patch
    exp_part = sum(_bce(v, 0) for v in [-0.7, 1.5, -2.0]) / 3 + _bce(0.3, 1)
    assert math.isclose(terms["clean"].item(), exp_clean, rel_tol=1e-6)
    assert math.isclose(terms["noise_all"].item(), exp_noise, rel_tol=1e-6)
    assert math.isclose(terms["partial0"].item(), exp_part, rel_tol=1e-6)
    assert math.isclose(total.item(), exp_clean + exp_noise + exp_part, rel_tol=1e-6)


def test_partial_means_pool_over_batch_not_per_image() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]])
    labels = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.float32)  # float labels accepted
    pos = [1.0, -1.0, 0.5, 4.0]
    neg = [2.0, 3.0]
    expected = sum(_bce(v, 1) for v in pos) / 4 + sum(_bce(v, 0) for v in neg) / 2
    assert math.isclose(partial_bce(logits, labels).item(), expected, rel_tol=1e-6)


def test_empty_sets_are_skipped_never_nan() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 16, requires_grad=True)  # batch 1
    all_ones = torch.ones(1, 16, dtype=torch.bool)  # k = N: no 0-patches
    loss = generalad_loss(torch.randn(1, 16), torch.randn(1, 16), [(logits, all_ones), (logits, ~all_ones)])
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # the skipped term contributes exactly 0
    assert masked_bce(logits, torch.zeros(1, 16, dtype=torch.bool), 1.0).item() == 0.0
    assert math.isclose(
        partial_bce(logits, all_ones).item(), masked_bce(logits, all_ones, 1.0).item(), rel_tol=1e-7
    )


def test_noise_all_can_be_switched_off_and_bf16_logits() -> None:
    clean = torch.randn(2, 5).bfloat16()
    total = generalad_loss(clean)
    assert total.dtype == torch.float32
    assert math.isclose(total.item(), constant_bce(clean, 0.0).item(), rel_tol=1e-6)
