"""JPEG draft decoding (``jpeg_draft``): fewer pixels decoded, never below the working size; off by default."""

from __future__ import annotations

import numpy as np
from PIL import Image

from generalad.data import read_image
from generalad.data.images import image_hw


def _jpeg(tmp_path, bottle_dir):
    src = next((bottle_dir / "test" / "broken_large").glob("*.png"))
    path = tmp_path / "bottle.jpg"
    Image.open(src).convert("RGB").save(path, quality=95)
    return path


def test_draft_decodes_smaller_but_not_below_the_working_size(tmp_path, bottle_dir):
    path = _jpeg(tmp_path, bottle_dir)
    full = read_image(path)
    assert full.shape == (900, 900, 3) and image_hw(path) == (900, 900)
    drafted = read_image(path, draft=(224, 224))
    assert drafted.shape[:2] == (225, 225)  # 900 / 4: the smallest DCT scale still ≥ 224
    assert read_image(path, draft=(512, 512)).shape[:2] == (900, 900)  # 1/2 would give 450 < 512: full decode
    small = np.asarray(Image.fromarray((full * 255).round().astype(np.uint8)).resize((225, 225), Image.BOX)) / 255.0
    assert np.abs(drafted - small).mean() < 0.02  # the same picture, slightly different pixels


def test_draft_leaves_other_formats_alone(bottle_dir):
    png = next((bottle_dir / "test" / "good").glob("*.png"))
    np.testing.assert_array_equal(read_image(png, draft=(224, 224)), read_image(png))


def test_models_decode_fully_unless_asked(tmp_path, bottle_dir):
    from generalad.data import open_dataset
    from generalad.methods.patchcore import PatchCore

    path = _jpeg(tmp_path, bottle_dir)
    train = open_dataset(bottle_dir).train[:4]
    from generalad.data import Sample

    sample = [Sample(path=str(path), label=-1, split="predict")]
    plain = PatchCore(backbone="efficientnet_lite0", image_size=64, calibration_min=2).fit(train)
    assert plain.config.jpeg_draft is False
    drafted = PatchCore(backbone="efficientnet_lite0", image_size=64, calibration_min=2, jpeg_draft=True).fit(train)
    a, b = plain.score(sample)[0], drafted.score(sample)[0]
    assert a != b and abs(a - b) < 0.1 * abs(a)  # PNG training images: identical banks; only the JPEG differs
    assert plain.anomaly_maps(sample)[0].shape == drafted.anomaly_maps(sample)[0].shape == (900, 900)
