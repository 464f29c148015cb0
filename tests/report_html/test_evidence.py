"""What ``test`` keeps for the report: the PRO curve (the one AUPRO integrates), per-defect AUROC and the worst
false positives / negatives — checked against independent computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from generalad.metrics import PixelMetrics, aupro
from generalad.report_html.evidence import _interpolate, curve_area, pro_curve


def _read(res):
    preds = [json.loads(line) for line in (res / "predictions.jsonl").read_text().splitlines()]
    return preds, json.loads((res / "inspect.json").read_text())


def test_pro_curve_of_a_real_test_integrates_to_its_pixel_aupro(tile_res):
    res, metrics = tile_res
    curve = _read(res)[1]["pro_curve"]
    fpr, pro = np.array(curve["fpr"]), np.array(curve["pro"])
    assert fpr[0] == 0.0 and fpr[-1] == pytest.approx(0.3) and len(fpr) == 301
    assert np.all(np.diff(pro) >= -1e-12) and 0.0 <= pro[0] and pro[-1] <= 1.0  # non-decreasing, in [0, 1]
    assert curve_area(curve) == pytest.approx(metrics["pixel_aupro"], abs=2e-3)
    assert curve["n_regions"] > 0 and curve["mode"] == "exact"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pro_curve_area_matches_aupro_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(5, 40, 40)).astype(np.float32)
    masks = np.zeros((5, 40, 40), dtype=bool)
    masks[1, 5:15, 5:12] = masks[2, 20:38, 20:30] = masks[3, 0:3, 0:40] = True
    maps[masks] += rng.uniform(0.5, 2.0)  # defects score higher, by a random margin
    pm = PixelMetrics(eval_size=None).update(maps, masks)
    curve = pro_curve(pm, n_points=3001)
    assert curve_area(curve) == pytest.approx(aupro(maps, masks), abs=1e-4)


def test_pro_curve_is_none_without_defect_pixels():
    pm = PixelMetrics(eval_size=None).update(np.ones((2, 8, 8), np.float32), np.zeros((2, 8, 8), bool))
    assert pro_curve(pm) is None


def test_interpolation_takes_the_top_of_a_vertical_step():
    xs, ys = np.array([0.0, 0.0, 0.2, 0.2, 1.0]), np.array([0.0, 0.5, 0.7, 0.9, 1.0])
    got = _interpolate(xs, ys, np.array([0.0, 0.1, 0.2, 0.6, 1.0]))
    np.testing.assert_allclose(got, [0.5, 0.6, 0.9, 0.95, 1.0])


def test_per_defect_type_auroc_and_detection_rate(tile_res, tile_test):
    res, metrics = tile_res
    preds = _read(res)[0]
    scores = {p["path"]: p["pred_score"] for p in preds}
    good = [scores[s.path] for s in tile_test if s.label == 0]
    per = metrics["per_defect_type"]
    assert set(per) == {s.defect_type for s in tile_test if s.label == 1}
    for kind, entry in per.items():
        mine = [scores[s.path] for s in tile_test if s.defect_type == kind]
        expected = roc_auc_score([0] * len(good) + [1] * len(mine), good + mine)
        assert entry["n"] == len(mine) and entry["image_auroc"] == pytest.approx(expected)
        assert entry["detected"] == pytest.approx(np.mean(np.array(mine) > metrics["threshold"]))


def test_per_defect_type_pixel_metrics_of_a_real_test(tile_res, tile_model, tile_test):
    """Each type's pixel AUROC = that type's images against every good image, recomputed here at 128x128."""
    from generalad.data import image_hw, read_mask
    from generalad.metrics import resize_for_eval

    _, metrics = tile_res
    maps = dict(zip([s.path for s in tile_test], tile_model.anomaly_maps(tile_test)))
    kept = {s.path: resize_for_eval(maps[s.path], read_mask(s, image_hw(s)), (128, 128)) for s in tile_test}
    good = [kept[s.path] for s in tile_test if s.label == 0]
    assert metrics["per_defect_type_pixels"]["eval_size"] == [128, 128]
    for kind, entry in metrics["per_defect_type"].items():
        pairs = good + [kept[s.path] for s in tile_test if s.defect_type == kind]
        truth = np.concatenate([g.ravel() for _, g in pairs])
        expected = roc_auc_score(truth, np.concatenate([m.ravel() for m, _ in pairs]))
        assert entry["pixel_auroc"] == pytest.approx(expected, abs=1e-6), kind
        assert 0 < entry["pixel_ap"] <= 1 and 0 <= entry["pixel_aupro"] <= 1


def test_gallery_holds_exactly_the_worst_mistakes_at_the_threshold(tile_res):
    res, metrics = tile_res
    preds, evidence = _read(res)
    thr = metrics["threshold"]
    fps = sorted((p for p in preds if p["gt_label"] == 0 and p["pred_score"] > thr), key=lambda p: -p["pred_score"])
    fns = sorted((p for p in preds if p["gt_label"] == 1 and p["pred_score"] <= thr), key=lambda p: p["pred_score"])
    gallery = evidence["gallery"]
    assert [c["path"] for c in gallery["false_positives"]] == [p["path"] for p in fps[:4]]
    assert [c["path"] for c in gallery["false_negatives"]] == [p["path"] for p in fns[:4]]
    assert fps or fns, "the small model should make at least one mistake on these tiles"
    for case in gallery["false_positives"] + gallery["false_negatives"]:
        png = Image.open(res / case["png"])
        assert max(png.size) <= 320 + 60 and png.mode == "RGB"  # display size + caption strip
        assert case["has_mask"] == (case["label"] == 1)
    assert sorted(p.name for p in (res / "gallery").iterdir()) == sorted(
        c["png"].split("/")[-1] for c in gallery["false_positives"] + gallery["false_negatives"])


def test_gallery_of_a_defect_shows_its_mask_contour(tile_res):
    res, _ = tile_res
    gallery = _read(res)[1]["gallery"]
    case = next((c for c in gallery["false_negatives"] if c["has_mask"]), None)
    if case is None:
        pytest.skip("no missed defect among these tiles for this model")
    pixels = np.asarray(Image.open(res / case["png"]))
    magenta = np.all(pixels == (255, 0, 255), axis=-1)
    assert magenta.any()
