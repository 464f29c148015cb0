"""The web-app tests' folder and app, around the shared ``small_run`` (tests/conftest.py: PatchCore on Lite0 at 64 px)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from generalad.serve import build_app


@pytest.fixture(scope="package")
def image_folder(bottle, tmp_path_factory):
    """6 real bottle test images (good and broken) under nested folders, as a user's --images root."""
    root = tmp_path_factory.mktemp("images")
    picks = [s for s in bottle.test if s.defect_type == "good"][:3] + [s for s in bottle.test if s.label == 1][:3]
    for s in picks:
        target = root / s.defect_type / ("b_" + s.path.rsplit("/", 1)[-1])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(open(s.path, "rb").read())
    return root


@pytest.fixture(scope="package")
def app_parts(small_run, image_folder):
    """(app, served model, folder index) with the folder scored before the tests look at it."""
    model, run = small_run
    app, served, folder = build_app(model, run, images=image_folder, max_upload_mb=2)
    assert folder is not None and folder.wait(120), "scoring the --images folder did not finish"
    yield app, served, folder
    served.close()


@pytest.fixture(scope="package")
def client(app_parts):
    return TestClient(app_parts[0])
