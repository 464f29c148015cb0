"""evaluate() on a synthetic MVTec LOCO category: AUsPRO in metrics.json equals a slow, independent computation.

The reference reads the mask PNGs and defects_config.json itself (PIL + json), resizes maps with torch's
bilinear and masks with PIL's NEAREST, applies the saturation rules by hand and integrates the sPRO curve
from its definition (``slow_spro_curve``), so it shares no code with ``read_loco_defects`` / ``LocoSPRO``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from generalad.data import loco_defects_config, open_dataset
from generalad.evaluate import evaluate
from generalad.metrics.spro import DEFAULT_LIMITS
from generalad.methods.patchcore import PatchCore
from tests.data import synth
from tests.metrics.test_spro import slow_area, slow_spro_curve

KEYS = [f"pixel_auspro@{lim:g}" for lim in DEFAULT_LIMITS]  # pixel_auspro@0.01 … pixel_auspro@1
EVAL = (24, 24)  # the 36 x 48 images shrink by 1.5 x 2: area_scale = 576 / 1728


@pytest.fixture(scope="module")
def loco(tmp_path_factory):
    root = synth.make_loco_textured(tmp_path_factory.mktemp("data") / "box")
    return open_dataset(root)


@pytest.fixture(scope="module")
def fitted(loco, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    model = PatchCore(backbone="efficientnet_lite0", image_size=64, cache_dir=str(cache))
    return model.fit(loco.train, calibration=loco.validation)


@pytest.fixture(scope="module")
def maps(fitted, loco):
    """The model's maps at its working size, in test order (what evaluate() receives)."""
    return {s.path: m.numpy() for chunk, _, ms in fitted.infer_batches(loco.test) for s, m in zip(chunk, ms)}


def _reference(loco, maps, eval_size, scale_areas: bool = True) -> dict[str, dict[str, float]]:
    """Pooled, logical and structural AUsPRO from the files, by hand (``scale_areas=False``: the mistake of
    using absolute saturation areas of the original image at the evaluation size)."""
    config = {e["pixel_value"]: e for e in json.loads((Path(loco.root) / "defects_config.json").read_text())}
    images: dict[str, list] = {"pooled": [], "logical": [], "structural": []}
    for s in loco.test:
        with Image.open(s.path) as im:
            w, h = im.size
        eh, ew = eval_size or (h, w)
        amap = F.interpolate(torch.from_numpy(maps[s.path])[None, None], size=(eh, ew), mode="bilinear",
                             align_corners=False)[0, 0].numpy()
        defects, sats = [], []
        for path in s.mask_paths:
            with Image.open(path) as im:
                gt = np.asarray(im)
            if not gt.any():
                continue
            entry = config[int(gt.max())]
            small = np.asarray(Image.fromarray(gt).resize((ew, eh), Image.NEAREST)) > 0
            area = int(small.sum())
            t = entry["saturation_threshold"]
            sat = t * area if entry["relative_saturation"] else t * ((eh * ew) / (h * w) if scale_areas else 1.0)
            defects.append(small)
            sats.append(min(sat, area) if area else 1.0)  # a vanished defect: 0 found pixels / anything = 0
        groups = ["pooled"] + ([s.defect_type.split("_")[0]] if s.label else ["logical", "structural"])
        for g in groups:
            images[g].append((amap, defects, sats))
    curves = {g: slow_spro_curve(imgs) for g, imgs in images.items()}
    return {g: {f"pixel_auspro@{lim:g}": slow_area(c, lim) for lim in DEFAULT_LIMITS} for g, c in curves.items()}


@pytest.mark.parametrize("eval_size", [EVAL, None], ids=["24x24", "native"])
def test_auspro_in_metrics_json_matches_slow_reference(fitted, loco, maps, eval_size, tmp_path) -> None:
    evaluate(fitted, loco.test, out_dir=tmp_path, has_masks=loco.has_masks, eval_size=eval_size,
             defects=loco_defects_config(loco.root))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    ref = _reference(loco, maps, eval_size)
    assert all(0.0 <= metrics[k] <= 1.0 for k in KEYS)
    assert {k: metrics[k] for k in KEYS} == pytest.approx(ref["pooled"], abs=1e-9)
    for group in ("logical", "structural"):
        assert {k: metrics[group][k] for k in KEYS} == pytest.approx(ref[group], abs=1e-9)
        assert "image_auroc" in metrics[group]
    # 7 painted defects; the all-zero mask file is none; at 24x24 the 1-px speck vanishes but still counts
    assert metrics["spro"]["n_defects"] == 7
    assert (metrics["spro"]["n_good_images"], metrics["spro"]["n_anomalous_images"]) == (3, 4)
    if eval_size == EVAL:
        assert metrics["structural"]["pixel_auspro@1"] <= 2 / 3 + 1e-12  # 3 defects, the vanished speck never found
        unscaled = _reference(loco, maps, eval_size, scale_areas=False)["pooled"]
        assert abs(metrics["pixel_auspro@0.05"] - unscaled["pixel_auspro@0.05"]) > 1e-3  # the check can fail


def test_sPRO_leaves_the_other_metrics_unchanged(fitted, loco) -> None:
    plain = evaluate(fitted, loco.test, has_masks=True, eval_size=EVAL)
    with_spro = evaluate(fitted, loco.test, has_masks=True, eval_size=EVAL, defects=loco_defects_config(loco.root))
    assert not any(k.startswith("pixel_auspro") for k in plain) and "spro" not in plain
    assert "pixel_auspro@0.05" not in plain["logical"]
    for k in ("image_auroc", "pixel_auroc", "pixel_ap", "pixel_f1max", "pixel_aupro"):
        assert with_spro[k] == plain[k] or (math.isnan(with_spro[k]) and math.isnan(plain[k]))
    assert with_spro["logical"]["image_auroc"] == plain["logical"]["image_auroc"]
    no_masks = evaluate(fitted, loco.test, has_masks=False, defects=loco_defects_config(loco.root))
    assert "pixel_auspro@0.05" not in no_masks and "pixel_auroc" not in no_masks
