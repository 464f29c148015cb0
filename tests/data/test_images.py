"""Image and mask decoding: every colour mode we promise, and one-line errors for every broken input."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generalad.data import Sample, content_hash, image_hw, read_image, read_mask
from generalad.errors import InputError
from tests.data.synth import mask, write_image


def _rgb(h: int = 4, w: int = 6) -> np.ndarray:
    return np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)


def _check_rgb_float(out: np.ndarray, hw: tuple[int, int]) -> None:
    assert out.dtype == np.float32 and out.shape == (*hw, 3)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_rgb_png_values(tmp_path: Path) -> None:
    pixels = _rgb()
    out = read_image(write_image(tmp_path / "a.png", pixels))
    _check_rgb_float(out, (4, 6))
    np.testing.assert_allclose(out, pixels / 255.0, atol=1e-7)


def test_grey_becomes_three_identical_channels(tmp_path: Path) -> None:
    pixels = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    out = read_image(write_image(tmp_path / "g.png", pixels))
    _check_rgb_float(out, (4, 6))
    for c in range(3):
        np.testing.assert_allclose(out[:, :, c], pixels / 255.0, atol=1e-7)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    pixels = np.dstack([_rgb(), np.zeros((4, 6), np.uint8)])  # fully transparent
    out = read_image(write_image(tmp_path / "a.png", pixels))
    np.testing.assert_allclose(out, _rgb() / 255.0, atol=1e-7)  # colour kept, not composited on black


def test_la_drops_alpha(tmp_path: Path) -> None:
    im = Image.fromarray(np.full((3, 3), 200, np.uint8)).convert("LA")
    im.putalpha(0)
    im.save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    np.testing.assert_allclose(read_image(tmp_path / "la.png"), 200 / 255.0, atol=1e-7)


def test_palette_maps_through_palette(tmp_path: Path) -> None:
    im = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    im.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    im.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    out = read_image(tmp_path / "p.png")
    np.testing.assert_allclose(out[0, 1] * 255, [200, 100, 0], atol=1e-4)
    np.testing.assert_allclose(out[0, 0] * 255, [10, 20, 30], atol=1e-4)


def test_16bit_png_scaled_by_65535(tmp_path: Path) -> None:
    pixels = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    path = write_image(tmp_path / "d.png", pixels)
    assert Image.open(path).mode == "I;16"
    out = read_image(path)
    np.testing.assert_allclose(out[0, :, 1], pixels[0] / 65535.0, rtol=1e-6)  # not divided by max or 255
    assert out[0, 3, 0] == 1.0


def test_int32_tiff_treated_as_16bit_and_range_checked(tmp_path: Path) -> None:
    path = write_image(tmp_path / "i.tif", np.array([[0, 65535]], dtype=np.int32))
    assert Image.open(path).mode == "I"
    np.testing.assert_allclose(read_image(path)[0, :, 0], [0.0, 1.0])
    bad = write_image(tmp_path / "big.tif", np.array([[0, 70000]], dtype=np.int32))
    with pytest.raises(InputError, match="16-bit range"):
        read_image(bad)


def test_float_tiff(tmp_path: Path) -> None:
    values = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(read_image(write_image(tmp_path / "f.tif", values))[:, :, 2], values)
    out_of_range = write_image(tmp_path / "hdr.tif", values * 4)
    with pytest.raises(InputError, match=r"hdr\.tif.*expected \[0, 1\]"):
        read_image(out_of_range)


def test_cmyk_converted(tmp_path: Path) -> None:
    path = tmp_path / "c.tif"
    Image.new("CMYK", (3, 2), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    np.testing.assert_allclose(read_image(path)[1, 2], [1.0, 0.0, 0.0])


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_exif_orientation_applied_and_header_agrees(tmp_path: Path, ext: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    pixels = _rgb(4, 6)
    path = write_image(tmp_path / f"e{ext}", pixels, exif=exif)
    out = read_image(path)
    assert out.shape == (6, 4, 3) and image_hw(path) == (6, 4)
    if ext == ".png":  # lossless: check the exact rotation direction
        np.testing.assert_allclose(out, np.rot90(pixels, k=-1) / 255.0, atol=1e-7)


def test_in_memory_arrays(tmp_path: Path) -> None:
    digit = np.arange(12, dtype=np.uint8).reshape(3, 4)
    sample = Sample("/x/train-images-idx3-ubyte#7", 0, array=digit)
    out = read_image(sample)
    _check_rgb_float(out, (3, 4))
    assert np.array_equal(out[:, :, 0], out[:, :, 2]) and image_hw(sample) == (3, 4)
    np.testing.assert_allclose(read_image(_rgb()), _rgb() / 255.0, atol=1e-7)
    with pytest.raises(InputError, match="dtype"):
        read_image(Sample("/x/f#1", 0, array=np.zeros((2, 2), np.int64)))


def _truncated_png(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    good = write_image(tmp_path / "full.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    path = tmp_path / "cut.png"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return path


def test_truncated_png_names_file(tmp_path: Path) -> None:
    path = _truncated_png(tmp_path)
    image_hw(path)  # the header alone is intact…
    with pytest.raises(InputError) as err:
        read_image(path)  # …but the full decode must fail
    message = str(err.value)
    assert str(path) in message and "truncated" in message and "\n" not in message


def test_random_bytes_named_png(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match=re.escape(f"cannot decode image {path}: not a recognised image format")):
        read_image(path)
    with pytest.raises(InputError, match=r"noise\.png"):
        image_hw(path)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=re.escape(f"image not found: {tmp_path / 'nope.png'}")):
        read_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="is not a file"):
        read_image(tmp_path)


def test_read_mask_ors_files_and_binarises(tmp_path: Path) -> None:
    image = write_image(tmp_path / "img.png", np.zeros((8, 10), np.uint8))
    grey_mask = write_image(tmp_path / "m1.png", mask(value=1))  # small label value still counts
    rgb = np.zeros((8, 10, 3), np.uint8)
    rgb[7, 9] = (255, 0, 0)  # red-only annotation
    rgb_mask = write_image(tmp_path / "m2.png", rgb)
    sample = Sample(str(image), 1, "crack", (str(grey_mask), str(rgb_mask)))
    out = read_mask(sample, (8, 10))
    assert out.dtype == np.bool_ and out.shape == (8, 10)
    assert out.sum() == 6 + 1 and out[2, 3] and out[7, 9]
    assert np.array_equal(read_mask(sample), out)  # hw from the image header
    assert read_mask(sample, (8, 10), threshold=127).sum() == 1  # anti-aliased-mask rule


def test_read_mask_palette_uses_indices(tmp_path: Path) -> None:
    im = Image.fromarray(np.array([[0, 2], [0, 0]], np.uint8), mode="P")
    im.putpalette([0, 0, 0] * 256)  # every index drawn black: the index is still the label
    im.save(tmp_path / "p.png")
    out = read_mask(Sample("img", 1, "bad", (str(tmp_path / "p.png"),)), (2, 2))
    assert out.tolist() == [[False, True], [False, False]]


def test_read_mask_without_masks_is_zero() -> None:
    out = read_mask(Sample("/nowhere.png", 0), (5, 7))
    assert out.shape == (5, 7) and not out.any()


def test_read_mask_size_mismatch_names_both_files(tmp_path: Path) -> None:
    image = write_image(tmp_path / "img.png", np.zeros((8, 10), np.uint8))
    small = write_image(tmp_path / "img_mask.png", mask(4, 5))
    sample = Sample(str(image), 1, "crack", (str(small),))
    with pytest.raises(InputError) as err:
        read_mask(sample, image_hw(sample))
    assert str(small) in str(err.value) and str(image) in str(err.value) and "5x4" in str(err.value)


def test_read_mask_corrupt_mask(tmp_path: Path) -> None:
    bad = tmp_path / "m.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(InputError, match=re.escape(f"cannot decode mask {bad}")):
        read_mask(Sample("img", 1, "crack", (str(bad),)), (2, 2))


def test_content_hash(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.png", _rgb())
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert content_hash(Sample(str(path), 0)) == expected == content_hash(path)
    flat = np.arange(12, dtype=np.uint8)
    a = Sample("/f#0", 0, array=flat.reshape(3, 4))
    assert content_hash(a) == content_hash(Sample("/other#5", 1, array=flat.reshape(3, 4).copy()))
    assert content_hash(a) != content_hash(Sample("/f#0", 0, array=flat.reshape(4, 3)))  # shape counts
    with pytest.raises(InputError, match="file not found"):
        content_hash(tmp_path / "missing.png")


def _pillow_pixels(path: Path) -> np.ndarray:
    """read_image with the libspng fast path switched off: the Pillow reference."""
    import generalad.data.images as images

    saved, images._spng = images._spng, None
    try:
        return read_image(path)
    finally:
        images._spng = saved


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "P", "1", "I;16"])
@pytest.mark.parametrize("interlace", [False, True])
def test_png_fast_path_gives_pillows_pixels_for_every_colour_type(tmp_path: Path, mode: str, interlace: bool) -> None:
    import generalad.data.images as images

    assert images._spng is not None, "pyspng is a pinned dependency (pyproject.toml)"
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    im = Image.fromarray(rgba, "RGBA").convert(mode) if mode != "I;16" else Image.fromarray(
        rng.integers(0, 65536, (37, 53), dtype=np.uint16))
    path = tmp_path / f"{mode.replace(';', '')}.png"
    im.save(path, interlace=interlace, **({"transparency": 7} if mode == "L" else {}))
    assert np.array_equal(read_image(path), _pillow_pixels(path))


def test_png_fast_path_on_a_real_mvtec_image() -> None:
    path = next(Path(__file__).resolve().parents[2].joinpath("..", "shared", "data", "mvtec_bottle_subset").rglob("*.png"), None)
    if path is None:
        pytest.skip("the shared MVTec bottle subset is not on this machine")
    assert np.array_equal(read_image(path), _pillow_pixels(path))
