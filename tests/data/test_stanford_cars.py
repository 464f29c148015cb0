"""Stanford Cars: torchvision's .mat layout (written with scipy in the real field layout) and a class-folder export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from generalad.data import open_dataset
from generalad.errors import InputError
from tests.data import synth

NAMES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Ram C/V Cargo Van Minivan 2012"]
_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")


def _annotations(rows: list[tuple[str, int]]) -> np.ndarray:
    """A 1×N MATLAB struct array like cars_train_annos.mat (class is 1-based)."""
    out = np.zeros((1, len(rows)), dtype=[(f, "O") for f in _FIELDS])
    for i, (fname, cls) in enumerate(rows):
        boxes = [np.array([[v]], dtype=np.uint16) for v in (1, 1, 5, 4)]
        out[0, i] = (*boxes, np.array([[cls]], dtype=np.uint8), np.array([fname]))
    return out


def make_cars(root: Path, *, test_annos_in_devkit: bool = False) -> Path:
    """torchvision root: stanford_cars/{devkit/, cars_train/, cars_test/, cars_test_annos_withlabels.mat}."""
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = np.empty((1, len(NAMES)), dtype=object)
    names[0, :] = NAMES
    scipy.io.savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    train = [(f"{i:05d}.jpg", i % 3 + 1) for i in range(1, 10)]  # 3 images per class
    test = [(f"{i:05d}.jpg", i % 3 + 1) for i in range(1, 7)]  # 2 per class
    for folder, rows in (("cars_train", train), ("cars_test", test)):
        for fname, _ in rows:
            synth.write_image(base / folder / fname, synth.grey(6, 8), quality=95)
    scipy.io.savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": _annotations(train)})
    test_dir = base / "devkit" if test_annos_in_devkit else base
    scipy.io.savemat(test_dir / "cars_test_annos_withlabels.mat", {"annotations": _annotations(test)})
    return root


@pytest.mark.parametrize("in_devkit", [False, True])
def test_cars_train_of_class_and_whole_test_set(tmp_path: Path, in_devkit: bool) -> None:
    root = make_cars(tmp_path / "cars", test_annos_in_devkit=in_devkit)
    data = open_dataset(root, normal_class=0)  # 0-based index = torchvision's label (.mat class 1)
    assert (data.name, data.category) == ("stanford_cars", NAMES[0])
    assert [Path(s.path).name for s in data.train] == ["00003.jpg", "00006.jpg", "00009.jpg"]
    assert [Path(s.path).name for s in data.test] == [f"{i:05d}.jpg" for i in range(1, 7)]
    assert [s.label for s in data.test] == [1, 1, 0, 1, 1, 0]
    assert all(Path(s.path).is_file() and s.path.split("/")[-2] in ("cars_train", "cars_test")
               for s in data.train + data.test)
    assert open_dataset(root / "stanford_cars", normal_class=NAMES[2]).category == NAMES[2]


def test_cars_class_outside_meta_and_missing_file(tmp_path: Path) -> None:
    root = make_cars(tmp_path / "cars")
    annos = root / "stanford_cars" / "devkit" / "cars_train_annos.mat"
    scipy.io.savemat(annos, {"annotations": _annotations([("00001.jpg", 7)])})
    with pytest.raises(InputError, match="classes outside 1..3"):
        open_dataset(root, normal_class=0)
    annos.unlink()
    with pytest.raises(InputError, match=f"Stanford Cars file not found: {annos}"):
        open_dataset(root, normal_class=0)


def test_cars_class_folder_export_uses_names_csv_order(tmp_path: Path) -> None:
    root = tmp_path / "export"
    for split in ("train", "test"):
        for name in NAMES:
            synth.write_image(root / "car_data" / "car_data" / split / name.replace("/", "-") / "a.jpg", synth.grey())
    assert open_dataset(root, layout="stanford_cars", normal_class=0).category == NAMES[0]  # sorted folders
    (root / "names.csv").write_text("\n".join(reversed(NAMES)) + "\n")  # names.csv order wins over sorting
    data = open_dataset(root, layout="stanford_cars", normal_class=0)
    assert data.category == "Ram C-V Cargo Van Minivan 2012" and len(data.train) == 1 and len(data.test) == 3
    assert [s.label for s in data.test] == [1, 1, 0]
    (root / "names.csv").write_text("Something Else\n")
    with pytest.raises(InputError, match="does not name the class folders"):
        open_dataset(root, layout="stanford_cars", normal_class=0)
