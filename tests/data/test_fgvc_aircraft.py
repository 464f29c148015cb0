"""FGVC-Aircraft: torchvision's variant-level layout, train/test splits and the 10-listed-class test set."""

from __future__ import annotations

from pathlib import Path

import pytest

from generalad.data import open_dataset
from generalad.data.fgvc_aircraft import TEST_CLASSES
from generalad.errors import ConfigError, InputError
from tests.data import synth

# 100 variants as in variants.txt; names with a space and a slash sit at listed indices 91 and 96.
VARIANTS = [f"V{i:03d}" for i in range(100)]
VARIANTS[91], VARIANTS[96] = "F/A-18", "Cessna 172"
WITH_IMAGES = (91, 96, 59, 0, 1)  # three listed classes and two unlisted ones


def make_aircraft(root: Path) -> Path:
    """torchvision root: fgvc-aircraft-2013b/data/{variants.txt, images/, images_variant_<split>.txt}."""
    data = root / "fgvc-aircraft-2013b" / "data"
    rows: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for k in WITH_IMAGES:
        for split, n in (("train", 2), ("val", 1), ("test", 1)):
            for j in range(n):
                image_id = f"{k:03d}{split[:2]}{j}"
                synth.write_image(data / "images" / f"{image_id}.jpg", synth.grey(5, 7), quality=95)
                rows[split].append(f"{image_id} {VARIANTS[k]}")
    (data / "variants.txt").write_text("\n".join(VARIANTS) + "\n")
    for split, lines in rows.items():
        (data / f"images_variant_{split}.txt").write_text("\n".join(reversed(lines)) + "\n")
    rows["trainval"] = rows["train"] + rows["val"]
    (data / "images_variant_trainval.txt").write_text("\n".join(rows["trainval"]) + "\n")
    return root


def test_aircraft_train_split_and_listed_test_classes(tmp_path: Path) -> None:
    root = make_aircraft(tmp_path / "aircraft")
    data = open_dataset(root, normal_class=91)  # auto-detected; index = line in variants.txt
    assert (data.name, data.category) == ("fgvc_aircraft", "F/A-18")
    assert [Path(s.path).name for s in data.train] == ["091tr0.jpg", "091tr1.jpg"]  # train only, not val
    assert {s.defect_type: s.label for s in data.test} == {"F/A-18": 0, "Cessna 172": 1, "V059": 1}
    assert all(Path(s.path).is_file() for s in data.train + data.test)
    assert TEST_CLASSES == (91, 96, 59, 19, 37, 45, 90, 68, 74, 89)


def test_aircraft_unlisted_normal_class_and_all_classes(tmp_path: Path) -> None:
    root = make_aircraft(tmp_path / "aircraft")
    data = open_dataset(root / "fgvc-aircraft-2013b", normal_class="V000")  # the archive folder works too
    assert {s.defect_type for s in data.test} == {"V000", "F/A-18", "Cessna 172", "V059"}
    everything = open_dataset(root, layout="fgvc_aircraft", normal_class=0, test_classes="all")
    assert len(everything.test) == len(WITH_IMAGES) and sum(s.label for s in everything.test) == 4
    two = open_dataset(root, normal_class="Cessna 172", test_classes=[59])
    assert [(s.defect_type, s.label) for s in two.test] == [("V059", 1), ("Cessna 172", 0)]  # sorted by path


def test_aircraft_errors(tmp_path: Path) -> None:
    root = make_aircraft(tmp_path / "aircraft")
    with pytest.raises(ConfigError, match="unknown test_classes 'nope'"):
        open_dataset(root, normal_class=0, test_classes=["nope"])
    with pytest.raises(ConfigError, match="do not apply to fgvc_aircraft"):
        open_dataset(root, normal_class=0, split_seed=1)
    with pytest.raises(InputError, match="no train images for V019"):
        open_dataset(root, normal_class=19)
    test_file = root / "fgvc-aircraft-2013b" / "data" / "images_variant_test.txt"
    test_file.write_text("123 Not A Variant\n")
    with pytest.raises(InputError, match="unknown variant 'Not A Variant'"):
        open_dataset(root, normal_class=0)
    test_file.unlink()
    with pytest.raises(InputError, match="FGVC-Aircraft file not found: .*images_variant_test.txt"):
        open_dataset(root, normal_class=0)
