"""MVTec 3D-AD reader on a tiny synthetic category, xyz decoding, depth conversion and the errors users see."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from generalad.data import (
    LAYOUTS,
    Sample,
    depth_from_xyz,
    open_dataset,
    read_depth,
    read_image,
    read_mask,
    read_mvtec3d,
    read_xyz,
)
from generalad.errors import ConfigError, InputError

H, W = 40, 48


def _xyz(h: int = H, w: int = W, offset: float = 0.0) -> np.ndarray:
    """x, y grids (mm-like) and a tilted z surface with a few missing (all-zero) points, as MVTec 3D-AD stores."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    z = 500.0 + offset + 0.5 * x + 0.25 * y
    xyz = np.stack([x * 0.1, y * 0.1, z], axis=2).astype(np.float32)
    xyz[:3, :4] = 0.0  # missing points: x = y = z = 0
    return xyz


def _imwrite(path: Path, array: np.ndarray) -> None:
    """xyz maps as MVTec 3D-AD ships them: one page, 3 contiguous float32 samples per pixel."""
    tifffile.imwrite(path, array, photometric="rgb" if array.ndim == 3 else "minisblack")


def _write_sample(type_dir: Path, stem: str, gt: np.ndarray | None = None) -> None:
    for sub in ("rgb", "xyz", "gt"):
        (type_dir / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 120, np.uint8)).save(type_dir / "rgb" / f"{stem}.png")
    _imwrite(type_dir / "xyz" / f"{stem}.tiff", _xyz())
    if gt is not None:
        Image.fromarray(gt).save(type_dir / "gt" / f"{stem}.png")


def make_mvtec3d(root: Path) -> Path:
    """bagel: train/good x3, validation/good x2, test/good x2 (all-zero gt), test/crack x2 (gt masks)."""
    crack = np.zeros((H, W), np.uint8)
    crack[10:14, 20:25] = 255
    for i in (2, 0, 1):  # written out of order: the reader must sort
        _write_sample(root / "train" / "good", f"{i:03d}")
    for i in range(2):
        _write_sample(root / "validation" / "good", f"{i:03d}")
        _write_sample(root / "test" / "good", f"{i:03d}", gt=np.zeros((H, W), np.uint8))
        _write_sample(root / "test" / "crack", f"{i:03d}", gt=crack)
    (root / "calibration").mkdir()
    (root / "calibration" / "camera_parameters.json").write_text("{}")
    return root


@pytest.fixture
def bagel(tmp_path: Path) -> Path:
    return make_mvtec3d(tmp_path / "mvtec_3d" / "bagel")


def _rel(root: Path, paths: list[str]) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in paths]


# ---------------------------------------------------------------- layout


def test_layout_registered() -> None:
    assert LAYOUTS.index("mvtec3d") == LAYOUTS.index("mvtec") + 1


def test_auto_detects_mvtec3d(bagel: Path) -> None:
    data = open_dataset(bagel)
    assert (data.name, data.category, data.root, data.has_masks) == ("mvtec3d", "bagel", str(bagel), True)
    by_parent = open_dataset(bagel.parent, category="bagel")
    assert by_parent.name == "mvtec3d" and by_parent.test == data.test and by_parent.train == data.train
    assert open_dataset(bagel, layout="mvtec3d").test == data.test


def test_parent_folder_lists_categories(bagel: Path) -> None:
    with pytest.raises(ConfigError, match="category= one of bagel"):
        open_dataset(bagel.parent)


def test_splits_labels_masks_and_depth_paths(bagel: Path) -> None:
    data = read_mvtec3d(bagel)
    assert _rel(bagel, [s.path for s in data.train]) == [f"train/good/rgb/{i:03d}.png" for i in range(3)]
    assert _rel(bagel, [s.depth_path for s in data.train]) == [f"train/good/xyz/{i:03d}.tiff" for i in range(3)]
    assert [s.split for s in data.validation] == ["validation"] * 2
    val_xyz = [f"validation/good/xyz/{i:03d}.tiff" for i in (0, 1)]
    assert _rel(bagel, [s.depth_path for s in data.validation]) == val_xyz
    assert _rel(bagel, [s.path for s in data.test]) == [
        "test/crack/rgb/000.png", "test/crack/rgb/001.png", "test/good/rgb/000.png", "test/good/rgb/001.png",
    ]  # fmt: skip
    kinds = [(s.label, s.defect_type, s.split) for s in data.test]
    assert kinds == [(1, "crack", "test")] * 2 + [(0, "good", "test")] * 2
    masks = _rel(bagel, [m for s in data.test for m in s.mask_paths])
    assert masks == ["test/crack/gt/000.png", "test/crack/gt/001.png"]
    assert all(s.mask_paths == () for s in [*data.train, *data.validation, *data.test] if s.label == 0)
    assert all(Path(s.depth_path).parent == Path(s.path).parent.parent / "xyz" for s in data.test)
    assert {s.category for s in [*data.train, *data.validation, *data.test]} == {"bagel"}


def test_samples_read_as_images_masks_and_depth(bagel: Path) -> None:
    crack = read_mvtec3d(bagel).test[0]
    assert read_image(crack).shape == (H, W, 3)
    assert read_mask(crack).sum() == 20
    depth = read_depth(crack)
    assert depth.shape == (H, W) and depth.dtype == np.float32
    assert read_depth(crack, size=(16, 20)).shape == (16, 20)


def test_xyz_matched_case_insensitively_and_tif(bagel: Path) -> None:
    xyz_dir = bagel / "test" / "crack" / "xyz"
    (xyz_dir / "000.tiff").rename(xyz_dir / "000.TIF")
    crack = read_mvtec3d(bagel).test[0]
    assert Path(crack.depth_path).name == "000.TIF"


def test_validation_optional(bagel: Path) -> None:
    for sub in ("rgb", "xyz", "gt"):
        for f in (bagel / "validation" / "good" / sub).iterdir():
            f.unlink()
        (bagel / "validation" / "good" / sub).rmdir()
    (bagel / "validation" / "good").rmdir()
    assert read_mvtec3d(bagel).validation == []


# ---------------------------------------------------------------- read_xyz


def test_read_xyz_round_trip(tmp_path: Path) -> None:
    xyz = _xyz()
    _imwrite(tmp_path / "a.tiff", xyz)
    out = read_xyz(tmp_path / "a.tiff")
    assert out.dtype == np.float32 and out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, xyz)


def test_truncated_tiff_names_file(tmp_path: Path) -> None:
    _imwrite(tmp_path / "full.tiff", _xyz())
    data = (tmp_path / "full.tiff").read_bytes()
    for cut in (6, 100, len(data) // 2, len(data) - 10):
        cut_path = tmp_path / f"cut{cut}.tiff"
        cut_path.write_bytes(data[:cut])
        with pytest.raises(InputError, match=re.escape(str(cut_path))) as err:
            read_xyz(cut_path)
        assert "\n" not in str(err.value)


def test_xyz_wrong_shape_and_missing_file(tmp_path: Path) -> None:
    _imwrite(tmp_path / "plane.tiff", np.ones((H, W), np.float32))
    with pytest.raises(InputError, match=r"plane\.tiff.*not \(H, W, 3\)"):
        read_xyz(tmp_path / "plane.tiff")
    with pytest.raises(InputError, match="xyz map not found"):
        read_xyz(tmp_path / "nowhere.tiff")


# ---------------------------------------------------------------- depth_from_xyz


def _z_only(z: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(z), np.ones_like(z), z], axis=2).astype(np.float32)


def test_depth_range_and_monotone_in_z() -> None:
    xyz = _xyz()
    depth = depth_from_xyz(xyz)
    assert depth.shape == (H, W) and depth.dtype == np.float32
    assert depth.min() == 0.0 and depth.max() == 1.0
    valid = xyz[:, :, 2] != 0
    z, d = xyz[:, :, 2][valid], depth[valid]
    order = np.argsort(z, kind="stable")
    assert np.all(np.diff(d[order]) >= 0)  # larger z (farther) → larger depth, z kept as is
    np.testing.assert_allclose(d, (z - z.min()) / (z.max() - z.min()), atol=1e-6)


def test_invalid_pixels_take_nearest_valid_value() -> None:
    # 0, NaN and inf are invalid; every checked invalid pixel has a unique nearest valid pixel.
    z = np.array([[0.0, np.nan, 2.0, np.inf, 0.0, 0.0, 0.0, 6.0, 0.0, 4.0]], dtype=np.float32)
    depth = depth_from_xyz(_z_only(z))
    # Normalised valid values: 2 → 0, 4 → 0.5, 6 → 1. Nearest valid column of each pixel:
    #   0,1,3,4 → 2 (distances 2,1,1,2 vs ≥ 3);  5,6 → 7 (2,1 vs 3,4);  8 → 7 or 9: a tie, not checked.
    expected = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 1.0, 6: 1.0, 7: 1.0, 9: 0.5}
    assert {c: float(depth[0, c]) for c in expected} == expected
    assert depth[0, 8] in (1.0, 0.5)


def test_inpainting_exact_on_unique_nearest() -> None:
    z = np.zeros((5, 5), np.float32)
    z[0, 0], z[4, 4] = 10.0, 30.0  # two valid points: everything else copies the nearer one
    depth = depth_from_xyz(_z_only(z))
    assert depth[0, 0] == 0.0 and depth[4, 4] == 1.0
    assert depth[1, 1] == 0.0 and depth[0, 2] == 0.0 and depth[3, 4] == 1.0 and depth[4, 2] == 1.0


def test_constant_depth_is_half() -> None:
    z = np.full((4, 6), 7.0, np.float32)
    z[0, 0] = 0.0
    np.testing.assert_array_equal(depth_from_xyz(_z_only(z)), np.full((4, 6), 0.5, np.float32))


def test_all_invalid_is_input_error() -> None:
    z = np.zeros((4, 6), np.float32)
    z[1, 1] = np.nan
    with pytest.raises(InputError, match="no valid point"):
        depth_from_xyz(_z_only(z))


def test_resize_shape_and_range() -> None:
    depth = depth_from_xyz(_xyz(), size=(20, 24))
    assert depth.shape == (20, 24) and depth.dtype == np.float32
    assert 0.0 <= depth.min() and depth.max() <= 1.0
    assert depth_from_xyz(_xyz(), size=(80, 96)).shape == (80, 96)
    np.testing.assert_array_equal(depth_from_xyz(_xyz(), size=(H, W)), depth_from_xyz(_xyz()))
    with pytest.raises(ConfigError):
        depth_from_xyz(_xyz(), size=(0, 4))


def test_depth_from_xyz_rejects_2d_array() -> None:
    with pytest.raises(InputError, match=r"not \(H, W, 3\)"):
        depth_from_xyz(np.ones((H, W), np.float32))


# ---------------------------------------------------------------- bad input


def test_missing_xyz_names_rgb_and_expected_path(bagel: Path) -> None:
    missing = bagel / "train" / "good" / "xyz" / "001.tiff"
    missing.unlink()
    rgb = bagel / "train" / "good" / "rgb" / "001.png"
    with pytest.raises(InputError, match=re.escape(str(rgb))) as err:
        open_dataset(bagel)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_missing_gt_for_anomalous_names_expected_path(bagel: Path) -> None:
    expected = bagel / "test" / "crack" / "gt" / "001.png"
    expected.unlink()
    with pytest.raises(InputError, match=re.escape(str(expected))):
        open_dataset(bagel)


def test_missing_gt_for_normal_is_fine(bagel: Path) -> None:
    (bagel / "test" / "good" / "gt" / "000.png").unlink()
    assert len(open_dataset(bagel).test) == 4


def test_read_depth_on_2d_sample_is_input_error() -> None:
    with pytest.raises(InputError, match=r"/x/000\.png has no xyz map \(not an MVTec 3D-AD sample\)"):
        read_depth(Sample("/x/000.png", 0))


def test_read_depth_of_all_invalid_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "empty.tiff"
    _imwrite(path, np.zeros((4, 5, 3), np.float32))
    with pytest.raises(InputError, match=re.escape(str(path))):
        read_depth(Sample(str(tmp_path / "000.png"), 0, depth_path=str(path)))
