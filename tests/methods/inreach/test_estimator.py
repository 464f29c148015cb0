"""InReaCh estimator on the real bottle subset (EfficientNet-Lite0 hierarchy), and leak-free contamination."""

from __future__ import annotations

import json

import numpy as np
import pytest

from generalad.cli import main
from generalad.data import open_dataset
from generalad.evaluate import evaluate
from generalad.methods import load_model
from generalad.methods.inreach import InReaCh


@pytest.fixture(scope="module")
def bottle(bottle_dir):
    return open_dataset(bottle_dir)


@pytest.fixture(scope="module")
def fitted(bottle, tmp_path_factory):
    return InReaCh(backbone="efficientnet_lite0", cache_dir=str(tmp_path_factory.mktemp("c"))).fit(bottle.train)


def test_bottle_auroc_and_filter_stats(fitted, bottle):
    metrics = evaluate(fitted, bottle.test)
    assert metrics["image_auroc"] >= 0.97
    stats = fitted.fit_info_
    assert 0 < stats["keep_total"] < 1 and stats["bank_size"] > 0
    assert stats["transpose_score"] < 600 and not stats["positional"]  # bottle: no fixed layout ([S]: 123)
    assert metrics["layout"]["positional"] is False


def test_save_load_round_trip(fitted, bottle, tmp_path):
    fitted.save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert np.array_equal(again.score(bottle.test[:5]), fitted.score(bottle.test[:5]))


def test_contaminated_images_never_scored(tmp_path, bottle_dir):
    run, res = tmp_path / "run", tmp_path / "res"
    args = ["--data", str(bottle_dir), "--backbone", "efficientnet_lite0", "--image-size", "112", "--quiet"]
    assert main(["fit", "--model", "patchcore", *args[:4], "--image-size", "112", "--contaminate", "6", "--seed", "1",
                 "--out", str(run), "--quiet"]) == 0
    meta = json.loads((run / "config.json").read_text())
    moved = meta["data"]["contaminated_with"]
    assert len(moved) == 6 and all("/test/good/" not in p for p in moved)
    assert set(moved) <= set(meta["train_files"]) | set(meta["calibration_files"])
    assert main(["test", "--run", str(run), "--data", str(bottle_dir), "--out", str(res), "--quiet"]) == 0
    metrics = json.loads((res / "metrics.json").read_text())
    scored = {json.loads(x)["path"] for x in (res / "predictions.jsonl").read_text().splitlines()}
    assert not scored & set(moved)
    assert metrics["n_test"] == 83 - 6 and sorted(metrics["excluded_from_test_as_seen_in_fit"]) == sorted(moved)
