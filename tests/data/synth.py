"""Tiny but faithful synthetic copies of the dataset layouts the readers accept (written into tmp_path)."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, array: np.ndarray, **save_kw: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save_kw)
    return path


def grey(h: int = 8, w: int = 10, value: int = 100) -> np.ndarray:
    return np.full((h, w), value, dtype=np.uint8)


def mask(h: int = 8, w: int = 10, value: int = 255) -> np.ndarray:
    out = np.zeros((h, w), dtype=np.uint8)
    out[2:4, 3:6] = value
    return out


def make_mvtec(root: Path, *, with_gt: bool = True, image_ext: str = ".png") -> Path:
    """<root>/train/good x3, test/good x2, test/crack x2 (+ ground_truth/crack/<stem>_mask.png)."""
    for i in range(3):
        write_image(root / "train" / "good" / f"{i:03d}{image_ext}", grey())
    for i in range(2):
        write_image(root / "test" / "good" / f"{i:03d}{image_ext}", grey())
        write_image(root / "test" / "crack" / f"{i:03d}{image_ext}", grey(value=200))
        if with_gt:
            write_image(root / "ground_truth" / "crack" / f"{i:03d}_mask.png", mask())
    return root


def make_loco(root: Path) -> Path:
    """One LOCO category: 3 train, 2 validation, test 2 good + 2 logical + 2 structural, several masks."""
    for i in range(3):
        write_image(root / "train" / "good" / f"{i:03d}.png", grey(6, 9))
    for i in range(2):
        write_image(root / "validation" / "good" / f"{i:03d}.png", grey(6, 9))
        write_image(root / "test" / "good" / f"{i:03d}.png", grey(6, 9))
        for kind, n_masks in (("logical_anomalies", 2), ("structural_anomalies", 1)):
            write_image(root / "test" / kind / f"{i:03d}.png", grey(6, 9, 50))
            for m in range(n_masks):
                gt = np.zeros((6, 9), dtype=np.uint8)
                gt[m, m] = 255 if m == 0 else 239  # LOCO gives each defect its own pixel value
                write_image(root / "ground_truth" / kind / f"{i:03d}" / f"{m:03d}.png", gt)
    config = [
        {"defect_name": "missing_box", "pixel_value": 255, "saturation_threshold": 1.0, "relative_saturation": True},
        {"defect_name": "extra_item", "pixel_value": 239, "saturation_threshold": 200, "relative_saturation": False},
    ]
    (root / "defects_config.json").write_text(json.dumps(config))
    return root


#: defects_config.json of ``make_loco_textured``: relative rules and absolute pixel counts.
LOCO_TEXTURED_CONFIG = [
    {"defect_name": "missing_part", "pixel_value": 255, "saturation_threshold": 1.0, "relative_saturation": True},
    {"defect_name": "extra_part", "pixel_value": 239, "saturation_threshold": 60, "relative_saturation": False},
    {"defect_name": "scratch", "pixel_value": 200, "saturation_threshold": 0.5, "relative_saturation": True},
    {"defect_name": "speck", "pixel_value": 180, "saturation_threshold": 50, "relative_saturation": False},
]
#: (test folder, image index, [(pixel value, (y0, y1, x0, x1)), ...]) of ``make_loco_textured`` (36 x 48 images)
LOCO_TEXTURED_DEFECTS = [
    ("logical_anomalies", 0, [(255, (5, 14, 6, 18)), (239, (18, 26, 24, 38))]),
    ("logical_anomalies", 1, [(255, (22, 31, 5, 17)), (239, (4, 12, 30, 44))]),
    ("structural_anomalies", 0, [(200, (12, 20, 12, 28)), (180, (10, 11, 10, 11))]),  # 1 px: gone at 24x24
    ("structural_anomalies", 1, [(200, (24, 31, 31, 42))]),
]


def make_loco_textured(root: Path, *, strength: float = 9.0, seed: int = 0) -> Path:
    """A 36 x 48 LOCO category a small CNN can partly score: noisy texture, defects painted ``strength`` grey
    levels brighter (faint enough that maps overlap, so saturation rules change the numbers).

    8 train, 3 validation, 3 test good; the anomalous images of ``LOCO_TEXTURED_DEFECTS``, one mask file per
    defect carrying its pixel value, plus an all-zero mask file (no defect) for structural image 001.
    """
    rng = np.random.default_rng(seed)
    hw = (36, 48)

    def texture() -> np.ndarray:
        return np.array([90, 120, 80], np.float32) + rng.normal(0, 12, (*hw, 3)).astype(np.float32)

    def save(path: Path, img: np.ndarray) -> None:
        write_image(path, np.clip(img, 0, 255).astype(np.uint8))

    for split, n in (("train", 8), ("validation", 3), ("test", 3)):
        for i in range(n):
            save(root / split / "good" / f"{i:03d}.png", texture())
    for kind, i, defects in LOCO_TEXTURED_DEFECTS:
        img = texture()
        for m, (value, (y0, y1, x0, x1)) in enumerate(defects):
            img[y0:y1, x0:x1] += strength
            gt = np.zeros(hw, np.uint8)
            gt[y0:y1, x0:x1] = value
            write_image(root / "ground_truth" / kind / f"{i:03d}" / f"{m:03d}.png", gt)
        save(root / "test" / kind / f"{i:03d}.png", img)
    write_image(root / "ground_truth" / "structural_anomalies" / "001" / "001.png", np.zeros(hw, np.uint8))
    (root / "defects_config.json").write_text(json.dumps(LOCO_TEXTURED_CONFIG))
    return root


def make_visa_raw(root: Path, n_normal: int = 10, n_anomaly: int = 3) -> Path:
    """VisA download: candle with Normal/Anomaly JPGs, integer-label masks, split_csv/1cls.csv (+ pcb1)."""
    rows = ["object,split,label,image,mask"]
    for cat in ("candle", "pcb1"):
        data = root / cat / "Data"
        count = n_normal if cat == "candle" else 2
        for i in range(count):
            write_image(data / "Images" / "Normal" / f"{i:04d}.JPG", np.full((8, 10, 3), 90, np.uint8))
        for i in range(n_anomaly if cat == "candle" else 1):
            write_image(data / "Images" / "Anomaly" / f"{i:03d}.JPG", np.full((8, 10, 3), 150, np.uint8))
            write_image(data / "Masks" / "Anomaly" / f"{i:03d}.png", mask(value=i + 1))  # labels 1, 2, …
        # official split: unsorted rows, train = all but the last 3 normals (differs from the 80 % rule)
        for i in reversed(range(count)):
            split = "train" if i < count - 3 else "test"
            rows.append(f"{cat},{split},normal,{cat}/Data/Images/Normal/{i:04d}.JPG,")
        for i in range(n_anomaly if cat == "candle" else 1):
            rows.append(f"{cat},test,anomaly,{cat}/Data/Images/Anomaly/{i:03d}.JPG,{cat}/Data/Masks/Anomaly/{i:03d}.png")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def make_visa_converted(root: Path) -> Path:
    """anomalib's converted VisA tree: train/good, test/{good,bad}, ground_truth/bad/<stem>.png."""
    for i in range(3):
        write_image(root / "train" / "good" / f"{i:04d}.JPG", np.full((8, 10, 3), 90, np.uint8))
    write_image(root / "test" / "good" / "0003.JPG", np.full((8, 10, 3), 90, np.uint8))
    write_image(root / "test" / "bad" / "000.JPG", np.full((8, 10, 3), 150, np.uint8))
    write_image(root / "ground_truth" / "bad" / "000.png", mask())
    return root


DAGM_LABELS_HEADER = "1\n"


def make_dagm(root: Path) -> Path:
    """Class1 with Train (4 images, #3 defective) and Test (4 images, #6 and #8 defective)."""
    for half, first, defective in (("Train", 1, {3}), ("Test", 5, {6, 8})):
        lines = [DAGM_LABELS_HEADER.strip()]
        for index, number in enumerate(range(first, first + 4), start=1):
            name = f"{number:04d}.PNG"
            write_image(root / half / name, grey(12, 12))
            if number in defective:
                write_image(root / half / "Label" / f"{number:04d}_label.PNG", mask(12, 12))
                lines.append(f"{index}\t1\t{name}\t0\t{number:04d}_label.PNG")
            else:
                lines.append(f"{index}\t0\t{name}\t0\t0")
        (root / half / "Label").mkdir(parents=True, exist_ok=True)
        (root / half / "Label" / "Labels.txt").write_text("\n".join(lines) + "\n")
    return root


def make_classfolder(
    root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), n_train: int = 3, n_test: int = 2
) -> Path:
    for c in classes:
        for i in range(n_train):
            write_image(root / "train" / c / f"{i}.png", grey(4, 4))
        for i in range(n_test):
            write_image(root / "test" / c / f"{i}.png", grey(4, 4))
    return root


def _cifar_batch(labels: list[int], label_key: bytes, seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    return {b"batch_label": b"synthetic", label_key: labels, b"data": data,
            b"filenames": [f"{i}.png".encode() for i in range(len(labels))]}


def _dump(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        pickle.dump(obj, handle, protocol=2)  # the official files are python-2 (protocol 2) pickles


def make_cifar10(root: Path) -> Path:
    """cifar-10-batches-py: 5 train batches of 10 images (one per class), test batch of 20 (two per class)."""
    folder = root / "cifar-10-batches-py"
    for b in range(1, 6):
        _dump(folder / f"data_batch_{b}", _cifar_batch(list(range(10)), b"labels", b))
    _dump(folder / "test_batch", _cifar_batch([i % 10 for i in range(20)], b"labels", 9))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return folder


def make_cifar100(root: Path) -> Path:
    """cifar-100-python: train 40 images (2 per superclass), test 20 (1 per superclass)."""
    folder = root / "cifar-100-python"
    for name, coarse in (("train", [i % 20 for i in range(40)]), ("test", list(range(20)))):
        batch = _cifar_batch(coarse, b"coarse_labels", len(coarse))
        batch[b"fine_labels"] = [5 * c for c in coarse]
        _dump(folder / name, batch)
    _dump(folder / "meta", {b"coarse_label_names": [f"super{i}".encode() for i in range(20)],
                            b"fine_label_names": [f"fine{i}".encode() for i in range(100)]})
    return folder


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the idx format: 0, 0, type 0x08, rank, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def make_mnist_idx(root: Path, *, gz: bool) -> Path:
    """train 30 images (3 per digit), test 20 (2 per digit), 28x28, as idx files (optionally gzipped)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 20)):
        labels = np.array([i % 10 for i in range(n)], dtype=np.uint8)
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            payload = idx_bytes(arr)
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (root / name).write_bytes(payload)
    return root


def make_dagm_textured(root: Path, classes: tuple[str, ...] = ("Class1", "Class2"), *, size: int = 64,
                       n_normal: int = 8, n_defect: int = 3, seed: int = 0) -> Path:
    """DAGM-layout classes of grey noise textures; defective images carry a bright ellipse (and its mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for cls in classes:
        number = 1
        for half in ("Train", "Test"):
            lines = [DAGM_LABELS_HEADER.strip()]
            for index in range(1, n_normal + n_defect + 1):
                name = f"{number:04d}.PNG"
                texture = (110 + 25 * rng.standard_normal((size, size))).clip(0, 255)
                if index > n_normal:
                    cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
                    ellipse = ((yy - cy) / 9.0) ** 2 + ((xx - cx) / 5.0) ** 2 <= 1.0
                    texture[ellipse] = 230
                    write_image(root / cls / half / "Label" / f"{number:04d}_label.PNG",
                                ellipse.astype(np.uint8) * 255)
                    lines.append(f"{index}\t1\t{name}\t0\t{number:04d}_label.PNG")
                else:
                    lines.append(f"{index}\t0\t{name}\t0\t0")
                write_image(root / cls / half / name, texture.astype(np.uint8))
                number += 1
            (root / cls / half / "Label").mkdir(parents=True, exist_ok=True)
            (root / cls / half / "Label" / "Labels.txt").write_text("\n".join(lines) + "\n")
    return root
