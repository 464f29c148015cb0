"""AnomalyHybrid as an estimator and through the CLI, on small synthetic data (smoke preset, 64 px).

Same seed → identical generated set and scores; ``generalad generate`` writes an MVTec-style folder whose
masks match its images; a fitted run lends its generator to another fit; bad options are one-line errors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from generalad import cli
from generalad.data import open_dataset
from generalad.demo import make_synthetic_category
from generalad.errors import ConfigError
from generalad.methods import load_model
from generalad.methods.anomalyhybrid import AnomalyHybrid
from generalad.methods.anomalyhybrid.detector import score_window

SMOKE = {"preset": "smoke", "device": "cpu"}


@pytest.fixture(scope="module")
def surface(tmp_path_factory) -> Path:
    return make_synthetic_category(tmp_path_factory.mktemp("ah") / "surface", n_train=12, n_good=3, n_per_defect=1,
                                   size=80)


@pytest.fixture(scope="module")
def fitted(surface: Path, tmp_path_factory):
    model = AnomalyHybrid(**SMOKE).fit(open_dataset(surface).train)
    return model, model.save(tmp_path_factory.mktemp("ah_run") / "run")


def test_same_seed_same_generated_set_and_scores(surface: Path, fitted) -> None:
    ds = open_dataset(surface)
    model, _ = fitted
    twin = AnomalyHybrid(**SMOKE).fit(ds.train)
    assert torch.equal(model.generated_.images, twin.generated_.images)
    assert torch.equal(model.generated_.masks, twin.generated_.masks)
    assert np.array_equal(model.score(ds.test), twin.score(ds.test))
    other = AnomalyHybrid(**SMOKE, seed=1).fit(ds.train)
    assert not torch.equal(model.generated_.images, other.generated_.images)


def test_record_names_every_stand_in_and_the_protocol(fitted) -> None:
    model, run = fitted
    meta = json.loads((run / "config.json").read_text())
    assert meta["backbone"] == "pixels" and "efficientnet_lite0" in meta["perceptual_network"]
    assert "PiDiNet stand-in" in meta["structure"]["edges"] and "not depth" in meta["structure"]["depth"]
    proto = model.protocol()
    assert "generated local anomalies" in proto["anomalies"] and "full test set" in proto["evaluation"]
    assert meta["fit"]["generated"]["requested"] == model.hparams.n_generated


def test_scores_are_the_max_of_the_pooled_map_and_survive_save_load(surface: Path, fitted) -> None:
    ds = open_dataset(surface)
    model, run = fitted
    scores = model.score(ds.test)
    maps = [m for _, _, m in model.infer_batches(ds.test)]
    w = score_window(64)
    assert w == 5  # 21 px at 256, scaled and odd
    pooled = torch.nn.functional.avg_pool2d(torch.cat(maps)[:, None], w, 1, w // 2, count_include_pad=False)
    assert np.allclose(scores, pooled.flatten(1).amax(1).numpy(), atol=1e-6)
    loaded = load_model(run)
    assert np.array_equal(loaded.score(ds.test), scores)
    assert loaded.generator_ is not None


def test_generate_cli_writes_an_mvtec_folder_and_is_reproducible(surface: Path, fitted, tmp_path: Path, capsys) -> None:
    _, run = fitted
    outs = []
    for name in ("a", "b"):
        argv = ["generate", "--run", str(run), "--data", str(surface), "--n", "6", "--kinds", "local,global",
                "--seed", "3", "--out", str(tmp_path / name), "--quiet"]
        assert cli.main(argv) == 0
        outs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    a, b = tmp_path / "a", tmp_path / "b"
    images = sorted(p.relative_to(a / "test") for p in (a / "test").rglob("*.png"))
    assert len(images) == 6 and (a / "contact_sheet.png").is_file() and outs[0]["diversity_lpips_like"] > 0
    for rel in images:
        mask = a / "ground_truth" / rel.parent.name / f"{rel.stem}_mask.png"
        assert Image.open(a / "test" / rel).size == Image.open(mask).size
        assert np.asarray(Image.open(mask)).any()
        assert (a / "test" / rel).read_bytes() == (b / "test" / rel).read_bytes()
    assert json.loads((a / "generation.json").read_text())["diversity_network"].startswith("efficientnet_lite0")


def test_a_fitted_run_lends_its_generator(surface: Path, fitted) -> None:
    _, run = fitted
    ds = open_dataset(surface)
    model = AnomalyHybrid(**SMOKE, generator=str(run)).fit(ds.train)
    assert model.generator_info_["source"] == f"reused from {run}"
    with pytest.raises(ConfigError, match="image_size"):
        AnomalyHybrid(**SMOKE, generator=str(run), image_size=96).fit(ds.train)


def test_bad_options_are_one_line_errors(surface: Path, fitted, capsys) -> None:
    for bad in ({"backbone": "efficientnet_lite0"}, {"operators": ("melt",)}, {"image_size": 100},
                {"depth": "none", "operators": ("bump",)}, {"mask_source": "both"}, {"preset": "gpu"}):
        with pytest.raises(ConfigError):
            AnomalyHybrid(**bad)
    _, run = fitted
    code = cli.main(["generate", "--run", str(run), "--data", str(surface), "--n", "2", "--kinds", "weird",
                     "--out", "/tmp/unused"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "weird" in err
