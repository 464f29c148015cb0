"""Generator modules (docs/methods/anomalyhybrid.md §3): shapes, value ranges, exact copy where M = 0."""

from __future__ import annotations

import pytest
import torch

from generalad.methods.anomalyhybrid.generator import HybridGenerator, PatchDiscriminator, compose


def test_composition_copies_the_reference_exactly_where_the_fusion_map_is_zero() -> None:
    ref, gen = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    m = torch.zeros(2, 1, 16, 16)
    m[:, :, 4:8, 4:8] = 1.0
    out = compose(ref, gen, m)
    assert torch.equal(out[:, :, :4], ref[:, :, :4])
    assert torch.equal(out[:, :, 4:8, 4:8], gen[:, :, 4:8, 4:8])


@pytest.mark.parametrize("decoders", [("depth", "edges"), ("edges",)])
def test_generator_shapes_and_ranges(decoders) -> None:
    torch.manual_seed(0)
    gen = HybridGenerator((8, 16, 32, 64), decoders)
    ref, structure = torch.rand(2, 3, 64, 64), torch.rand(2, 2, 64, 64)
    out = gen(ref, structure, structure)
    assert set(out) == set(decoders)
    for o in out.values():
        assert o["image"].shape == (2, 3, 64, 64) and o["fusion"].shape == (2, 1, 64, 64)
        assert 0 <= float(o["image"].min()) and float(o["image"].max()) <= 1
        assert 0 <= float(o["fusion"].min()) and float(o["fusion"].max()) <= 1
        assert torch.allclose(o["image"], compose(ref, o["generated"], o["fusion"]))


def test_cpu_preset_size_and_discriminator_shape() -> None:
    gen = HybridGenerator((32, 64, 128, 256))
    n = sum(p.numel() for p in gen.parameters())
    assert 3e6 < n < 6e6  # "a few million parameters" (docs §6)
    d = PatchDiscriminator()
    assert d(torch.rand(2, 3, 128, 128), torch.rand(2, 1, 128, 128)).shape == (2, 1, 16, 16)
