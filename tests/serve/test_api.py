"""The JSON API of ``generalad serve`` (FastAPI's TestClient): predict, model card, bad / oversize uploads,
the folder table and path traversal, on real bottle images and a real (small) PatchCore model."""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pytest
from PIL import Image

from generalad.data import Sample
from generalad.predict import predict_samples
from generalad.report import COLUMNS


def _post(client, path, name=None):
    with open(path, "rb") as handle:
        return client.post("/api/predict", files={"file": (name or os.path.basename(path), handle, "image/png")})


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_predict_answers_a_predictions_row_equal_to_generalad_predict(client, small_run, bottle):
    model, _ = small_run
    sample = next(s for s in bottle.test if s.label == 1)
    r = _post(client, sample.path)
    assert r.status_code == 200, r.text
    rec = r.json()
    assert set(COLUMNS) <= set(rec)  # every predictions.jsonl field, plus the overlay
    expected = predict_samples(model, [Sample(path=sample.path, label=-1, split="predict")])[0]
    assert rec["score"] == pytest.approx(expected.pred_score, rel=1e-6)
    assert rec["threshold"] == model.threshold_
    assert rec["is_anomalous"] == (rec["score"] > rec["threshold"]) == expected.is_anomalous
    assert rec["regions"] == expected.regions
    assert rec["original_size"] == [900, 900]
    overlay = Image.open(io.BytesIO(base64.b64decode(rec["overlay_png"])))
    assert overlay.format == "PNG" and overlay.width == 900 and overlay.height > 900  # image + caption strip


def test_large_images_get_a_display_size_overlay_but_the_full_size_score(client, small_run, bottle):
    model, _ = small_run
    big = np.asarray(Image.open(bottle.test[0].path).convert("RGB").resize((1500, 1200)))
    r = client.post("/api/predict", files={"file": ("big.png", _png_bytes(big), "image/png")})
    assert r.status_code == 200, r.text
    overlay = Image.open(io.BytesIO(base64.b64decode(r.json()["overlay_png"])))
    assert overlay.width == 1024 and r.json()["original_size"] == [1200, 1500]
    expected = model.score([Sample(path="big", label=-1, array=big)])[0]
    assert r.json()["score"] == pytest.approx(float(expected), rel=1e-6)


def test_model_card_states_method_backbone_sha256_threshold_and_calibration(client, small_run):
    model, run = small_run
    card = client.get("/api/model").json()
    desc = model.describe()
    assert card["kind"] == "torch" and card["run"] == str(run)
    assert card["method"] == "patchcore" and card["backbone"] == desc["backbone"]
    assert card["weights_sha256"] == desc["weights_sha256"] and len(card["weights_sha256"]) == 64
    assert card["threshold"] == model.threshold_ and card["pixel_threshold"] == model.pixel_threshold_
    assert card["calibration_source"] == model.calibration_.source and "holdout" in card["calibration_source"]
    assert card["selection"] == model.protocol()["selection"]


@pytest.mark.parametrize("payload, name, expected", [
    (b"this is not an image", "notes.png", "cannot decode image upload 'notes.png'"),
    (b"", "empty.png", "upload 'empty.png' is empty"),
])  # fmt: skip
def test_bad_upload_is_400_with_one_line_and_the_server_keeps_serving(client, bottle, payload, name, expected):
    r = client.post("/api/predict", files={"file": (name, payload, "image/png")})
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert detail.startswith(expected) and "\n" not in detail and "generalad-serve-" not in detail  # no temp path
    assert _post(client, bottle.test[0].path).status_code == 200


def test_truncated_png_is_400(client, bottle):
    data = open(bottle.test[0].path, "rb").read()
    r = client.post("/api/predict", files={"file": ("cut.png", data[: len(data) // 2], "image/png")})
    assert r.status_code == 400 and "cut.png" in r.json()["detail"]


def test_missing_file_field_is_400_naming_the_field(client):
    r = client.post("/api/predict", data={"image": "x"})
    assert r.status_code == 400 and r.json()["detail"].startswith("file: ")


def test_oversize_upload_is_413_before_it_is_decoded(client, bottle):
    blob = os.urandom(2 * 2**20 + 10)  # the fixture's limit is 2 MiB
    r = client.post("/api/predict", files={"file": ("huge.png", blob, "image/png")})
    assert r.status_code == 413 and "upload too large" in r.json()["detail"] and "2 MiB" in r.json()["detail"]
    assert _post(client, bottle.test[0].path).status_code == 200


def test_oversize_chunked_upload_without_content_length_is_413(client):
    def chunks():
        for _ in range(40):
            yield b"\0" * 65536  # 2.5 MiB in all, no Content-Length header

    r = client.post("/api/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "upload too large" in r.json()["detail"]


def test_image_over_the_pixel_limit_is_413(small_run, tmp_path):
    from fastapi.testclient import TestClient

    from generalad.serve import build_app

    model, run = small_run
    app, served, _ = build_app(model, run, max_pixels=100 * 100)
    data = _png_bytes(np.zeros((101, 100, 3), np.uint8))
    r = TestClient(app).post("/api/predict", files={"file": ("wide.png", data, "image/png")})
    served.close()
    assert r.status_code == 413 and "100x101 = 10100 pixels" in r.json()["detail"]


def test_folder_table_lists_every_image_scored_like_the_api(client, image_folder):
    status = client.get("/api/images").json()
    paths = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    assert [row["path"] for row in status["images"]] == paths and status["n_scored"] == len(paths)
    row = status["images"][-1]
    single = client.get("/api/images/predict", params={"path": row["path"]}).json()
    assert single["score"] == pytest.approx(row["score"], rel=1e-6)  # batch of 8 in the table, one here
    assert row["is_anomalous"] == (row["score"] > status["threshold"])
    thumb = Image.open(io.BytesIO(client.get("/api/images/thumb", params={"path": row["path"]}).content))
    assert thumb.format == "JPEG" and max(thumb.size) == 112
    original = client.get("/api/images/file", params={"path": row["path"]})
    assert original.status_code == 200 and original.content == (image_folder / row["path"]).read_bytes()


@pytest.mark.parametrize("path", [
    "../model/config.json", "good/../../model/config.json", "/etc/passwd", "%2e%2e/%2e%2e/etc/passwd",
    "good", "", "outside.png",
])  # fmt: skip
def test_files_outside_the_images_folder_are_404(client, path):
    for route in ("/api/images/file", "/api/images/thumb", "/api/images/predict"):
        r = client.get(route, params={"path": path})
        assert r.status_code == 404, (route, path, r.status_code)
        assert "not an image of the --images folder" in r.json()["detail"]


def test_symlink_leaving_the_root_is_not_served(small_run, image_folder, tmp_path):
    from fastapi.testclient import TestClient

    from generalad.serve import build_app

    model, run = small_run
    root = tmp_path / "root"
    root.mkdir()
    outside = next(image_folder.rglob("*.png"))
    (root / "inside.png").write_bytes(outside.read_bytes())
    (root / "escape.png").symlink_to(outside)  # a real image, but outside the root
    app, served, folder = build_app(model, run, images=root, score_folder=False)
    client = TestClient(app)
    assert list(folder.files) == ["inside.png"]
    assert client.get("/api/images/file", params={"path": "escape.png"}).status_code == 404
    assert client.get("/api/images/file", params={"path": "inside.png"}).status_code == 200
    served.close()


def test_static_files_are_the_package_own_and_the_page_loads_nothing_else(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../model.py").status_code == 404


def test_without_images_folder_the_folder_routes_are_404(small_run):
    from fastapi.testclient import TestClient

    from generalad.serve import build_app

    model, run = small_run
    app, served, folder = build_app(model, run)
    r = TestClient(app).get("/api/images")
    served.close()
    assert folder is None and r.status_code == 404 and "--images" in r.json()["detail"]
