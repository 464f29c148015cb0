"""RD / ARD estimators on small synthetic data (EfficientNet-Lite0 teacher, bundled ImageNet weights).

A short overfit must localise a pasted patch; same seed → identical maps; the parity selection and the
validation monitor are stamped; a model file round-trips.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from generalad.data import open_dataset, read_image, read_mask
from generalad.data.synthetic import paste_one, pasted_defects
from generalad.demo import make_synthetic_category
from generalad.errors import ConfigError
from generalad.methods import load_model
from generalad.methods.rd import ARD, ReverseDistillation

TINY = {"backbone": "efficientnet_lite0", "image_size": 64, "device": "cpu", "train_batch_size": 8}


@pytest.fixture(scope="module")
def surface(tmp_path_factory) -> Path:
    return make_synthetic_category(tmp_path_factory.mktemp("rd") / "surface", n_train=24, n_good=3, n_per_defect=2,
                                   size=96)


def test_pasted_patch_scores_higher_after_a_short_overfit(surface: Path, tmp_path: Path) -> None:
    ds = open_dataset(surface)
    model = ARD(**TINY, epochs=15, lr=0.005).fit(ds.train)
    defective = pasted_defects(ds.train[:6], tmp_path, seed=3)
    maps = model.anomaly_maps(defective)
    inside = [float(m[read_mask(s)].mean()) for s, m in zip(defective, maps)]
    outside = [float(m[~read_mask(s)].mean()) for s, m in zip(defective, maps)]
    assert np.mean(np.array(inside) > np.array(outside)) >= 5 / 6, (inside, outside)
    assert model.history_[-1]["loss"] < model.history_[0]["loss"]


def test_same_seed_gives_identical_maps_and_scores(surface: Path) -> None:
    ds = open_dataset(surface)
    a = ReverseDistillation(**TINY, epochs=2, seed=5).fit(ds.train)
    b = ReverseDistillation(**TINY, epochs=2, seed=5).fit(ds.train)
    assert np.array_equal(a.score(ds.test), b.score(ds.test))
    assert all(np.array_equal(x, y) for x, y in zip(a.anomaly_maps(ds.test[:3]), b.anomaly_maps(ds.test[:3])))
    c = ReverseDistillation(**TINY, epochs=2, seed=6).fit(ds.train)
    assert not np.array_equal(a.score(ds.test), c.score(ds.test))


def test_save_load_round_trip_keeps_scores_and_stamps(surface: Path, tmp_path: Path) -> None:
    ds = open_dataset(surface)
    model = ARD(**TINY, epochs=1, attention="eca", attn_at="both").fit(ds.train)
    loaded = load_model(model.save(tmp_path / "run"))
    assert type(loaded) is ARD and loaded.config.betas == (0.5, 0.999)
    assert np.allclose(model.score(ds.test), loaded.score(ds.test), atol=1e-6)
    assert loaded.protocol()["attn_at"] == "both" and loaded.protocol()["attention"] == "eca"
    assert loaded.protocol()["selection"] == "last epoch (1)"


def test_select_on_test_is_stamped_and_monitor_never_selects(surface: Path, tmp_path: Path) -> None:
    ds = open_dataset(surface)
    parity = ReverseDistillation(**TINY, epochs=10).fit(ds.train, select_on_test=ds.test)
    assert parity.selection_.startswith("test (paper parity, oracle_test_every10): epoch 9 of 10")
    assert "image_auroc" in parity.history_[9]["test"]
    monitor = ds.train[:4] + pasted_defects(ds.train[:4], tmp_path, seed=0)
    watched = ReverseDistillation(**TINY, epochs=10).fit(ds.train, monitor=monitor)
    assert watched.selection_ == "last epoch (10)"
    assert set(watched.history_[9]["monitor"]) == {"image_auroc", "pixel_auroc"}
    assert "monitor" not in watched.history_[4]


def test_presets_decide_size_and_epochs_without_rewriting_the_config() -> None:
    model = ARD(preset="paper_novelty")
    assert model.config.image_size is None and model.working_size == 32 and model.hparams.epochs == 200
    assert ARD(image_size=64).working_size == 64 and ARD().hparams.epochs == 50 and ARD().working_size == 128
    assert ARD().config.lr is None and ARD().hparams.lr == 0.005 and ARD(preset="paper").hparams.lr == 0.001
    assert ReverseDistillation(preset="paper").hparams.lr == 0.005 and ARD(lr=0.01).hparams.lr == 0.01


@pytest.mark.parametrize("bad", [{"backbone": "dinov2_vits14"}, {"loss": "l2"}, {"attn_at": "decoder"},
                                 {"attention": "sspcab"}, {"preset": "fast"}, {"selection": "best"}])
def test_bad_options_are_one_line_config_errors(bad: dict) -> None:
    with pytest.raises(ConfigError):
        ARD(**bad)


def test_paste_one_changes_only_the_masked_box() -> None:
    rng = np.random.default_rng(0)
    target, source = np.full((40, 50, 3), 0.2, np.float32), np.full((40, 50, 3), 0.9, np.float32)
    out, mask = paste_one(target, source, rng)
    assert mask.any() and np.array_equal(out[~mask], target[~mask]) and not np.allclose(out[mask], 0.2)


def test_speed_reports_end_to_end_against_the_bare_teacher(surface: Path) -> None:
    from generalad.speed import measure_speed

    ds = open_dataset(surface)
    model = ARD(**TINY, epochs=1).fit(ds.train)
    out = measure_speed(model, [s.path for s in ds.test], batch_size=4)
    assert out["model"] == "ard" and out["end_to_end_images_per_s"] > 0 and out["backbone_images_per_s"] > 0
    assert 0 < out["ratio"] < 2 and out["image_size"] == 64


def test_selection_on_generated_anomalies_uses_held_out_normals_only(surface: Path, tmp_path: Path) -> None:
    """selection="generated": held-out training normals + anomalies an anomalyhybrid run generates from them."""
    from generalad.methods.anomalyhybrid import AnomalyHybrid

    ds = open_dataset(surface)
    gen_run = AnomalyHybrid(preset="smoke", device="cpu").fit(ds.train).save(tmp_path / "gen")
    model = ARD(**TINY, epochs=10, selection="generated", validation_generator=str(gen_run)).fit(ds.train)
    assert model.selection_.startswith("generated validation (") and "no test data" in model.selection_
    checks = [h for h in model.history_ if "generated" in h]
    assert [h["epoch"] for h in checks] == [9] and set(checks[0]["generated"]) == {"image_auroc", "pixel_auroc"}
    assert not any(p in " ".join(model.train_files_) for p in ("/test/",))
    with pytest.raises(ConfigError, match="validation_generator"):
        ARD(selection="generated")
    with pytest.raises(ConfigError, match="choose one"):
        ARD(**TINY, epochs=1, selection="generated", validation_generator=str(gen_run)).fit(ds.train, select_on_test=ds.test)
