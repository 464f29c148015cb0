"""PatchCore on the real MVTec bottle subset with the bundled EfficientNet-Lite0 weights."""

from __future__ import annotations

import numpy as np
import pytest

from generalad.data import open_dataset
from generalad.evaluate import evaluate
from generalad.methods import load_model
from generalad.methods.patchcore import PatchCore


@pytest.fixture(scope="module")
def bottle(bottle_dir):
    return open_dataset(bottle_dir)


@pytest.fixture(scope="module")
def fitted(bottle, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return PatchCore(backbone="efficientnet_lite0", cache_dir=str(cache)).fit(bottle.train)


def test_bottle_image_auroc(fitted, bottle):
    metrics = evaluate(fitted, bottle.test)
    assert metrics["n_test"] == 83
    assert metrics["image_auroc"] >= 0.98
    # the threshold comes from 5 held-out training normals only: with < 100 scores the rule is their max
    assert "holdout" in metrics["calibration"]["source"] and metrics["calibration"]["n"] == 5
    assert metrics["threshold"] == metrics["calibration"]["stats"]["max"]
    assert 0.0 <= metrics["at_threshold"]["fpr"] <= 1.0


def test_coreset_is_ten_percent(fitted):
    assert fitted.fit_info_["bank_size"] == round(0.1 * fitted.fit_info_["n_patches"])


def test_save_load_gives_identical_scores(fitted, bottle, tmp_path):
    fitted.save(tmp_path / "run")
    again = load_model(tmp_path / "run")
    subset = bottle.test[::10]
    assert np.array_equal(again.score(subset), fitted.score(subset))
    assert again.threshold_ == fitted.threshold_


def test_same_seed_same_model(bottle, fitted, tmp_path):
    other = PatchCore(backbone="efficientnet_lite0", cache_dir=fitted.config.cache_dir).fit(bottle.train)
    assert np.array_equal(other.bank_.numpy(), fitted.bank_.numpy())


def test_maps_at_original_size(fitted, bottle):
    maps = fitted.anomaly_maps(bottle.test[:2])
    assert maps[0].shape == (900, 900) and maps[0].dtype == np.float32


# ------------------------------------------------------------------ denoising (contaminated training sets)
def test_denoise_drops_the_patches_that_recur_in_no_other_image():
    import torch

    gen = torch.Generator().manual_seed(0)
    patches = torch.randn(8, 16, 12, generator=gen) * 0.1  # 8 images of 16 alike patches
    patches[3, [2, 7]] += 5.0  # a "defect": two patches of image 3 with no match in any other image
    model = PatchCore(denoise_fraction=2 / (8 * 16), coreset_ratio=1.0, projection_dim=None)
    kept = model._nominal_patches(patches)
    assert kept.numel() == 8 * 16 - 2
    assert not {3 * 16 + 2, 3 * 16 + 7} & set(kept.tolist())


def test_denoise_kth_drops_a_defect_shared_by_two_images():
    import torch

    gen = torch.Generator().manual_seed(0)
    patches = torch.randn(8, 16, 12, generator=gen) * 0.1
    patches[3, 2] += 5.0
    patches[6, 9] = patches[3, 2]  # the same defect in images 3 and 6: each is the other's nearest patch
    defect = {3 * 16 + 2, 6 * 16 + 9}
    nearest = PatchCore(denoise_fraction=2 / (8 * 16), coreset_ratio=1.0, projection_dim=None)
    assert defect <= set(nearest._nominal_patches(patches).tolist())  # kept: masked by its twin
    second = PatchCore(denoise_fraction=2 / (8 * 16), denoise_kth=2, projection_dim=None, precision="fp32")
    assert not defect & set(second._nominal_patches(patches).tolist())


def test_denoise_fraction_is_validated():
    from generalad.errors import ConfigError

    with pytest.raises(ConfigError, match="denoise_fraction"):
        PatchCore(denoise_fraction=1.0)
    with pytest.raises(ConfigError, match="denoise_kth"):
        PatchCore(denoise_kth=0)


def test_denoise_drops_mostly_the_defects_of_real_contaminants(bottle, fitted):
    """Bottle training set plus three broken test bottles: the dropped patches come from the contaminants."""
    import torch

    contaminants = [s for s in bottle.test if s.label == 1][::10][:3]  # broken_large x2, broken_small
    train = list(bottle.train) + contaminants
    model = PatchCore(backbone="efficientnet_lite0", cache_dir=fitted.config.cache_dir, denoise_fraction=0.01)
    patches, _ = model.patches(model.extract(train))
    n, p, _ = patches.shape
    dropped = torch.ones(n * p, dtype=torch.bool)
    dropped[model._nominal_patches(patches)] = False
    per_image = torch.bincount(torch.arange(n * p)[dropped] // p, minlength=n)
    assert int(dropped.sum()) == round(0.01 * n * p)
    # 3 of 53 images, yet most of the dropped patches; each large break loses more than any normal image
    assert per_image[-3:].sum() > 0.5 * dropped.sum()
    assert per_image[-3:-1].min() > per_image[:-3].max()

    model.fit(train)
    assert model.fit_info_["denoised_patches"] == round(0.01 * model.fit_info_["n_patches"])


def test_patch_width_comes_from_the_backbone(fitted, bottle, vits14_weights):
    """Lite0 taps 40 + 112 channels → 152-d patches; 1024 (the paper's) only when asked; ViT-S 384."""
    assert fitted.feature_dim_ == 152 and fitted.bank_.shape[1] == 152 and fitted.config.feature_dim is None
    assert fitted.fit_info_["feature_dim"] == 152
    wide = PatchCore(backbone="efficientnet_lite0", image_size=64, feature_dim=1024, calibration_min=2)
    assert wide.fit(bottle.train[:4]).bank_.shape[1] == 1024
    vit = PatchCore(backbone="dinov2_vits14", weights=str(vits14_weights), image_size=56, calibration_min=2)
    assert vit.fit(bottle.train[:4]).bank_.shape[1] == 384
    assert vit.get_params()["feature_dim"] is None  # resolved on the model, never written into the config


def test_patch_width_is_validated():
    from generalad.errors import ConfigError

    with pytest.raises(ConfigError, match="feature_dim"):
        PatchCore(feature_dim=0)
