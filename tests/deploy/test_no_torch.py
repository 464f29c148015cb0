"""The deployed path imports no torch: proven in a fresh interpreter where importing torch fails."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

BLOCK_TORCH = '''
import importlib.abc, sys
class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
'''


def _run(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_inferencer_runs_without_torch(small_run, small_export, bottle, tmp_path):
    model, _ = small_run
    image = bottle.test[0].path
    out = _run(f'''
import json
from generalad.deploy import Inferencer
from generalad.predict import predict_folder
inf = Inferencer({str(small_export)!r})
r = inf.predict({image!r})
rows = predict_folder(inf, [{image!r}], {str(tmp_path / "pred")!r})
print(json.dumps({{"score": r["score"], "threshold": r["threshold"], "is_anomalous": r["is_anomalous"],
                  "map": list(r["map"].shape), "row_score": rows[0].pred_score,
                  "torch": "torch" in sys.modules, "regions": len(r["regions"])}}))
''')
    assert out["torch"] is False
    expected = float(model.score([bottle.test[0]])[0])
    assert abs(out["score"] - expected) <= 1e-4 * abs(expected)
    assert out["row_score"] == out["score"] and out["threshold"] == model.threshold_
    assert out["is_anomalous"] == bool(expected > model.threshold_)
    assert out["map"] == [900, 900]  # back at the image's own size
    assert (tmp_path / "pred" / "predictions.jsonl").is_file()
    assert len(list((tmp_path / "pred" / "images").glob("*_overlay.png"))) == 1


def test_blocker_really_blocks_torch():
    """The guard itself: with it installed, ``import torch`` fails (so the test above proves something)."""
    done = subprocess.run([sys.executable, "-c", BLOCK_TORCH + "import torch"], capture_output=True, text=True)
    assert done.returncode != 0 and "torch is blocked" in done.stderr


def test_predict_accepts_arrays_of_any_layout(small_export, bottle):
    from PIL import Image

    from generalad.deploy import Inferencer

    inf = Inferencer(small_export)
    rgb = np.asarray(Image.open(bottle.test[0].path).convert("RGB"))
    grey = rgb[:, :, 0]
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    for arr in (rgb, grey, rgba, (rgb.astype(np.uint16) * 257)):
        r = inf.predict(arr)
        assert r["map"].shape == rgb.shape[:2] and np.isfinite(r["score"])
