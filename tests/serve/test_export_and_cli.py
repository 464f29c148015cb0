"""``generalad serve`` with an exported model, and the command itself in a subprocess on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest
from fastapi.testclient import TestClient

from generalad.cli import main
from generalad.deploy import Inferencer
from generalad.serve import build_app


@pytest.fixture(scope="package")
def small_export(small_run, tmp_path_factory):
    from generalad.export import export_model

    model, run = small_run
    return export_model(model, tmp_path_factory.mktemp("export") / "onnx", fmt="onnx", source_run=str(run))


def test_exported_model_serves_the_same_scores_and_says_what_it_is(small_export, client, bottle):
    app, served, _ = build_app(Inferencer(small_export), small_export)
    exported = TestClient(app)
    card = exported.get("/api/model").json()
    torch_card = client.get("/api/model").json()
    assert card["kind"] == "export (onnx)" and card["runtime"].startswith("onnxruntime")
    for key in ("method", "backbone", "weights_sha256", "threshold", "pixel_threshold", "calibration_source", "selection"):
        assert card[key] == torch_card[key], key
    for sample in (bottle.test[0], bottle.test[-1]):
        with open(sample.path, "rb") as handle:
            data = handle.read()
        a = exported.post("/api/predict", files={"file": ("a.png", data, "image/png")}).json()
        b = client.post("/api/predict", files={"file": ("a.png", data, "image/png")}).json()
        assert a["score"] == pytest.approx(b["score"], rel=1e-4) and a["is_anomalous"] == b["is_anomalous"]
    bad = exported.post("/api/predict", files={"file": ("x.jpg", b"\xff\xd8\xff garbage", "image/jpeg")})
    assert bad.status_code == 400 and "x.jpg" in bad.json()["detail"]
    served.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _multipart(path: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    with open(path, "rb") as handle:
        data = handle.read()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"part.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_serve_command_binds_loopback_and_answers(small_export, bottle):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "generalad.cli", "serve", "--run", str(small_export),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        card = None
        for _ in range(240):  # start-up: imports + model load
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/model", timeout=5) as r:
                    card = json.loads(r.read())
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.25)
        assert card is not None and card["kind"] == "export (onnx)"
        body, ctype = _multipart(bottle.test[0].path)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/predict", data=body, headers={"Content-Type": ctype})
        with urllib.request.urlopen(req, timeout=60) as r:
            rec = json.loads(r.read())
        assert rec["is_anomalous"] == (rec["score"] > card["threshold"])
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}" in out  # uvicorn's start line: bound to loopback, the default


@pytest.mark.parametrize("argv, message", [
    (["serve", "--run", "/nonexistent/run"], "/nonexistent/run"),
    (["serve", "--run", ".", "--max-upload-mb", "0"], "--max-upload-mb must be > 0"),
])  # fmt: skip
def test_serve_command_bad_arguments_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("generalad: error: ") and message in err and "\n" not in err
