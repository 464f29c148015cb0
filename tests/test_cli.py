"""End-to-end CLI on generated data, and the one-line errors for every kind of bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from generalad.cli import main
from generalad.demo import make_synthetic_category


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_synthetic_category(tmp_path_factory.mktemp("data") / "surface", n_train=24, n_good=6, n_per_defect=3, size=128)


@pytest.fixture(scope="module")
def fitted_run(synth, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "pc"
    code = main(["fit", "--model", "patchcore", "--data", str(synth), "--backbone", "efficientnet_lite0",
                 "--image-size", "128", "--out", str(run), "--quiet"])
    assert code == 0
    return run


def test_fit_writes_safetensors_and_json_only(fitted_run: Path) -> None:
    assert sorted(p.name for p in fitted_run.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((fitted_run / "config.json").read_text())
    assert meta["model"] == "patchcore" and meta["backbone"] == "efficientnet_lite0"
    assert len(meta["weights_sha256"]) == 64
    assert meta["calibration"]["threshold"] is not None


def test_test_metrics_match_sklearn_on_written_predictions(fitted_run: Path, synth: Path, tmp_path: Path) -> None:
    res = tmp_path / "res"
    assert main(["test", "--run", str(fitted_run), "--data", str(synth), "--out", str(res), "--quiet"]) == 0
    metrics = json.loads((res / "metrics.json").read_text())
    lines = [json.loads(x) for x in (res / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == metrics["n_test"] == 15
    for key in ("path", "label", "score", "threshold", "is_anomalous"):
        assert key in lines[0]
    labels = [r["label"] for r in lines]
    assert sorted(set(labels)) == [0, 1]
    assert metrics["image_auroc"] == pytest.approx(roc_auc_score(labels, [r["score"] for r in lines]), abs=1e-12)
    for key in ("pixel_auroc", "pixel_aupro", "pixel_ap", "peak_rss_mb", "images_per_second", "weights_sha256"):
        assert metrics[key] is not None
    assert metrics["image_auroc"] > 0.8  # synthetic stains/scratches are easy for an ImageNet CNN


def test_predict_writes_records_and_overlays(fitted_run: Path, synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    images = sorted((synth / "test" / "stain").glob("*.png"))[:2]
    assert main(["predict", "--run", str(fitted_run), *map(str, images), "--out", str(out), "--quiet"]) == 0
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [Path(r["path"]).name for r in lines] == [p.name for p in images]
    overlays = sorted((out / "images").glob("*_overlay.png"))
    assert len(overlays) == 2
    assert Image.open(overlays[0]).size[0] == 128  # overlay at the original image width


def _error_line(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("generalad: error: ")
    assert "Traceback" not in err
    return err


def test_bad_inputs_give_one_line_errors(capsys, fitted_run: Path, synth: Path, tmp_path: Path) -> None:
    fit = ["fit", "--model", "patchcore", "--backbone", "efficientnet_lite0", "--image-size", "128", "--quiet"]
    assert "unknown model" in _error_line(capsys, ["fit", "--model", "nope", "--data", str(synth), "--out", str(tmp_path / "x")])
    assert "nope_net" in _error_line(capsys, [*fit[:3], "--data", str(synth), "--backbone", "nope_net", "--out", str(tmp_path / "x")])
    assert str(tmp_path / "missing") in _error_line(capsys, [*fit, "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    (tmp_path / "empty").mkdir()
    _error_line(capsys, [*fit, "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "x")])
    err = _error_line(capsys, [*fit, "--data", str(synth), "--weights", str(tmp_path / "w.pth"), "--out", str(tmp_path / "x")])
    assert "w.pth" in err
    # a truncated training image
    broken = tmp_path / "broken"
    shutil.copytree(synth, broken)
    victim = sorted((broken / "train" / "good").glob("*.png"))[3]
    victim.write_bytes(victim.read_bytes()[:200])
    assert victim.name in _error_line(capsys, [*fit, "--data", str(broken), "--out", str(tmp_path / "y")])
    assert not (tmp_path / "y").exists()  # nothing half-written
    # a mask whose size does not match its image
    bad_mask = tmp_path / "badmask"
    shutil.copytree(synth, bad_mask)
    mask = sorted((bad_mask / "ground_truth" / "stain").glob("*.png"))[0]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(mask)
    err = _error_line(capsys, ["test", "--run", str(fitted_run), "--data", str(bad_mask), "--out", str(tmp_path / "r"), "--quiet"])
    assert mask.name in err
    assert not (tmp_path / "r" / "metrics.json").exists()
    # a corrupt image given to predict
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    assert "junk.png" in _error_line(capsys, ["predict", "--run", str(fitted_run), str(junk), "--out", str(tmp_path / "p"), "--quiet"])
