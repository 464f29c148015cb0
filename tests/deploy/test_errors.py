"""Bad export directories and bad images: one line that says what and where (docs/DEPLOY.md §5)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from generalad.deploy import Inferencer
from generalad.errors import ConfigError, InputError


@pytest.fixture
def copy(small_export, tmp_path):
    return shutil.copytree(small_export, tmp_path / "export")


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_not_an_export(tmp_path):
    with pytest.raises(InputError) as err:
        Inferencer(tmp_path)
    assert "no deploy.json" in _one_line(err)


def test_truncated_metadata(copy):
    (copy / "deploy.json").write_text((copy / "deploy.json").read_text()[:200])
    with pytest.raises(InputError) as err:
        Inferencer(copy)
    assert "cannot read" in _one_line(err) and "deploy.json" in str(err.value)


def test_metadata_without_keys(copy):
    meta = json.loads((copy / "deploy.json").read_text())
    del meta["input"], meta["threshold"]
    (copy / "deploy.json").write_text(json.dumps(meta))
    with pytest.raises(InputError) as err:
        Inferencer(copy)
    assert "lacks input, threshold" in _one_line(err)


def test_missing_graph(copy):
    (copy / "model.onnx").unlink()
    with pytest.raises(InputError) as err:
        Inferencer(copy)
    assert "no graph file model.onnx" in _one_line(err)


def test_truncated_graph_is_caught_by_its_hash(copy):
    data = (copy / "model.onnx").read_bytes()
    (copy / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        Inferencer(copy)
    assert "was modified" in _one_line(err)


def test_truncated_graph_with_matching_hash_fails_to_load(copy):
    from generalad.io import sha256_file

    data = (copy / "model.onnx").read_bytes()
    (copy / "model.onnx").write_bytes(data[: len(data) // 2])
    meta = json.loads((copy / "deploy.json").read_text())
    meta["graph_sha256"] = sha256_file(copy / "model.onnx")
    (copy / "deploy.json").write_text(json.dumps(meta))
    with pytest.raises(InputError) as err:
        Inferencer(copy)
    assert "cannot load exported graph" in _one_line(err)


def test_metadata_that_disagrees_with_the_graph(copy):
    meta = json.loads((copy / "deploy.json").read_text())
    meta["threshold"] = meta["threshold"] * 0.5  # someone "tuned" the JSON; the graph says otherwise
    (copy / "deploy.json").write_text(json.dumps(meta))
    with pytest.raises(InputError) as err:
        Inferencer(copy)
    assert "disagrees with deploy.json on threshold" in _one_line(err)


def test_metadata_with_another_input_size(copy):
    meta = json.loads((copy / "deploy.json").read_text())
    meta["input"]["size"] = [128, 128]
    (copy / "deploy.json").write_text(json.dumps(meta))
    with pytest.raises(InputError) as err:
        Inferencer(copy)
    assert "disagrees" in _one_line(err) and "input" in str(err.value)


def test_images_the_runtime_cannot_take(small_export, tmp_path):
    inf = Inferencer(small_export)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(InputError) as err:
        inf.predict(broken)
    assert "broken.png" in _one_line(err)
    with pytest.raises(InputError) as err:
        inf.predict(np.zeros((32, 32, 5), np.uint8))
    assert "array" in _one_line(err)
    with pytest.raises(InputError) as err:
        inf.run(np.zeros((1, 3, 32, 32), np.float32))  # a batch at the wrong size
    assert "(B, 3, 64, 64)" in _one_line(err)
    with pytest.raises(InputError):
        inf.predict(tmp_path / "missing.png")
    with pytest.raises(InputError):
        inf.predict(42)


def test_cli_prints_one_line_and_exits_2(copy, bottle):
    (copy / "model.onnx").write_bytes(b"not a graph")
    done = subprocess.run([sys.executable, "-m", "generalad.cli", "predict", "--run", str(copy), bottle.test[0].path,
                           "--out", str(copy / "pred")], capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("generalad: error:") and "model.onnx" in lines[0]


def test_export_refuses_what_a_graph_cannot_do(small_run, tmp_path):
    """An unknown format; a model on another device is refused before any tracing."""
    from generalad.export import export_model

    model, _ = small_run
    with pytest.raises(ConfigError) as err:
        export_model(model, tmp_path / "x", fmt="tensorrt")
    assert "--format" in _one_line(err)
    assert not (tmp_path / "x").exists()  # nothing half-written
