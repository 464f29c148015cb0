"""GeneralAD discriminator: structure, parameter counts, positional-table resampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from generalad.errors import InputError
from generalad.methods.generalad.discriminator import Discriminator, Dropout, dropout, resample_positions


pytestmark = pytest.mark.usefixtures("single_thread")


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "dim, millions, table",
    [(384, 2.69, 0.53), (768, 6.56, 1.05), (1024, 9.80, 1.40)],  # ViT-S / B / L at 37×37 (docs/methods/generalad.md §5)
)
def test_parameter_counts_match_spec(dim: int, millions: float, table: float) -> None:
    model = Discriminator(dim, (37, 37))
    assert round(_count(model) / 1e6, 2) == millions
    assert round(model.pos_embed.numel() / 1e6, 2) == table


def test_vit_s_exact_parameter_count() -> None:
    assert _count(Discriminator(384, (37, 37))) == 2_693_504


def test_parts_and_init() -> None:
    torch.manual_seed(0)
    model = Discriminator(64, (16, 16), num_heads=4, hidden=128, dropout=0.1)
    assert model.head.bias is None and model.head.out_features == 1
    assert model.attn.batch_first and model.attn.num_heads == 4 and model.attn.dropout == 0.1
    assert [type(m) for m in model.mlp] == [torch.nn.Linear, torch.nn.GELU, Dropout, torch.nn.Linear]
    assert model.mlp[0].out_features == 128
    # N(0, 1) positional table, not the 0.02 of ViTs.
    assert abs(model.pos_embed.std().item() - 1.0) < 0.05
    assert model.grid == (16, 16) and model.num_patches == 256
    assert model.config() == {"dim": 64, "grid": [16, 16], "num_heads": 4, "hidden": 128, "dropout": 0.1}


def test_forward_matches_hand_written_block() -> None:
    torch.manual_seed(0)
    model = Discriminator(32, (4, 4), num_heads=4, hidden=64).eval()
    x = torch.randn(3, 16, 32)
    out = model(x)
    assert out.shape == (3, 16)
    # Hand-written: x0 = F + E; LN(x0 + MHA(x0)); + MLP; bias-free head (dropout off in eval).
    x0 = x + model.pos_embed
    a = model.attn(x0, x0, x0, need_weights=True)[0]
    x1 = F.layer_norm(x0 + a, (32,), model.norm.weight, model.norm.bias)
    w1, w2 = model.mlp[0], model.mlp[3]
    x2 = x1 + w2(F.gelu(w1(x1)))
    expected = (x2 @ model.head.weight.T).squeeze(-1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_attention_called_without_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    model = Discriminator(16, (2, 2), num_heads=2, hidden=8).eval()  # inference: the fused kernel
    seen = {}
    original = model.attn.forward

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(model.attn, "forward", spy)
    model(torch.randn(1, 4, 16))
    assert seen.get("need_weights") is False


def test_dropout_only_in_train_mode_and_fp16_input() -> None:
    torch.manual_seed(0)
    model = Discriminator(32, (4, 4), num_heads=4, hidden=64, dropout=0.5)
    x = torch.randn(2, 16, 32)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    out16 = model(x.half())
    assert out16.dtype == torch.float32
    torch.testing.assert_close(out16, model(x.half().float()))


def test_training_attention_equals_fused_kernel_without_drops() -> None:
    """The written-out training attention is the fused eval attention when nothing is dropped."""
    torch.manual_seed(0)
    model = Discriminator(32, (4, 4), num_heads=4, hidden=64, dropout=1e-9)  # p rounds to 0: no drops
    x = torch.randn(3, 16, 32)
    train_out = model.train()._attention(x)
    torch.testing.assert_close(train_out, model.eval()._attention(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_rate_scale_and_reproducibility(p: float) -> None:
    x = torch.ones(400_000)
    torch.manual_seed(3)
    y = dropout(x, p)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.003  # binomial std at 400k draws is < 0.001
    assert torch.allclose(y[y != 0], torch.tensor(1 / (1 - round(p * 65536) / 65536)))
    torch.manual_seed(3)
    assert torch.equal(dropout(x, p), y)
    assert dropout(x, p, training=False) is x
    # odd sizes, bf16 and gradients flow only through kept entries
    z = torch.randn(7, 5, requires_grad=True)
    dropout(z.bfloat16(), 0.3).float().sum().backward()
    g = z.grad
    assert g.shape == (7, 5) and bool(((g == 0) | ((g - 1 / 0.7).abs() < 0.02)).all())


def test_wrong_patch_count_is_a_clear_error() -> None:
    model = Discriminator(8, (4, 4), num_heads=2, hidden=8)
    with pytest.raises(InputError, match="resize_positions"):
        model(torch.randn(1, 9, 8))


def test_resample_positions_is_bicubic_on_the_grid() -> None:
    torch.manual_seed(0)
    table = torch.randn(4 * 6, 5)
    out = resample_positions(table, (4, 6), (8, 3))
    img = table.T.reshape(1, 5, 4, 6)
    expected = F.interpolate(img, size=(8, 3), mode="bicubic", align_corners=False).reshape(5, 24).T
    torch.testing.assert_close(out, expected)
    # constant tables stay constant; same grid is a copy
    const = torch.full((16, 3), 0.7)
    torch.testing.assert_close(resample_positions(const, (4, 4), (7, 5)), torch.full((35, 3), 0.7))
    assert torch.equal(resample_positions(table, (4, 6), (4, 6)), table)


def test_resize_positions_in_place() -> None:
    torch.manual_seed(0)
    model = Discriminator(8, (4, 4), num_heads=2, hidden=8)
    before = model.pos_embed.detach().clone()
    model.resize_positions((6, 5))
    assert model.grid == (6, 5) and model.pos_embed.shape == (30, 8)
    assert isinstance(model.pos_embed, torch.nn.Parameter) and model.pos_embed.requires_grad
    torch.testing.assert_close(model.pos_embed.detach(), resample_positions(before, (4, 4), (6, 5)))
    assert model(torch.randn(2, 30, 8)).shape == (2, 30)
    assert model.state_dict()["grid_shape"].tolist() == [6, 5]


def test_load_state_dict_resamples_other_grid() -> None:
    torch.manual_seed(0)
    small = Discriminator(8, (4, 4), num_heads=2, hidden=8)
    big = Discriminator(8, (8, 8), num_heads=2, hidden=8)
    big.load_state_dict(small.state_dict())
    assert big.grid == (8, 8)
    table = small.pos_embed.detach()
    torch.testing.assert_close(big.pos_embed.detach(), resample_positions(table, (4, 4), (8, 8)))
    torch.testing.assert_close(big.mlp[0].weight, small.mlp[0].weight)
    # files without grid_shape: square grids are inferred
    state = {k: v for k, v in small.state_dict().items() if k != "grid_shape"}
    other = Discriminator(8, (5, 5), num_heads=2, hidden=8)
    other.load_state_dict(state)
    torch.testing.assert_close(other.pos_embed.detach(), resample_positions(table, (4, 4), (5, 5)))


def test_from_state_dict_reads_sizes() -> None:
    torch.manual_seed(0)
    model = Discriminator(16, (3, 5), num_heads=2, hidden=24).eval()
    clone = Discriminator.from_state_dict(model.state_dict(), num_heads=2).eval()
    assert clone.config() == model.config()
    x = torch.randn(2, 15, 16)
    torch.testing.assert_close(clone(x), model(x))
    resized = Discriminator.from_state_dict(model.state_dict(), num_heads=2, grid=(6, 10))
    assert resized.grid == (6, 10)
