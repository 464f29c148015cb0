"""Prediction records, regions and fixed-scale overlays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generalad.errors import ConfigError, InputError
from generalad.report import (
    COLUMNS,
    GT_CONTOUR_RGB,
    PRED_CONTOUR_RGB,
    TURBO,
    Prediction,
    colorize,
    regions_from_map,
    render_overlay,
    save_mask_png,
    save_png,
    write_predictions,
)
from tests.helpers import prediction_from_record, read_predictions, render_panel

FIELD_NOTES_KEYS = {
    "path", "category", "split", "gt_label", "pred_score", "threshold", "pred_label", "score_normalised",
    "map_path", "mask_path", "regions", "model", "backbone", "weights_sha256", "image_size", "latency_ms",
}  # fmt: skip
CLI_KEYS = {"path", "label", "score", "threshold", "is_anomalous"}


def _preds() -> list[Prediction]:
    return [
        Prediction(path="a.png", pred_score=2.5, threshold=1.0, category="bottle", split="test", gt_label=1,
                   score_normalised=0.9, regions=[{"bbox": [1, 2, 5, 6], "area_px": 12, "max_score": 3.0}],
                   model="patchcore", backbone="wide_resnet50_2", weights_sha256="ab" * 32,
                   image_size=[900, 900], latency_ms=12.5),
        Prediction(path="b, \"odd\".png", pred_score=0.25, threshold=1.0),  # comma/quote: CSV quoting
    ]  # fmt: skip


def test_prediction_label_is_derived() -> None:
    a, b = _preds()
    assert (a.pred_label, a.is_anomalous, b.pred_label) == (1, True, 0)
    assert Prediction(path="x", pred_score=1.0, threshold=1.0).pred_label == 0  # strictly greater
    assert Prediction(path="x", pred_score=2.0, threshold=1.0, pred_label=1).pred_label == 1
    with pytest.raises(ValueError, match="contradicts"):
        Prediction(path="x", pred_score=0.0, threshold=1.0, pred_label=1)


def test_jsonl_and_csv_round_trip_with_all_keys(tmp_path: Path) -> None:
    jsonl, csv_path = write_predictions(iter(_preds()), tmp_path / "res")
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["predictions.csv", "predictions.jsonl"]
    from_jsonl, from_csv = read_predictions(jsonl), read_predictions(csv_path)
    expected = [p.to_record() for p in _preds()]
    assert from_jsonl == expected and from_csv == expected
    for rec in from_jsonl:
        assert FIELD_NOTES_KEYS | CLI_KEYS <= set(rec) and list(rec) == list(COLUMNS)
    first = from_jsonl[0]
    assert first["label"] == 1 and first["score"] == 2.5 and first["is_anomalous"] is True
    assert csv_path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert prediction_from_record(from_csv[0]) == _preds()[0]


def test_nan_score_written_as_null(tmp_path: Path) -> None:
    jsonl, _ = write_predictions([Prediction(path="n.png", pred_score=float("nan"), threshold=1.0)], tmp_path)
    rec = json.loads(jsonl.read_text())
    assert rec["pred_score"] is None and rec["pred_label"] == 0


def test_regions_bbox_area_and_8_connectivity() -> None:
    m = np.zeros((10, 12))
    m[1:3, 2:5] = 1.0  # 2x3 block, bbox x 2..5, y 1..3
    m[3, 5] = 4.0  # diagonal neighbour of (2, 4): joins the block under 8-connectivity
    m[7:9, 9] = 2.0  # separate 2x1 region
    m[5, 0] = np.nan  # NaN never counts
    regions = regions_from_map(m, 0.5)
    assert regions == [
        {"bbox": [2, 1, 6, 4], "area_px": 7, "max_score": 4.0},
        {"bbox": [9, 7, 10, 9], "area_px": 2, "max_score": 2.0},
    ]
    assert regions_from_map(m, 0.5, min_area=3) == regions[:1]
    assert regions_from_map(np.zeros((4, 4)), 0.5) == []


def test_overlay_shape_dtype_and_contours() -> None:
    img = np.full((64, 80, 3), 0.5, dtype=np.float32)
    amap = np.zeros((64, 80), dtype=np.float32)
    amap[20:40, 30:50] = 1.0
    gt = np.zeros((64, 80), dtype=bool)
    gt[10:30, 5:25] = True
    out = render_overlay(img, amap, vmin=0.0, vmax=1.0, threshold=0.5, score=1.0, pixel_threshold=0.5,
                         gt_mask=gt, caption="x.png")  # fmt: skip
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[1:] == (80, 3) and out.shape[0] > 64
    assert tuple(out[20, 40]) == PRED_CONTOUR_RGB and tuple(out[30, 40]) != PRED_CONTOUR_RGB  # edge, not fill
    assert tuple(out[10, 15]) == GT_CONTOUR_RGB


def test_fixed_scale_keeps_normal_map_cool() -> None:
    img = np.full((32, 32, 3), 0.5, dtype=np.float32)
    rng = np.random.default_rng(0)
    normal = 0.1 * rng.random((32, 32))  # low scores, small range
    defect = normal.copy()
    defect[8:16, 8:16] = 2.0
    kw = dict(vmin=0.0, vmax=2.0, threshold=1.0)
    a = render_overlay(img, normal, **kw)[:32].astype(int)
    b = render_overlay(img, defect, **kw)[:32].astype(int)
    assert not np.array_equal(a, b)
    assert np.array_equal(a[20:, 20:], b[20:, 20:])  # same scale: identical scores, identical colours
    heat = colorize(normal, 0.0, 2.0)
    assert heat[..., 0].max() <= TURBO[:14, 0].max() < 80  # only the dark-blue end of the map is used
    assert b[12, 12, 0] > b[12, 12, 2] + 50  # the defect is warm (dark red at vmax)
    # per-image min-max would stretch the normal noise over the whole map: bright red somewhere
    stretched = colorize(normal, float(normal.min()), float(normal.max()))
    assert stretched[..., 0].max() > 200


def test_colormap_and_bad_inputs() -> None:
    assert TURBO.shape == (256, 3) and TURBO.dtype == np.uint8
    assert TURBO[32, 2] > 2 * TURBO[32, 0] and TURBO[-1, 0] > 2 * TURBO[-1, 2]  # blue → red
    with pytest.raises(ConfigError):
        colorize(np.zeros((2, 2)), 1.0, 1.0)
    with pytest.raises(InputError):
        render_overlay(np.zeros((4, 4, 3)), np.zeros((5, 4)), vmin=0, vmax=1, threshold=0.5)


def test_panel_and_png_files(tmp_path: Path) -> None:
    img = np.random.default_rng(0).random((40, 50, 3)).astype(np.float32)
    amap = np.zeros((40, 50))
    ov = render_overlay(img, amap, vmin=0, vmax=1, threshold=0.5, caption="c")
    panel = render_panel(img, None, ov, amap > 0.5)
    assert panel.dtype == np.uint8 and panel.shape[1] == 4 * 50 + 3 * 4 and panel.shape[0] > ov.shape[0]
    p = save_png(tmp_path / "o.png", ov)
    assert np.array_equal(np.asarray(Image.open(p)), ov)
    m = save_mask_png(tmp_path / "m.png", amap > -1)
    assert set(np.unique(np.asarray(Image.open(m))).tolist()) == {255}
    with pytest.raises(InputError):
        save_png(tmp_path / "f.png", img)  # float: refused


def test_overlay_of_real_image(bottle_dir: Path, tmp_path: Path) -> None:
    path = bottle_dir / "test" / "broken_large" / "000.png"
    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    h, w = img.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    amap = np.exp(-((yy - h / 3) ** 2 + (xx - w / 2) ** 2) / (2 * (h / 12) ** 2)).astype(np.float32)
    out = render_overlay(img, amap, vmin=0.0, vmax=1.0, threshold=0.5, score=float(amap.max()),
                         pixel_threshold=0.5, caption=path.name)  # fmt: skip
    assert out.shape[:2][1] == w and out.shape[0] > h
    assert save_png(tmp_path / "real.png", out).stat().st_size > 0
