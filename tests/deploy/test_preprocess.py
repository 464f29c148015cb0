"""numpy pre- / post-processing of deployed models against the torch path it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from generalad.backbones.base import IMAGENET_MEAN, IMAGENET_STD, preprocess
from generalad.deploy.preprocess import bicubic_aa_matrix, bilinear_matrix, resize_map, to_batch
from generalad.nn.maps import resize_maps

SIZES = [(900, 224), (900, 128), (224, 518), (517, 224), (60, 224), (1024, 256), (224, 224), (7, 3)]


@pytest.mark.parametrize("n_in,n_out", SIZES)
def test_bicubic_weights_match_torch_antialias(n_in, n_out):
    eye = torch.eye(n_in)[None, None]  # resizing the identity along one axis reads torch's weights out
    ref = F.interpolate(eye, size=(n_out, n_in), mode="bicubic", antialias=True, align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(bicubic_aa_matrix(n_in, n_out), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_in,n_out", SIZES)
def test_bilinear_weights_match_torch(n_in, n_out):
    eye = torch.eye(n_in)[None, None]
    ref = F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(bilinear_matrix(n_in, n_out), ref, rtol=0, atol=2e-7)


def test_batch_equals_torch_preprocess():
    rng = np.random.default_rng(0)
    images = [rng.random((900, 900, 3), dtype=np.float32), rng.random((120, 301, 3), dtype=np.float32),
              rng.random((224, 224, 3), dtype=np.float32)]
    ours = to_batch(images, (224, 224), IMAGENET_MEAN, IMAGENET_STD)
    ref = preprocess(images, 224).numpy()
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)  # ≤ 4e-6 measured (normalised units)


def test_map_resize_equals_torch():
    rng = np.random.default_rng(1)
    amap = rng.random((224, 224), dtype=np.float32) * 50
    for hw in [(900, 900), (100, 517), (224, 224), (64, 80)]:
        ref = resize_maps(torch.from_numpy(amap)[None], hw)[0].numpy()
        np.testing.assert_allclose(resize_map(amap, hw), ref, rtol=0, atol=5e-7 * 50)  # fp32 rounding
