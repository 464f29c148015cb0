"""Cleaning: ranking statistics, flag rules, the ``clean`` command and ``fit --exclude`` on real bottle data."""

import json
from pathlib import Path

import numpy as np
import pytest

from generalad.cli import main
from generalad.clean import STATISTICS, anomaly_scores, flag_outliers, rank_training_images, write_clean_list
from generalad.data import Sample, contaminate, open_dataset
from generalad.errors import ConfigError


def test_mad_rule_flags_only_the_high_outlier():
    scores = np.r_[np.linspace(1.0, 1.2, 30), 5.0]
    flags = flag_outliers(scores, k=3.0)
    assert flags.sum() == 1 and flags[-1]


def test_drop_fraction_flags_that_many_highest():
    scores = np.arange(20, dtype=float)
    flags = flag_outliers(scores, drop_fraction=0.1)
    assert flags.sum() == 2 and flags[-2:].all()
    assert not flag_outliers(scores, drop_fraction=0.0).any()
    with pytest.raises(ConfigError):
        flag_outliers(scores, drop_fraction=1.0)


def test_unknown_statistic_and_too_few_images_fail_clearly():
    samples = [Sample(path="a.png", label=0), Sample(path="b.png", label=0)]
    with pytest.raises(ConfigError, match="unknown statistic"):
        anomaly_scores(samples, "nope")
    with pytest.raises(ConfigError, match="at least 2"):
        anomaly_scores(samples[:1])
    with pytest.raises(ConfigError, match="does not take"):
        anomaly_scores(samples, "loo_distance", num_seeds=3)
    assert "loo_distance" in STATISTICS and "any_mnn_fraction" in STATISTICS
    # checked before any image is read: these two files do not exist
    with pytest.raises(ConfigError, match="drop_fraction"):
        rank_training_images(samples, drop_fraction=1.5)


def test_loo_ranks_real_contaminants_first(bottle_dir, tmp_path):
    ds, moved = contaminate(open_dataset(bottle_dir), 3, seed=0)
    records = rank_training_images(ds.train, backbone="efficientnet_lite0", image_size=160, drop_fraction=0.06)
    truth = {s.path for s in moved}
    assert {r["path"] for r in records[:3]} == truth  # the 3 defective bottles outrank all 50 normals
    assert [r["rank"] for r in records] == list(range(len(records)))
    assert sum(r["flagged"] for r in records) == 3
    out = write_clean_list(records, tmp_path / "flagged.txt")
    assert set(out.read_text().split()) == truth
    assert len(Path(str(out) + ".ranking.tsv").read_text().splitlines()) == len(records) + 1


def test_clean_command_reports_precision_recall_and_fit_excludes_list(bottle_dir, tmp_path, capsys):
    flagged = tmp_path / "flagged.txt"
    code = main(["clean", "--data", str(bottle_dir), "--backbone", "efficientnet_lite0", "--image-size", "160",
                 "--contaminate", "3", "--seed", "0", "--drop-fraction", "0.06", "--out", str(flagged)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["statistic"] == "loo_distance" and summary["n_flagged"] == 3
    assert summary["precision"] == 1.0 and summary["recall"] == 1.0
    run = tmp_path / "run"
    code = main(["fit", "--model", "patchcore", "--data", str(bottle_dir), "--backbone", "efficientnet_lite0",
                 "--image-size", "160", "--contaminate", "3", "--seed", "0", "--exclude", str(flagged),
                 "--out", str(run), "--quiet"])
    assert code == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["n_train"] + record["n_calibration"] == 50  # 50 normals + 3 moved − 3 excluded


def test_kth_image_unmasks_a_defect_shared_by_two_training_images(bottle_dir, tmp_path):
    # A defective bottle present twice (a copy under another name): with kth=1 each copy is the other's
    # neighbour and both look normal; kth=2 asks for a second image and ranks both copies with the others.
    ds, moved = contaminate(open_dataset(bottle_dir), 3, seed=0)
    twin = tmp_path / "twin.png"
    twin.write_bytes(Path(moved[0].path).read_bytes())
    samples = [*ds.train, Sample(path=str(twin), label=1)]
    suspects = {moved[0].path, str(twin)}
    options = {"backbone": "efficientnet_lite0", "image_size": 160}
    # exact nearest image (every patch in the bank), so the two copies see each other
    nearest = [r["path"] for r in rank_training_images(samples, kth=1, bank_ratio=1.0, **options)]
    second = [r["path"] for r in rank_training_images(samples, kth=2, **options)]
    assert not suspects & set(nearest[:4])
    assert set(second[:4]) == {s.path for s in moved} | suspects
    with pytest.raises(ConfigError, match="kth=2"):
        anomaly_scores(samples[:2], kth=2, **options)
    with pytest.raises(ConfigError, match="kth=0"):  # before any feature extraction
        anomaly_scores(samples, kth=0, **options)
