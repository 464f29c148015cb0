"""200 sequential predictions through the API do not grow the server's memory (issue 18).

In-process (TestClient) with the small model on a real bottle image shrunk to 256 x 256, so the loop stays
a few seconds; benchmarks/serve_rss.py measures the same on the real ``generalad serve`` process at full size
(docs/INSPECT.md has its numbers)."""

from __future__ import annotations

import gc
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image


def _rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_200_predictions_keep_rss_within_10_percent(client, bottle):
    buf = io.BytesIO()
    Image.open(bottle.test[-1].path).convert("RGB").resize((256, 256)).save(buf, format="PNG")
    data = buf.getvalue()

    def once() -> float:
        r = client.post("/api/predict", files={"file": ("part.png", data, "image/png")})
        assert r.status_code == 200, r.text
        return r.json()["score"]

    warm = [once() for _ in range(20)]
    gc.collect()
    before = _rss_mb()
    scores = [once() for _ in range(200)]
    gc.collect()
    after = _rss_mb()
    assert np.ptp(warm + scores) == 0.0  # the same image scores the same every time
    assert after <= 1.10 * before, f"RSS grew from {before:.0f} MB to {after:.0f} MB over 200 predictions"
