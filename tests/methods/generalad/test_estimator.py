"""GeneralAD estimator: fit/score/save on real bottle images (small epochs), selection stamps, few-shot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from generalad.cli import main
from generalad.data import open_dataset, sample_shots
from generalad.errors import ConfigError
from generalad.evaluate import evaluate
from generalad.methods import load_model
from generalad.methods.generalad import GeneralAD

FAST = {"image_size": 112, "epochs": 3, "train_batch_size": 8}


@pytest.fixture(scope="module")
def bottle(bottle_dir):
    return open_dataset(bottle_dir)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


def _vit(weights, cache, **kw):
    return GeneralAD(backbone="dinov2_vits14", weights=str(weights), cache_dir=cache, **{**FAST, **kw})


def test_vit_fit_score_save_load(bottle, vits14_weights, cache, tmp_path):
    model = _vit(vits14_weights, cache).fit(bottle.train[:20])
    assert model.grid_ == (8, 8) and model.selection_ == "last epoch (3)"
    scores = model.score(bottle.test[::8])
    assert np.all(np.isfinite(scores))
    model.save(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["selection"] == "last epoch (3)" and len(meta["history"]) == 3
    again = load_model(tmp_path / "run", weights=str(vits14_weights))
    assert np.allclose(again.score(bottle.test[::8]), scores, atol=1e-5)


def test_same_seed_identical_scores(bottle, vits14_weights, cache):
    a = _vit(vits14_weights, cache, seed=3).fit(bottle.train[:12]).score(bottle.test[:6])
    b = _vit(vits14_weights, cache, seed=3).fit(bottle.train[:12]).score(bottle.test[:6])
    assert np.array_equal(a, b)


def test_one_shot_trains_without_nan(bottle, vits14_weights, cache):
    shots = sample_shots(bottle.train, 1, seed=0)
    model = _vit(vits14_weights, cache, epochs=5).fit(shots)
    assert all(np.isfinite(h["loss"]) for h in model.history_)
    assert "optimistic" in model.calibration_.source  # nothing could be held out of one image
    assert np.all(np.isfinite(model.score(bottle.test[:4])))


def test_select_on_test_is_stamped(bottle, vits14_weights, cache):
    model = _vit(vits14_weights, cache).fit(bottle.train[:12], select_on_test=bottle.test[::4])
    assert model.selection_.startswith("test (paper parity)")
    metrics = evaluate(model, bottle.test[::4])
    assert metrics["selection"].startswith("test (paper parity)")


def test_validation_selection_uses_training_normals_only(bottle, vits14_weights, cache):
    model = _vit(vits14_weights, cache, selection="validation", early_stopping_patience=2).fit(bottle.train[:20])
    assert model.selection_.startswith("validation")
    assert all("val_loss" in h for h in model.history_)


def test_cnn_backbone_with_attention_fallback_and_cli(tmp_path, capsys):
    from generalad.demo import make_synthetic_category

    data = make_synthetic_category(tmp_path / "d", n_train=10, n_good=3, n_per_defect=1, size=96)
    run = tmp_path / "run"
    code = main(["fit", "--model", "generalad", "--data", str(data), "--backbone", "efficientnet_lite0",
                 "--image-size", "96", "--epochs", "2", "--preset", "logical", "--out", str(run), "--quiet"])
    assert code == 0
    meta = json.loads((run / "config.json").read_text())
    assert meta["config"]["preset"] == "logical"
    assert main(["test", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "res"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "res" / "metrics.json").read_text())
    assert metrics["distortions"] == ["noise_all", "random", "attn_shuffle"]
    assert "feature norm" in metrics["cnn_features"]
    assert metrics["sigma"] == pytest.approx(0.25, abs=1e-3)  # LayerNorm-ed CNN tokens: both σ units agree
    assert main(["fit", "--model", "generalad", "--data", str(data), "--backbone", "efficientnet_lite0",
                 "--coreset-ratio", "0.1", "--out", str(tmp_path / "x"), "--quiet"]) == 2


def test_sigma_in_feature_units_is_measured_on_training_features(bottle, vits14_weights, cache, tmp_path):
    model = _vit(vits14_weights, cache, epochs=1).fit(bottle.train[:12])
    fitted_on = set(model.train_files_)
    train = [s for s in bottle.train if s.path in fitted_on]
    tokens, _ = model._tokens(model.extract(train))
    expected = 0.25 * float(tokens.std())
    assert model.config.sigma_unit == "feature_std"
    assert model.method_stats_["sigma_effective"] == pytest.approx(expected, rel=1e-5)
    assert expected > 0.4  # this ViT's final-LN tokens have std ≈ 2.4, so the two units differ here
    assert model.protocol()["sigma_unit"] == "feature_std"
    model.save(tmp_path / "run")
    loaded = load_model(tmp_path / "run", weights=str(vits14_weights))
    assert loaded.protocol()["sigma"] == pytest.approx(expected, rel=1e-5)
    absolute = _vit(vits14_weights, cache, epochs=1, sigma_unit="absolute").fit(bottle.train[:12])
    assert absolute.method_stats_["sigma_effective"] == 0.25


def test_unknown_sigma_unit_is_a_config_error():
    with pytest.raises(ConfigError, match="sigma_unit"):
        GeneralAD(sigma_unit="relative")
