"""The estimator contract, for every registered method (``list_methods()``), on small synthetic data.

Fit → score/map shapes → save → load → identical scores; unfitted → NotFittedError; unknown option →
ConfigError; get_params/set_params/repr; the constructor never rewrites its configuration; device="cpu".
A toy method registered at run time goes through the CLI (fit, test, predict) with no change to cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from generalad import cli
from generalad.data import open_dataset
from generalad.demo import make_synthetic_category
from generalad.errors import ConfigError, GeneralADError, NotFittedError
from generalad.methods import MethodInfo, get_method, list_methods, load_model, register_method, unregister_method

#: options that keep each method seconds-cheap here (EfficientNet-Lite0 ImageNet weights, 64 px)
TINY = {
    "generalad": {"epochs": 2, "hidden": 32, "train_batch_size": 8},
    "inreach": {"feature_dim": 64},
    "rd": {"epochs": 1, "train_batch_size": 8},
    "ard": {"epochs": 1, "train_batch_size": 8},
    "anomalyhybrid": {"backbone": "pixels", "preset": "smoke"},  # its detector reads pixels
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_category(tmp_path_factory.mktemp("contract") / "surface", n_train=14, n_good=3,
                                   n_per_defect=1, size=96)


def _model(name: str, **extra):
    options = {"backbone": "efficientnet_lite0", "image_size": 64, "device": "cpu", **TINY.get(name, {}), **extra}
    return get_method(name)(**options)


@pytest.fixture(scope="module")
def fitted(data, tmp_path_factory) -> dict:
    ds = open_dataset(data)
    out = {}
    for name in list_methods():
        model = _model(name).fit(ds.train)
        out[name] = (model, model.save(tmp_path_factory.mktemp(f"run_{name}")))
    return out


@pytest.mark.parametrize("name", list_methods())
def test_fit_score_maps_save_load(name: str, data: Path, fitted) -> None:
    ds = open_dataset(data)
    model, run = fitted[name]
    scores = model.score(ds.test)
    assert scores.shape == (len(ds.test),) and np.isfinite(scores).all()
    maps = model.anomaly_maps(ds.test[:2])
    assert [m.shape for m in maps] == [(96, 96)] * 2 and all(m.dtype == np.float32 for m in maps)
    assert model.decide(scores).dtype == bool
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((run / "config.json").read_text())
    assert meta["model"] == name and meta["device"] == "cpu" and meta["precision"] in ("bf16", "fp32")
    loaded = load_model(run, device="cpu")
    np.testing.assert_array_equal(loaded.score(ds.test), scores)
    assert loaded.threshold_ == model.threshold_


@pytest.mark.parametrize("name", list_methods())
def test_unfitted_and_unknown_option_are_one_line_errors(name: str, data: Path) -> None:
    model = _model(name)
    with pytest.raises(NotFittedError, match="not fitted") as err:
        model.score(open_dataset(data).test[:1])
    assert "\n" not in str(err.value) and isinstance(err.value, GeneralADError)
    with pytest.raises(NotFittedError):
        model.threshold_
    with pytest.raises(ConfigError, match="unknown .*bogus_option") as err:
        _model(name, bogus_option=1)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", list_methods())
def test_params_repr_and_no_config_rewrite(name: str) -> None:
    given = {"backbone": "efficientnet_lite0", "image_size": 64, **TINY.get(name, {})}
    model = get_method(name)(**given)
    params = model.get_params()
    assert {k: params[k] for k in given} == given
    twin = type(model)(**params)
    assert twin.get_params() == params
    assert model.config == type(model).Config(**given)  # nothing was filled in behind the user's back
    assert params["precision"] == "auto" and params["device"] == "auto"
    assert repr(model).startswith(type(model).__name__ + "(") and "image_size=64" in repr(model)
    assert model.set_params(seed=3) is model and model.get_params()["seed"] == 3
    with pytest.raises(ConfigError):
        model.set_params(nope=1)
    model.backbone()  # resolving layers/device/precision does not touch the config either
    assert model.config == type(model).Config(**{**given, "seed": 3})
    assert model.device == torch.device("cpu") and model.precision in ("bf16", "fp32")


def test_toy_method_through_the_cli(data: Path, tmp_path: Path, capsys) -> None:
    from tests.methods.toy import MeanDistance

    register_method(MethodInfo("toy", MeanDistance, "toy: distance to the mean feature per position"))
    try:
        run, res, pred = tmp_path / "run", tmp_path / "test", tmp_path / "pred"
        assert cli.main(["fit", "--model", "toy", "--data", str(data), "--backbone", "efficientnet_lite0",
                         "--image-size", "64", "--device", "cpu", "--set", "power=1", "--out", str(run),
                         "--quiet"]) == 0
        assert json.loads((run / "config.json").read_text())["config"]["power"] == 1
        assert cli.main(["test", "--run", str(run), "--data", str(data), "--out", str(res), "--quiet"]) == 0
        metrics = json.loads((res / "metrics.json").read_text())
        assert metrics["model"] == "toy" and 0 <= metrics["image_auroc"] <= 1 and "pixel_auroc" in metrics
        assert cli.main(["predict", "--run", str(run), str(data / "test" / "good"), "--out", str(pred),
                         "--quiet"]) == 0
        lines = (pred / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == 3
        # a method-specific flag of another method is refused for the toy, in one line
        assert cli.main(["fit", "--model", "toy", "--data", str(data), "--epochs", "3", "--out",
                         str(tmp_path / "x"), "--quiet"]) == 2
        assert "--epochs does not apply to model 'toy'" in capsys.readouterr().err
        if not torch.cuda.is_available():  # an absent device is refused in one line, before any work
            assert cli.main(["fit", "--model", "toy", "--data", str(data), "--device", "cuda", "--out",
                             str(tmp_path / "y"), "--quiet"]) == 2
            err = capsys.readouterr().err
            assert err.startswith("generalad: error: --device 'cuda'") and err.count("\n") == 1
    finally:
        unregister_method("toy")
    assert "toy" not in list_methods()
