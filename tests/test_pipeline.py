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
