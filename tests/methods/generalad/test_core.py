"""GeneralAD core: config/presets, training on cached features, scores and maps (tiny CPU sizes)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from generalad.errors import ConfigError, InputError
from generalad.methods.generalad import core, memory
from generalad.methods.generalad.core import (
    PRESETS,
    GeneralADConfig,
    distortion_loss,
    image_scores,
    logit_maps,
    map_blur,
    patch_logits,
    preset,
    resolve_top_k,
    train_discriminator,
)
from generalad.methods.generalad.discriminator import Discriminator
from generalad.methods.generalad.distortions import make_generator
from generalad.methods.generalad.losses import generalad_loss
from generalad.nn.maps import upsample_maps

GRID = (4, 4)
P, D = 16, 16
TINY = dict(hidden=32, heads=2, train_precision="fp32")


pytestmark = pytest.mark.usefixtures("single_thread")


def normal_features(n: int, seed: int = 0) -> torch.Tensor:
    """Normal images: a fixed per-position prototype plus small per-image jitter.

    With sigma = 1 the noise is learnable by a tiny discriminator in ~200 steps (isotropic Gaussian
    "normal" features would make noise undetectable: the block's LayerNorm removes pure scale changes).
    """
    g = torch.Generator().manual_seed(1000)
    proto = torch.randn(P, D, generator=g)
    jitter = torch.randn(n, P, D, generator=torch.Generator().manual_seed(seed))
    return proto + 0.05 * jitter


@pytest.fixture(scope="module")
def trained() -> tuple[Discriminator, list[dict]]:
    cfg = preset("industrial", epochs=100, lr=3e-3, sigma=1.0, **TINY)
    return train_discriminator(normal_features(32), GRID, cfg)


# ------------------------------------------------------------------------------------------ config
def test_presets_follow_spec() -> None:
    ind, log, sem, near = (preset(k) for k in ("industrial", "logical", "semantic", "near_distribution"))
    assert (ind.distortions, ind.top_k, ind.epochs, ind.semantic_epoch_size) == (("random",), 10, 160, None)
    assert (log.distortions, log.top_k, log.epochs) == (("random", "attn_shuffle"), 10, 160)
    assert (sem.distortions, sem.top_k, sem.epochs, sem.semantic_epoch_size) == ((), -1, 20, 250)
    assert (near.distortions, near.top_k, near.epochs, near.semantic_epoch_size) == ((), -1, 160, None)
    for cfg in (preset(k) for k in PRESETS):
        assert cfg.noise_all and cfg.sigma == 0.25 and cfg.heads == 4 and cfg.hidden == 2048
        assert (cfg.lr, cfg.weight_decay, cfg.eta_min_factor, cfg.train_batch_size) == (5e-4, 1e-5, 0.2, 16)
        assert (cfg.map_sigma_at_518, cfg.map_radius_at_518, cfg.seed) == (16.0, 18, 0)
    assert log.needs_attention and not ind.needs_attention and not sem.needs_attention
    # preset() copies: overriding never mutates the table; an unresolved config keeps its Nones
    assert preset("industrial", epochs=3).epochs == 3 and PRESETS["industrial"]["epochs"] == 160
    assert GeneralADConfig().epochs is None and GeneralADConfig().resolved().epochs == 160


@pytest.mark.parametrize(
    "bad",
    [
        dict(distortions=("cutpaste",)),
        dict(distortions=("noise_all",)),
        dict(distortions=("random", "random")),
        dict(top_k=0),
        dict(epochs=0),
        dict(train_precision="fp16"),
        dict(precision="fp16"),
        dict(noise_all=False, distortions=()),
        dict(dropout=1.0),
        dict(copies_per_forward=0),
    ],
)
def test_invalid_config_raises(bad: dict) -> None:
    with pytest.raises(ConfigError):
        GeneralADConfig(**bad)


def test_config_dict_roundtrip() -> None:
    cfg = preset("logical", epochs=7, shuffle_k_max=-1)
    assert cfg.shuffle_k_max == -1 and cfg.k_max is None  # -1 = all patches; the config keeps what was given
    data = cfg.to_dict()
    assert tuple(data["distortions"]) == ("random", "attn_shuffle")
    assert GeneralADConfig.from_dict(data) == cfg
    with pytest.raises(ConfigError, match="unknown"):
        GeneralADConfig.from_dict({**data, "bogus": 1})
    with pytest.raises(ConfigError, match="preset"):
        preset("medical")


# ------------------------------------------------------------------------------------------ training
def test_loss_decreases_and_history(trained) -> None:
    disc, history = trained
    assert not disc.training
    assert len(history) == 100 and history[-1]["selected"]
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert all(h["steps"] == 2 and h["batch_size"] == 16 for h in history)
    assert set(history[0]["terms"]) == {"clean", "noise_all", "random"}
    # cosine per epoch: lr_e = eta_min + (lr - eta_min)(1 + cos(pi e / T)) / 2
    for h in history:
        expected = 6e-4 + (3e-3 - 6e-4) * (1 + math.cos(math.pi * h["epoch"] / 100)) / 2
        assert math.isclose(h["lr"], expected, rel_tol=1e-9)


def test_noised_patches_get_higher_logits(trained) -> None:
    disc, _ = trained
    clean = normal_features(8, seed=99)
    mask = torch.zeros(8, P, dtype=torch.bool)
    mask[:, ::4] = True
    noisy = clean + 1.0 * torch.randn(clean.shape, generator=make_generator(5)) * mask[..., None]
    logits = patch_logits(disc, noisy, batch_size=3)
    assert logits.shape == (8, P)
    pos, neg = logits[mask], logits[~mask]
    auroc = (pos[:, None] > neg[None, :]).float().mean().item()
    assert auroc > 0.9
    normal_scores = image_scores(patch_logits(disc, clean), top_k=3)
    anomalous_scores = image_scores(logits, top_k=3)
    assert anomalous_scores.min() > normal_scores.max()


def test_one_shot_trains_without_nan() -> None:
    cfg = preset("logical", epochs=10, **TINY)
    feats = normal_features(1)
    attn = torch.rand(1, 3, P, generator=make_generator(0))
    disc, history = train_discriminator(feats.half(), GRID, cfg, attention=attn)
    assert all(h["batch_size"] == 1 and h["steps"] == 1 for h in history)
    assert all(math.isfinite(h["loss"]) for h in history)
    assert all(torch.isfinite(p).all() for p in disc.parameters())


def test_same_seed_is_bit_identical_and_global_rng_untouched() -> None:
    cfg = preset("logical", epochs=2, train_batch_size=4, **TINY)
    feats, attn = normal_features(9), torch.rand(9, 3, P, generator=make_generator(1))
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, ha = train_discriminator(feats, GRID, cfg, attention=attn)
    assert torch.equal(torch.rand(3), before)  # caller's RNG stream is not consumed
    b, hb = train_discriminator(feats, GRID, cfg, attention=attn)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    other_seed = preset("logical", epochs=2, train_batch_size=4, seed=1, **TINY)
    c, _ = train_discriminator(feats, GRID, other_seed, attention=attn)
    assert not torch.equal(a.pos_embed, c.pos_embed)


def test_semantic_epochs_and_small_batches() -> None:
    cfg = preset("semantic", epochs=2, semantic_epoch_size=10, train_batch_size=4, **TINY)
    _, history = train_discriminator(normal_features(30), GRID, cfg)
    assert [h["steps"] for h in history] == [2, 2]  # 10 images/epoch, batch 4, drop-last
    assert set(history[0]["terms"]) == {"clean", "noise_all"}


def test_grouped_copies_give_same_loss_and_gradient() -> None:
    cfg = preset("logical", dropout=0.0, **TINY)
    torch.manual_seed(0)
    disc = Discriminator(D, GRID, num_heads=2, hidden=32, dropout=0.0)
    x, attn = normal_features(4), torch.rand(4, 3, P, generator=make_generator(0))
    grads, totals = [], []
    for group in (None, 1, 3):
        disc.zero_grad()
        g = make_generator(7)
        total, _ = distortion_loss(disc, x, dataclasses.replace(cfg, copies_per_forward=group), g,
                                   attention=attn, backward=True)
        totals.append(total)
        grads.append(torch.cat([p.grad.flatten() for p in disc.parameters()]))
    for t, gr in zip(totals[1:], grads[1:]):
        torch.testing.assert_close(t, totals[0])
        torch.testing.assert_close(gr, grads[0], rtol=1e-4, atol=1e-6)
    # and the total is generalad_loss over separate forwards of the same copies
    g = make_generator(7)
    from generalad.methods.generalad.core import build_copies

    copies = build_copies(x, cfg, g, attention=attn)
    logits = [disc(c[1]) for c in copies]
    ref = generalad_loss(logits[0], logits[1], [(lg, c[2]) for lg, c in zip(logits[2:], copies[2:])])
    torch.testing.assert_close(totals[0], ref.detach(), rtol=1e-5, atol=1e-6)


def test_validation_early_stopping_and_callback() -> None:
    cfg = preset("industrial", epochs=6, selection="validation", early_stopping_patience=2, **TINY)
    states = {}

    def on_epoch(epoch: int, disc: Discriminator) -> None:
        assert not disc.training
        states[epoch] = {k: v.clone() for k, v in disc.state_dict().items()}

    disc, history = train_discriminator(normal_features(8), GRID, cfg, validation=normal_features(4, seed=3),
                                        on_epoch=on_epoch)
    vals = [h["val_loss"] for h in history]
    best = min(range(len(vals)), key=vals.__getitem__)
    assert history[best].get("selected") and sum(bool(h.get("selected")) for h in history) == 1
    for k, v in disc.state_dict().items():
        assert torch.equal(v, states[best][k]), k
    # the callback can stop training
    _, short = train_discriminator(normal_features(8), GRID, preset("industrial", epochs=5, **TINY),
                                   on_epoch=lambda e, d: e == 1)
    assert len(short) == 2
    with pytest.raises(ConfigError, match="validation"):
        train_discriminator(normal_features(8), GRID, cfg)


def test_input_checks() -> None:
    with pytest.raises(InputError, match="attention"):
        train_discriminator(normal_features(2), GRID, preset("logical", epochs=1, **TINY))
    with pytest.raises(InputError, match="grid"):
        train_discriminator(normal_features(2), (5, 5), preset("industrial", epochs=1, **TINY))


def test_bf16_training_and_inference_are_finite() -> None:
    cfg = preset("industrial", epochs=2, hidden=32, heads=2, train_precision="bf16")
    disc, history = train_discriminator(normal_features(4), GRID, cfg)
    assert math.isfinite(history[-1]["loss"])
    fp32 = patch_logits(disc, normal_features(3))
    bf16 = patch_logits(disc, normal_features(3), precision="bf16")
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, atol=0.1, rtol=0.05)


# ------------------------------------------------------------------------------------------ inference
def test_patch_logits_batching_and_mode(trained) -> None:
    disc, _ = trained
    disc.train()
    feats = normal_features(5, seed=4)
    a = patch_logits(disc, feats, batch_size=2)
    assert disc.training  # mode restored
    disc.eval()
    torch.testing.assert_close(a, patch_logits(disc, feats, batch_size=64))
    assert patch_logits(disc, feats[:0]).shape == (0, P)


def test_image_scores_top_k() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, -2.0], [0.0, 0.0, 4.0, 8.0]])
    assert torch.equal(image_scores(logits, 1), torch.tensor([5.0, 8.0]))
    assert torch.equal(image_scores(logits, 2), torch.tensor([4.0, 6.0]))
    assert torch.equal(image_scores(logits, -1), torch.tensor([1.75, 3.0]))
    assert torch.equal(image_scores(logits, 4), image_scores(logits, -1))
    for bad in (0, 5, -2):
        with pytest.raises(ConfigError):
            image_scores(logits, bad)


def test_resolve_top_k() -> None:
    assert resolve_top_k(10, 1369) == 10
    assert resolve_top_k(10, 256) == 10
    assert resolve_top_k(10, 256, "scaled") == 2  # 10/1369 of 256 patches
    assert resolve_top_k(10, 16, "scaled") == 1
    assert resolve_top_k(-1, 256) == 256


def test_logit_maps_blur_scaling() -> None:
    assert map_blur((518, 518)) == (16.0, 18)  # [C] parity at 518 px
    sigma, radius = map_blur((259, 259))
    assert sigma == 8.0 and radius == 9
    logits = torch.randn(2, 16, generator=make_generator(0))
    maps = logit_maps(logits, GRID, 518)
    assert maps.shape == (2, 518, 518)
    ref = upsample_maps(logits.reshape(2, 4, 4), (518, 518), sigma=16.0, radius=18)
    torch.testing.assert_close(maps, ref)
    const = logit_maps(torch.full((1, 16), 2.5), GRID, (64, 48))
    torch.testing.assert_close(const, torch.full((1, 64, 48), 2.5))
    unblurred = logit_maps(logits, GRID, 60, sigma_at_518=0)
    torch.testing.assert_close(unblurred, upsample_maps(logits.reshape(2, 4, 4), (60, 60)))
    with pytest.raises(InputError):
        logit_maps(logits, (5, 5), 64)


# ------------------------------------------------------------------ memory plan
def test_memory_plan_keeps_one_forward_when_it_fits():
    cfg = preset("industrial")  # clean + noise-all + random = 3 copies
    assert memory.plan_copies_per_forward(cfg, 16, 256, available=2**40) is None


def test_memory_plan_splits_copies_when_attention_is_large():
    cfg = preset("industrial")
    one_copy = memory.attention_bytes(16, 784, cfg.heads)
    assert memory.plan_copies_per_forward(cfg, 16, 784, available=int(2.5 * one_copy)) == 1


def test_memory_plan_refuses_a_grid_that_cannot_fit():
    cfg = preset("industrial")
    # CNN stride 8 at 518 px: 65 x 65 patches, ~18 GiB per copy of 16 images
    with pytest.raises(ConfigError, match="4225 patches.*--image-size"):
        memory.plan_copies_per_forward(cfg, 16, 65 * 65, available=8 * 2**30)
