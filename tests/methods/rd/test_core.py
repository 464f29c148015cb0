"""RD loss and maps (docs/methods/ard.md §2): zero for a perfect student, both loss modes, map layout."""

from __future__ import annotations

import pytest
import torch

from generalad.methods.rd.core import distance_maps, distillation_loss, per_sample_loss


def _feats(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, c, s, s, generator=g) for c, s in ((8, 16), (16, 8), (32, 4))]


@pytest.mark.parametrize("mode", ["flattened", "per_position"])
def test_loss_is_zero_for_a_perfect_student(mode: str) -> None:
    t = _feats()
    assert float(distillation_loss(t, [x.clone() for x in t], mode)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(t, [2.5 * x for x in t], mode)) == pytest.approx(0.0, abs=1e-6)  # cosine: scale-free
    assert float(distillation_loss(t, _feats(1), mode)) > 2.0  # unrelated features: ≈ 1 per scale


def test_flattened_and_per_position_differ_as_documented() -> None:
    """One position flipped in sign: per-position cosine sees 1/(h·w) of it; the flattened one less or more."""
    t = [torch.randn(1, 4, 2, 2)]
    s = [t[0].clone()]
    s[0][..., 0, 0] *= -1
    per_position = float(per_sample_loss(t, s, "per_position")[0])
    assert per_position == pytest.approx(2.0 / 4, abs=1e-6)
    flat = t[0].flatten()
    expected = 1 - float(torch.nn.functional.cosine_similarity(flat, s[0].flatten(), dim=0))
    assert float(per_sample_loss(t, s, "flattened")[0]) == pytest.approx(expected, abs=1e-6)


def test_distance_maps_sum_the_scales_at_the_input_size() -> None:
    t = _feats()
    s = [x.clone() for x in t]
    s[0][:, :, 4, 4] = -s[0][:, :, 4, 4]  # one opposite vector at the finest scale → distance 2 there
    maps = distance_maps(t, s, (61, 61))  # align_corners=True: grid point 4 of 16 lands on pixel 4·60/15 = 16
    assert maps.shape == (3, 61, 61)
    assert float(maps.max()) == pytest.approx(2.0, abs=1e-5) and float(maps.min()) == pytest.approx(0.0, abs=1e-5)
    assert divmod(int(maps[0].argmax()), 61) == (16, 16)
