"""preprocess(), extract_features() with its disk cache, backbone_throughput()."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from generalad.backbones import backbone_throughput, create_backbone, extract_features, preprocess
from generalad.errors import ConfigError
from tests.backbones.conftest import tiny_backbone


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((30 + 7 * i, 40, 3), dtype=np.float32) for i in range(n)]


def count_forwards(bb) -> list[int]:
    calls: list[int] = []
    bb.register_forward_pre_hook(lambda m, args, kwargs: calls.append(args[0].shape[0]), with_kwargs=True)
    return calls


# ----------------------------------------------------------------------------------------- preprocess
def test_preprocess_resizes_clamps_and_normalises():
    sharp = np.zeros((50, 50, 3), dtype=np.float32)
    sharp[:, 25:] = 1.0  # a hard edge: bicubic overshoots here unless clamped
    x = preprocess([sharp, np.full((28, 28), 0.5, np.float32)], (28, 42), mean=(0.5,) * 3, std=(0.25,) * 3)
    assert x.shape == (2, 3, 28, 42) and x.dtype == torch.float32
    assert x[0].min() >= -2 - 1e-6 and x[0].max() <= 2 + 1e-6  # (0-0.5)/0.25 .. (1-0.5)/0.25
    torch.testing.assert_close(x[1], torch.zeros(3, 28, 42))  # grey replicated, mean removed
    same = np.random.default_rng(0).random((28, 42, 3), dtype=np.float32)
    plain = preprocess([same], (28, 42), (0, 0, 0), (1, 1, 1))[0]
    torch.testing.assert_close(plain, torch.from_numpy(same).permute(2, 0, 1))
    chw = torch.from_numpy(sharp).permute(2, 0, 1)[None]
    expect = F.interpolate(chw, size=(28, 42), mode="bicubic", antialias=True)
    torch.testing.assert_close(x[:1], (expect.clamp(0, 1) - 0.5) / 0.25)


# ----------------------------------------------------------------------------------------- extract_features
def test_extract_matches_direct_forward(data_api):
    bb = tiny_backbone(4)
    imgs = images(5)
    fs = extract_features(bb, imgs, image_size=(28, 42), batch_size=2, precision="fp32", with_attention=True,
                          progress=False)
    with torch.inference_mode():
        ref = bb(preprocess(imgs, (28, 42), bb.mean, bb.std), with_attention=True)
    assert len(fs) == 5 and fs.maps[0].shape == (5, 32, 2, 3) and fs.attention.shape == (5, 4, 6)
    torch.testing.assert_close(fs.maps[0], ref.maps[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fs.attention, ref.attention, rtol=1e-4, atol=1e-6)


def test_cache_hit_skips_backbone_and_is_bit_identical(tmp_path, data_api):
    bb = tiny_backbone()
    imgs = images(5)
    calls = count_forwards(bb)
    kw = dict(image_size=28, batch_size=2, precision="fp32", cache_dir=tmp_path, with_attention=True, progress=False)
    first = extract_features(bb, imgs, **kw)
    assert calls == [2, 2, 1]
    files = sorted(tmp_path.rglob("*.safetensors"))
    assert len(files) == 5 and not list(tmp_path.rglob("*.tmp"))
    stored = load_file(str(files[0]))
    assert stored["map.0"].dtype == torch.float16 and stored["attention"].shape == (4, 4)

    second = extract_features(bb, imgs, **kw)
    assert calls == [2, 2, 1]  # no new forward
    assert torch.equal(first.maps[0], second.maps[0]) and torch.equal(first.attention, second.attention)

    # Only what changed is recomputed: a new image, a corrupt file, another size or precision.
    files[0].write_bytes(b"truncated")
    extract_features(bb, imgs + images(1, seed=9), **kw)
    assert calls[3:] == [2]
    extract_features(bb, imgs, **{**kw, "image_size": 42})
    assert len(calls) == 7


def test_bf16_close_to_fp32_and_workers_agree(data_api):
    bb = tiny_backbone()
    imgs = images(6)
    fp32 = extract_features(bb, imgs, image_size=28, precision="fp32", progress=False)
    bf16 = extract_features(bb, imgs, image_size=28, precision="bf16", progress=False, num_workers=2, batch_size=2)
    rel = (bf16.maps[0] - fp32.maps[0]).abs().max() / fp32.maps[0].abs().max()
    assert 0 < rel < 0.05 and bf16.maps[0].dtype == torch.float32
    threaded = extract_features(bb, imgs, image_size=28, precision="fp32", progress=False, num_workers=2, batch_size=2)
    torch.testing.assert_close(threaded.maps[0], fp32.maps[0])


def test_bad_options_are_config_errors(data_api):
    bb = tiny_backbone()
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        extract_features(bb, images(1), image_size=28, precision="fp16")
    with pytest.raises(ConfigError, match="multiple of 14"):
        extract_features(bb, images(1), image_size=30)
    cnn = create_backbone("resnet18", weights="random")
    with pytest.raises(ConfigError, match="needs a ViT"):
        extract_features(cnn, images(1), image_size=32, with_attention=True)
    assert extract_features(bb, [], image_size=28).maps == []


def test_real_images_through_efficientnet_with_cache(bottle_dir, tmp_path, data_api):
    from generalad.data import Sample

    samples = [Sample(path=str(p), label=0) for p in sorted((bottle_dir / "test" / "broken_large").glob("*.png"))[:3]]
    bb = create_backbone("efficientnet_lite0")
    calls = count_forwards(bb)
    fs = extract_features(bb, samples, image_size=224, batch_size=2, cache_dir=tmp_path, progress=False)
    again = extract_features(bb, samples, image_size=224, batch_size=2, cache_dir=tmp_path, progress=False)
    assert calls == [2, 1]
    assert [tuple(m.shape) for m in fs.maps] == [(3, 40, 28, 28), (3, 112, 14, 14)]
    assert all(torch.equal(a, b) for a, b in zip(fs.maps, again.maps)) and torch.isfinite(fs.maps[1]).all()


def test_throughput_is_positive():
    bb = tiny_backbone()
    assert backbone_throughput(bb, 28, batch_size=2, precision="fp32", n_batches=2) > 0
    with pytest.raises(ConfigError):
        backbone_throughput(bb, 30, batch_size=2)
