"""``generalad export`` → ``generalad predict --run EXPORT`` → ``generalad speed --run TORCH EXPORT``, end to end."""

from __future__ import annotations

import json

import pytest

from generalad.cli import main


def _json_out(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_export_predict_speed(small_run, bottle, tmp_path, capsys, fmt):
    model, run = small_run
    export = tmp_path / fmt
    assert main(["export", "--run", str(run), "--format", fmt, "--out", str(export)]) == 0
    info = _json_out(capsys)
    assert info["graph"] == ("model.onnx" if fmt == "onnx" else "model.xml") and info["check_max_rel_score_diff"] < 1e-4
    images = [s.path for s in bottle.test[:3]]
    for name, source in (("torch", run), ("deployed", export)):
        assert main(["predict", "--run", str(source), *images, "--out", str(tmp_path / name), "--quiet"]) == 0
        capsys.readouterr()
    rows = {name: [json.loads(line) for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
            for name in ("torch", "deployed")}
    for a, b in zip(rows["deployed"], rows["torch"]):
        assert a["path"] == b["path"] and a["is_anomalous"] == b["is_anomalous"] and a["threshold"] == b["threshold"]
        assert abs(a["score"] - b["score"]) <= 1e-4 * abs(b["score"])
    assert len(list((tmp_path / "deployed" / "images").glob("*_overlay.png"))) == 3
    folder = str(tmp_path / "imgs")
    (tmp_path / "imgs").mkdir()
    for p in images:
        (tmp_path / "imgs" / p.rsplit("/", 1)[-1]).write_bytes(open(p, "rb").read())
    assert main(["speed", "--run", str(run), str(export), "--images", folder, "--batch-size", "2"]) == 0
    speed = _json_out(capsys)
    assert [r["runtime"].split()[0] for r in speed["runs"]] == ["torch", "onnxruntime" if fmt == "onnx" else "openvino"]
    assert speed["speedup_vs_first"][0] == 1.0 and all(r["end_to_end_images_per_s"] > 0 for r in speed["runs"])


def test_weights_flag_does_not_apply_to_exports(small_export, bottle, tmp_path, capsys):
    code = main(["predict", "--run", str(small_export), bottle.test[0].path, "--weights", "x.pth", "--out", str(tmp_path)])
    assert code == 2 and "--weights does not apply" in capsys.readouterr().err
