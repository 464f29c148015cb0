"""The run pipeline (generalad.pipeline): contamination → exclusion → shots → calibration set, run info."""

from __future__ import annotations

from pathlib import Path

import pytest

from generalad.demo import make_synthetic_category
from generalad.errors import InputError
from generalad.pipeline import open_training, read_path_list


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synthetic_category(tmp_path_factory.mktemp("pipe") / "s", n_train=30, n_good=4, n_per_defect=2,
                                   size=32)


def test_every_shot_trains_and_calibration_comes_from_other_normals(data: Path) -> None:
    run = open_training(data, shots=8, seed=1)
    train = {s.path for s in run.train}
    calibration = {s.path for s in run.calibration}
    assert len(train) == 8 and len(calibration) == 5  # 10 % of the 22 others, at least 5
    assert not train & calibration
    assert all(s.split == "train" and s.label == 0 for s in run.calibration)
    assert open_training(data, shots=8, seed=1).calibration == run.calibration  # seeded
    assert run.info["shots"] == 8 and run.info["shots_mode"] == "random"


def test_without_shots_the_estimator_holds_out(data: Path) -> None:
    run = open_training(data)
    assert run.calibration is None and len(run.train) == 30


def test_contamination_then_exclusion(data: Path, tmp_path: Path) -> None:
    run = open_training(data, contaminate_n=3, seed=0)
    moved = {s.path for s in run.contaminants}
    assert len(moved) == 3 and moved <= {s.path for s in run.train}
    assert not moved & {s.path for s in run.dataset.test}  # leak-free
    listing = tmp_path / "flagged.txt"
    listing.write_text("# flagged\n" + "".join(f"{p}\t0.9\n" for p in sorted(moved)))
    assert read_path_list(listing) == moved
    cleaned = open_training(data, contaminate_n=3, seed=0, exclude=listing)
    assert len(cleaned.train) == 30 and cleaned.info["excluded"] == sorted(moved)
    assert cleaned.info["contaminated_with"] == sorted(moved) or set(cleaned.info["contaminated_with"]) == moved
    with pytest.raises(InputError, match="cannot read exclude list"):
        open_training(data, exclude=tmp_path / "missing.txt")


def test_few_shot_patchcore_on_real_bottles(bottle_dir: Path) -> None:
    """Real data: 8 bottle shots all train, the threshold comes from 5 other training normals, and the
    few-shot model still separates broken bottles (EfficientNet-Lite0 ImageNet weights, CPU)."""
    from generalad.methods import get_method
    from generalad.metrics import image_auroc
    from generalad.pipeline import fit_on

    run = open_training(bottle_dir, shots=8, seed=0)
    model = fit_on(get_method("patchcore")(backbone="efficientnet_lite0", device="cpu"), run)
    assert model.fit_info_["n_train"] == 8 and model.fit_info_["n_calibration"] == len(run.calibration) == 5
    assert not set(model.train_files_) & set(model.calibration_files_)
    assert model.describe()["device"] == "cpu" and model.describe()["precision_setting"] == "auto"
    labels = [s.label for s in run.dataset.test]
    assert image_auroc(model.score(run.dataset.test), labels) > 0.9
