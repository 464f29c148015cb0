"""PixelMetrics: exact path equals scikit-learn, binned path stays within its bound, streaming, resizing."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from generalad.errors import InputError
from generalad.metrics import PixelMetrics, aupro, resize_for_eval
from generalad.metrics import _curve


def _sklearn(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    y, s = masks.ravel(), maps.ravel()
    p, r, _ = precision_recall_curve(y, s)
    with np.errstate(invalid="ignore"):
        f1 = float(np.nan_to_num(2 * p * r / (p + r)).max())
    return {"pixel_auroc": roc_auc_score(y, s), "pixel_ap": average_precision_score(y, s), "pixel_f1max": f1}


def _smooth_case(seed: int, n: int = 16, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Blurred noise maps with raised rectangular defects on half of the images."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    for i in range(0, n, 2):
        y0, x0 = rng.integers(0, size - 12, 2)
        masks[i, y0 : y0 + rng.integers(2, 12), x0 : x0 + rng.integers(2, 12)] = True
    maps = ndimage.gaussian_filter(rng.normal(size=masks.shape), (0, 1.5, 1.5)) + 0.4 * masks
    return maps.astype(np.float32), masks


@pytest.mark.parametrize("seed", range(6))
def test_exact_path_equals_sklearn_with_ties(seed: int, monkeypatch) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 6)), int(rng.integers(3, 25)), int(rng.integers(3, 25)))
    maps = (rng.integers(0, int(rng.integers(2, 80)), shape) * 0.37).astype(np.float32)
    masks = rng.random(shape) < rng.uniform(0.05, 0.5)
    masks.flat[0], masks.flat[-1] = True, False
    # exercise the chunked curve walk over many sorted blocks (open block included)
    monkeypatch.setattr(_curve, "CHUNK", int(rng.integers(1, 9)))
    monkeypatch.setattr(_curve, "NEG_BLOCK", int(rng.integers(1, 50)))
    monkeypatch.setattr(_curve, "POS_BLOCK", int(rng.integers(1, 20)))
    pm = PixelMetrics(None)
    for i in range(shape[0]):  # streamed one image at a time
        pm.update(maps[i], masks[i])
    got = pm.compute()
    assert pm.describe()["mode"] == "exact"
    for key, want in _sklearn(maps, masks).items():
        assert got[key] == pytest.approx(want, rel=1e-12, abs=1e-14), key


def test_streaming_equals_single_update_and_compute_is_repeatable() -> None:
    maps, masks = _smooth_case(0)
    whole = PixelMetrics((64, 64)).update(maps, masks).compute()
    pm = PixelMetrics((64, 64))
    pm.update(maps[:5], masks[:5])
    first = pm.compute()
    pm.update(maps[5:], masks[5:])  # updating after compute keeps accumulating
    assert pm.compute() == pytest.approx(whole, abs=1e-12)
    assert first != whole
    assert pm.compute() == pytest.approx(whole, abs=1e-12)
    assert pm.n_images == 16


def test_binned_path_close_to_exact_and_within_reported_bound() -> None:
    maps, masks = _smooth_case(1, n=24)
    exact = PixelMetrics((64, 64)).update(maps, masks).compute()
    pm = PixelMetrics((64, 64), max_exact_pixels=20_000)
    for i in range(0, 24, 4):  # the switch happens mid-stream; later batches go straight to bins
        pm.update(maps[i : i + 4], masks[i : i + 4])
    binned = pm.compute()
    info = pm.describe()
    assert info["mode"] == "binned" and info["n_bins"] >= 1 << 16
    assert pm._store.n_stored == 0  # raw values were released
    for key in exact:
        err = abs(binned[key] - exact[key])
        assert err < 1e-3, key
        assert err <= info["max_abs_error"][key] + 1e-12, key
    assert info["max_abs_error"]["pixel_auroc"] < 1e-4


def test_binned_from_the_first_update_and_far_out_of_range_later_data() -> None:
    maps, masks = _smooth_case(2, n=8)
    later = maps.copy()
    later[4:] = later[4:] * 1000.0 + 5e4  # values never seen when the bins were laid out
    pm = PixelMetrics(None, max_exact_pixels=0)
    pm.update(later[:4], masks[:4]).update(later[4:], masks[4:])
    exact = PixelMetrics(None).update(later, masks).compute()
    with pytest.warns(UserWarning, match="max_exact_pixels"):  # coarse bins for the shifted data
        got = pm.compute()
    bound = pm.describe()["max_abs_error"]
    for key in exact:
        assert abs(got[key] - exact[key]) <= bound[key] + 1e-12, key


def test_aupro_consistent_with_standalone_function() -> None:
    maps, masks = _smooth_case(3)
    assert PixelMetrics((64, 64)).update(maps, masks).compute()["pixel_aupro"] == pytest.approx(
        aupro(maps, masks), abs=1e-12
    )


def test_undefined_cases_are_nan() -> None:
    maps = np.random.default_rng(0).random((2, 8, 8))
    assert all(math.isnan(v) for v in PixelMetrics(None).update(maps, np.zeros((2, 8, 8))).compute().values())
    assert all(math.isnan(v) for v in PixelMetrics(None).update(maps, np.ones((2, 8, 8))).compute().values())
    assert all(math.isnan(v) for v in PixelMetrics(None).compute().values())
    binned = PixelMetrics(None, max_exact_pixels=0).update(maps, np.zeros((2, 8, 8)))
    assert all(math.isnan(v) for v in binned.compute().values())
    assert all(math.isnan(v) for v in binned.describe()["max_abs_error"].values())


def test_torch_inputs_and_channel_axis() -> None:
    torch = pytest.importorskip("torch")
    maps, masks = _smooth_case(4, n=4, size=16)
    ref = PixelMetrics((16, 16)).update(maps, masks).compute()
    got = PixelMetrics((16, 16)).update(torch.from_numpy(maps)[:, None], torch.from_numpy(masks)[:, None]).compute()
    assert got == pytest.approx(ref, abs=1e-12)


def test_input_errors() -> None:
    pm = PixelMetrics((32, 32))
    with pytest.raises(InputError, match="resize_for_eval"):
        pm.update(np.zeros((1, 64, 64)), np.zeros((1, 64, 64)))
    with pytest.raises(InputError, match="does not match"):
        pm.update(np.zeros((1, 32, 32)), np.zeros((1, 16, 16)))
    with pytest.raises(InputError, match="NaN"):
        pm.update(np.full((1, 32, 32), np.nan), np.zeros((1, 32, 32)))


def test_resize_for_eval_bilinear_maps_nearest_masks() -> None:
    torch = pytest.importorskip("torch")
    amap = np.arange(16, dtype=np.float32).reshape(4, 4)
    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 255
    out_map, out_mask = resize_for_eval(amap, mask, (8, 8))
    want = torch.nn.functional.interpolate(
        torch.from_numpy(amap)[None, None], size=(8, 8), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    assert out_map.dtype == np.float32 and np.array_equal(out_map, want)
    assert out_mask.dtype == np.bool_ and out_mask[:4, :4].all() and out_mask.sum() == 16
    maps, masks = resize_for_eval(np.random.default_rng(0).random((2, 40, 60)), None, 16)
    assert maps.shape == masks.shape == (2, 16, 16) and not masks.any()
    # map at model resolution, mask at the original size: each resized on its own
    m, g = resize_for_eval(np.ones((8, 8)), np.ones((30, 20), bool), (16, 16))
    assert m.shape == g.shape == (16, 16) and g.all()
    with pytest.raises(InputError, match="mask shape"):
        resize_for_eval(np.ones((2, 8, 8)), np.ones((3, 8, 8)), 4)
    # pixel-centre nearest: a one-pixel defect in the middle of 5x5 stays in the middle of 3x3
    dot = np.zeros((5, 5), bool)
    dot[2, 2] = True
    centre = np.zeros((3, 3), bool)
    centre[1, 1] = True
    assert np.array_equal(resize_for_eval(np.zeros((5, 5)), dot, 3)[1], centre)


def test_binned_equals_exact_when_bins_separate_all_scores() -> None:
    """Few distinct scores (small integers, with -0.0 beside 0.0): every bin holds one score value."""
    rng = np.random.default_rng(5)
    masks = rng.random((6, 20, 20)) < 0.2
    maps = (rng.integers(0, 21, masks.shape) + 3 * masks).astype(np.float32)
    maps[maps == 0] = np.where(rng.random(int((maps == 0).sum())) < 0.5, -0.0, 0.0)
    exact = PixelMetrics(None).update(maps, masks).compute()
    pm = PixelMetrics(None, max_exact_pixels=0).update(maps, masks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pm.compute() == pytest.approx(exact, abs=1e-12)
    # every bin holds one distinct score (real ties only): the bound knows it is exact, no warning
    assert all(v == 0.0 for v in pm.describe()["max_abs_error"].values())


def test_by_type_compares_each_type_with_every_normal_image_only() -> None:
    from generalad.metrics import PixelMetricsByType

    rng = np.random.default_rng(0)
    by_type = PixelMetricsByType(size=(16, 16))
    kept: dict[str | None, list[tuple[np.ndarray, np.ndarray]]] = {None: [], "big": [], "small": []}
    for kind in [None] * 4 + ["big"] * 3 + ["small"] * 3:
        amap = rng.normal(size=(16, 16)).astype(np.float32)
        mask = np.zeros((16, 16), dtype=bool)
        if kind == "big":  # found: the map is high on the defect
            mask[:8] = True
            amap[:8] += 2.0
        elif kind == "small":  # missed: the map ignores it
            mask[3:5, 3:5] = True
        by_type.update(amap, None if kind is None else mask, kind)
        kept[kind].append((amap, mask))
    got = by_type.compute()
    assert sorted(got) == ["big", "small"]
    for kind in ("big", "small"):
        pairs = kept[None] + kept[kind]
        scores = np.concatenate([a.ravel() for a, _ in pairs])
        truth = np.concatenate([m.ravel() for _, m in pairs])
        assert got[kind]["pixel_auroc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-9)
        assert got[kind]["pixel_ap"] == pytest.approx(average_precision_score(truth, scores), abs=1e-9)
    assert got["big"]["pixel_auroc"] > 0.9 > 0.7 > got["small"]["pixel_auroc"]
    assert by_type.describe()["eval_size"] == [16, 16]


def test_by_type_stops_instead_of_growing_past_its_image_budget() -> None:
    from generalad.metrics import PixelMetricsByType

    by_type = PixelMetricsByType(size=(8, 8), max_images=2)
    for kind in (None, "a", "a"):
        by_type.update(np.zeros((8, 8), np.float32), None, kind)
    assert by_type.compute() == {} and "skipped" in by_type.describe()
