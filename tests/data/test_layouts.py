"""Layout readers on small synthetic trees, auto-detection, and the errors users see."""

from __future__ import annotations

import gzip
import json
import pickle
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from generalad.data import loco_defects_config, open_dataset, read_image, read_loco_defects, read_mask
from generalad.errors import ConfigError, InputError
from tests.data import synth


def _names(samples: list) -> list[str]:
    return [Path(s.path).name for s in samples]


# ---------------------------------------------------------------- MVTec-like


def test_mvtec_jpg_images_with_png_masks(tmp_path: Path) -> None:
    root = synth.make_mvtec(tmp_path / "test_data" / "screw", image_ext=".JPG")  # "test" in the root path
    data = open_dataset(root)
    assert (data.name, data.category, data.has_masks) == ("mvtec", "screw", True)
    assert len(data.train) == 3 and len(data.test) == 4
    bad = [s for s in data.test if s.label == 1]
    assert [Path(m).relative_to(root).as_posix() for s in bad for m in s.mask_paths] == [
        "ground_truth/crack/000_mask.png", "ground_truth/crack/001_mask.png",
    ]  # fmt: skip
    assert read_mask(bad[0], (8, 10)).sum() == 6


def test_mvtec_missing_single_mask_names_expected_path(tmp_path: Path) -> None:
    root = synth.make_mvtec(tmp_path / "cat")
    (root / "ground_truth" / "crack" / "001_mask.png").unlink()
    expected = root / "ground_truth" / "crack" / "001_mask.png"
    with pytest.raises(InputError, match=re.escape(str(expected))):
        open_dataset(root)


def test_mvtec_without_ground_truth_is_image_level(tmp_path: Path) -> None:
    data = open_dataset(synth.make_mvtec(tmp_path / "cat", with_gt=False))
    assert not data.has_masks and all(s.mask_paths == () for s in data.test)


def test_mvtec_validation_used_when_present(tmp_path: Path) -> None:
    root = synth.make_mvtec(tmp_path / "cat")
    synth.write_image(root / "validation" / "good" / "000.png", synth.grey())
    data = open_dataset(root)
    assert len(data.validation) == 1 and data.validation[0].split == "validation"


def test_hidden_files_and_case_insensitive_extensions(tmp_path: Path) -> None:
    root = synth.make_mvtec(tmp_path / "cat")
    (root / "train" / "good" / "._000.png").write_bytes(b"macOS resource fork")
    (root / "train" / "good" / "notes.txt").write_text("not an image")
    synth.write_image(root / "train" / "good" / "003.PNG", synth.grey())
    assert _names(open_dataset(root).train) == ["000.png", "001.png", "002.png", "003.PNG"]


# ---------------------------------------------------------------- LOCO


def test_loco_lists_every_mask_and_keeps_types_apart(tmp_path: Path) -> None:
    root = synth.make_loco(tmp_path / "breakfast_box")
    data = open_dataset(root)
    assert data.name == "loco" and len(data.train) == 3 and len(data.validation) == 2
    assert Counter(s.defect_type for s in data.test) == {"good": 2, "logical_anomalies": 2, "structural_anomalies": 2}
    logical = [s for s in data.test if s.defect_type == "logical_anomalies"]
    assert all(len(s.mask_paths) == 2 for s in logical)
    assert read_mask(logical[0], (6, 9)).sum() == 2  # both defect masks OR-ed
    config = loco_defects_config(root)
    assert config["extra_item"].pixel_value == 239 and config["missing_box"].relative_saturation is True


def test_loco_missing_mask_folder(tmp_path: Path) -> None:
    root = synth.make_loco(tmp_path / "pushpins")
    shutil.rmtree(root / "ground_truth" / "structural_anomalies" / "001")
    with pytest.raises(InputError, match=re.escape(str(root / "ground_truth" / "structural_anomalies" / "001"))):
        open_dataset(root)


def test_loco_bad_defects_config(tmp_path: Path) -> None:
    root = synth.make_loco(tmp_path / "pushpins")
    (root / "defects_config.json").write_text("[{")
    with pytest.raises(InputError, match=r"defects_config\.json"):
        loco_defects_config(root)
    assert loco_defects_config(tmp_path) == {}
    entry = {"defect_name": "a", "pixel_value": 255, "saturation_threshold": 0.5, "relative_saturation": True}
    for bad, match in (
        ([entry, {**entry, "defect_name": "b"}], "pixel_value 255 is used by two"),
        ([entry, {**entry, "pixel_value": 7}], "name 'a' is used by two"),
        ([{**entry, "saturation_threshold": 0}], "saturation_threshold > 0"),
        ([{**entry, "pixel_value": None}], "invalid defect entry"),
    ):
        (root / "defects_config.json").write_text(json.dumps(bad))
        with pytest.raises(InputError, match=match):
            loco_defects_config(root)


def test_loco_defects_one_per_mask_file_with_its_config_entry(tmp_path: Path) -> None:
    root = synth.make_loco_textured(tmp_path / "box")
    data, config = open_dataset(root), loco_defects_config(root)
    by_name = {(Path(s.path).parent.name, Path(s.path).stem): s for s in data.test}
    sample = by_name[("logical_anomalies", "001")]
    masks, entries = read_loco_defects(sample, config)
    assert masks.shape == (2, 36, 48) and [d.name for d in entries] == ["missing_part", "extra_part"]
    assert [int(m.sum()) for m in masks] == [9 * 12, 8 * 14] and not (masks[0] & masks[1]).any()
    assert np.array_equal(masks.any(axis=0), read_mask(sample))
    empty_too = by_name[("structural_anomalies", "001")]  # 000.png holds the defect, 001.png is all zero
    assert len(empty_too.mask_paths) == 2 and [d.name for d in read_loco_defects(empty_too, config)[1]] == ["scratch"]
    good_masks, good_entries = read_loco_defects(by_name[("good", "000")], config)
    assert good_masks.shape == (0, 36, 48) and good_entries == []


def test_loco_defect_mask_errors_name_the_file(tmp_path: Path) -> None:
    root = synth.make_loco_textured(tmp_path / "box")
    config = loco_defects_config(root)
    sample = next(s for s in open_dataset(root).test if s.defect_type == "structural_anomalies")
    gt = np.zeros((36, 48), np.uint8)
    gt[0, 0] = 77  # declared by no entry
    synth.write_image(Path(sample.mask_paths[0]), gt)
    with pytest.raises(InputError, match=re.escape(sample.mask_paths[0]) + ".*pixel value 77"):
        read_loco_defects(sample, config)
    with pytest.raises(InputError, match=r"no defects_config\.json entries given"):
        read_loco_defects(sample, {})
    gt[0, 1] = 255
    synth.write_image(Path(sample.mask_paths[0]), gt)
    with pytest.raises(InputError, match="several defect pixel values"):
        read_loco_defects(sample, config)
    synth.write_image(Path(sample.mask_paths[0]), np.zeros((30, 48), np.uint8))
    with pytest.raises(InputError, match="is 48x30 but image"):
        read_loco_defects(sample, config)


# ---------------------------------------------------------------- VisA


def test_visa_raw_official_split(tmp_path: Path) -> None:
    root = synth.make_visa_raw(tmp_path / "VisA")
    data = open_dataset(root, category="candle")
    assert (data.name, data.category, data.has_masks) == ("visa", "candle", True)
    assert _names(data.train) == [f"{i:04d}.JPG" for i in range(7)]  # from the csv, sorted
    assert Counter(s.label for s in data.test) == {0: 3, 1: 3}
    bad = [s for s in data.test if s.label == 1]
    assert all(len(s.mask_paths) == 1 and s.defect_type == "bad" for s in bad)
    assert read_mask(bad[0], (8, 10)).sum() == 6  # label value 1 binarised > 0
    assert read_image(data.train[0]).shape == (8, 10, 3)
    assert open_dataset(root / "candle") == data  # the raw category folder finds ../split_csv


def test_visa_upstream_80_20(tmp_path: Path) -> None:
    root = synth.make_visa_raw(tmp_path / "VisA")
    data = open_dataset(root, category="candle", split="upstream_80_20")
    assert _names(data.train) == [f"{i:04d}.JPG" for i in range(8)]  # first 80 % of the sorted listing
    assert _names([s for s in data.test if s.label == 0]) == ["0008.JPG", "0009.JPG"]
    assert sum(s.label for s in data.test) == 3


def test_visa_category_required_and_checked(tmp_path: Path) -> None:
    root = synth.make_visa_raw(tmp_path / "VisA")
    with pytest.raises(ConfigError, match="candle, pcb1"):
        open_dataset(root)
    with pytest.raises(ConfigError, match="candle, pcb1"):
        open_dataset(root, category="cashew")
    with pytest.raises(ConfigError, match="split"):
        open_dataset(root, category="candle", split="80_20")


def test_visa_csv_pointing_to_missing_file(tmp_path: Path) -> None:
    root = synth.make_visa_raw(tmp_path / "VisA")
    (root / "candle" / "Data" / "Masks" / "Anomaly" / "001.png").unlink()
    with pytest.raises(InputError, match=r"1cls\.csv line \d+: file not found: .*001\.png"):
        open_dataset(root, category="candle")


def test_visa_converted_tree(tmp_path: Path) -> None:
    root = synth.make_visa_converted(tmp_path / "visa_pytorch" / "candle")
    data = open_dataset(root.parent, layout="visa", category="candle")
    assert data.name == "visa" and len(data.train) == 3
    bad = [s for s in data.test if s.label == 1]
    assert [Path(m).name for m in bad[0].mask_paths] == ["000.png"]  # <stem>.png, no _mask suffix
    assert open_dataset(root).name == "mvtec"  # auto-detection sees an MVTec tree


# ---------------------------------------------------------------- DAGM


def test_dagm_train_excludes_defects_and_test_uses_labels(tmp_path: Path) -> None:
    synth.make_dagm(tmp_path / "DAGM" / "Class1")
    data = open_dataset(tmp_path / "DAGM", category="Class1")
    assert (data.name, data.category, data.has_masks) == ("dagm", "Class1", True)
    assert _names(data.train) == ["0001.PNG", "0002.PNG", "0004.PNG"]
    assert [(Path(s.path).name, s.label) for s in data.test] == [
        ("0005.PNG", 0), ("0006.PNG", 1), ("0007.PNG", 0), ("0008.PNG", 1),
    ]  # fmt: skip
    assert Path(data.test[1].mask_paths[0]).name == "0006_label.PNG"
    assert read_mask(data.test[1], (12, 12)).sum() == 6
    assert open_dataset(tmp_path / "DAGM" / "Class1") == data


def test_dagm_without_labels_txt_uses_label_images(tmp_path: Path) -> None:
    root = synth.make_dagm(tmp_path / "Class2")
    (root / "Test" / "Label" / "Labels.txt").unlink()
    assert [s.label for s in open_dataset(root).test] == [0, 1, 0, 1]


def test_dagm_root_needs_category_and_bad_rows_fail(tmp_path: Path) -> None:
    synth.make_dagm(tmp_path / "DAGM" / "Class1")
    synth.make_dagm(tmp_path / "DAGM" / "Class2")
    with pytest.raises(ConfigError, match="Class1, Class2"):
        open_dataset(tmp_path / "DAGM")
    labels = tmp_path / "DAGM" / "Class2" / "Test" / "Label" / "Labels.txt"
    labels.write_text(labels.read_text() + "garbage line here\n")
    with pytest.raises(InputError, match=r"Labels\.txt line 6"):
        open_dataset(tmp_path / "DAGM", category="Class2")


def test_dagm_flagged_image_without_mask(tmp_path: Path) -> None:
    root = synth.make_dagm(tmp_path / "Class3")
    (root / "Test" / "Label" / "0008_label.PNG").unlink()
    with pytest.raises(InputError, match=r"0008_label\.PNG"):
        open_dataset(root)


# ---------------------------------------------------------------- class folders, CIFAR, MNIST idx


def test_classfolder_synthetic(tmp_path: Path) -> None:
    root = synth.make_classfolder(tmp_path / "animals")
    data = open_dataset(root, normal_class=1)
    assert (data.name, data.category) == ("classfolder", "dog")
    assert len(data.train) == 3 and [s.label for s in data.test] == [1, 1, 0, 0, 1, 1]
    assert [s.defect_type for s in data.test] == ["cat", "cat", "dog", "dog", "fox", "fox"]
    with pytest.raises(ConfigError, match="cat, dog, fox"):
        open_dataset(root, normal_class="wolf")
    with pytest.raises(ConfigError, match="empty list"):
        open_dataset(root, normal_class=[])


def test_cifar10_pickles(tmp_path: Path) -> None:
    synth.make_cifar10(tmp_path)
    data = open_dataset(tmp_path, normal_class="cat")
    assert (data.name, data.category) == ("cifar10", "cat")
    assert len(data.train) == 5 and len(data.test) == 20 and sum(s.label == 0 for s in data.test) == 2
    assert data.train[0].path.endswith("data_batch_1#3") and data.train[0].array.shape == (32, 32, 3)
    # channel-major rows → HWC: pixel (0, 0) is data[0], data[1024], data[2048]
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb") as handle:
        row = pickle.load(handle, encoding="bytes")[b"data"][3]
    sample = data.test[3]
    assert sample.path.endswith("test_batch#3") and list(sample.array[0, 0]) == [row[0], row[1024], row[2048]]
    assert read_image(sample).shape == (32, 32, 3)
    assert open_dataset(tmp_path / "cifar-10-batches-py", normal_class=3) == data


def test_cifar100_superclasses(tmp_path: Path) -> None:
    synth.make_cifar100(tmp_path)
    data = open_dataset(tmp_path / "cifar-100-python", normal_class=4)
    assert (data.name, data.category) == ("cifar100", "super4")
    assert len(data.train) == 2 and len(data.test) == 20 and sum(s.label == 0 for s in data.test) == 1


def test_cifar_pickle_with_foreign_globals_is_refused(tmp_path: Path) -> None:
    folder = synth.make_cifar10(tmp_path)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": Path("/etc")}, handle, protocol=2)  # any non-numpy global
    with pytest.raises(InputError, match=r"test_batch: refusing to load pathlib"):
        open_dataset(folder, normal_class=0)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path: Path, gz: bool) -> None:
    root = synth.make_mnist_idx(tmp_path / "MNIST" / "raw", gz=gz)
    data = open_dataset(tmp_path / "MNIST", normal_class="7")
    assert (data.name, data.category) == ("mnist", "7")
    assert len(data.train) == 3 and len(data.test) == 20 and sum(s.label == 0 for s in data.test) == 2
    suffix = ".gz" if gz else ""
    assert data.train[0].path == f"{root / ('train-images-idx3-ubyte' + suffix)}#7"
    assert data.train[0].array.shape == (28, 28) and read_image(data.train[0]).shape == (28, 28, 3)


def test_fashion_mnist_detected_by_name(tmp_path: Path) -> None:
    synth.make_mnist_idx(tmp_path / "fashion-mnist", gz=True)
    data = open_dataset(tmp_path / "fashion-mnist", normal_class="sandal")
    assert (data.name, data.category) == ("fmnist", "sandal")
    assert open_dataset(tmp_path / "fashion-mnist", layout="mnist", normal_class=5).name == "mnist"


def test_truncated_idx_file(tmp_path: Path) -> None:
    root = synth.make_mnist_idx(tmp_path / "mnist", gz=True)
    path = root / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-10]))
    with pytest.raises(InputError, match=re.escape(f"cannot read idx file {path}: size does not match")):
        open_dataset(root, normal_class=0)


# ---------------------------------------------------------------- folders and options


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=re.escape(f"folder not found: {tmp_path / 'nope'}")):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=re.escape(f"folder is empty: {tmp_path / 'empty'}")):
        open_dataset(tmp_path / "empty")


def test_no_images_in_train_good(tmp_path: Path) -> None:
    root = synth.make_mvtec(tmp_path / "cat")
    for p in (root / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(InputError, match=re.escape(f"no images found in {root / 'train' / 'good'}")):
        open_dataset(root)


def test_unknown_layout_and_category_errors(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match="cannot detect the dataset layout"):
        open_dataset(tmp_path / "stuff")
    synth.make_mvtec(tmp_path / "mv" / "bottle")
    synth.make_mvtec(tmp_path / "mv" / "cable")
    with pytest.raises(ConfigError, match="bottle, cable"):
        open_dataset(tmp_path / "mv")
    with pytest.raises(InputError, match="category folder not found"):
        open_dataset(tmp_path / "mv", category="screw")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layout": "nope"}, "unknown dataset layout"),
        ({"split": "upstream_80_20"}, "only defined for VisA"),
        ({"normal_class": 1}, "class-labelled datasets only"),
        ({"resize": 256}, "unknown open_dataset option"),
    ],
)
def test_option_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    root = synth.make_mvtec(tmp_path / "cat")
    with pytest.raises(ConfigError, match=message):
        open_dataset(root, **kwargs)


def test_listing_is_sorted_regardless_of_creation_order(tmp_path: Path) -> None:
    root = tmp_path / "cat"
    for name in ("b.png", "a-b.png", "a.png", "10.png", "2.png"):
        synth.write_image(root / "train" / "good" / name, synth.grey())
    synth.write_image(root / "test" / "good" / "x.png", synth.grey())
    train = open_dataset(root).train
    assert [s.path for s in train] == sorted(s.path for s in train)
    assert np.array_equal([s.label for s in train], np.zeros(5))
