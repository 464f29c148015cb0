"""Image metrics: bit-exact agreement with scikit-learn, NaN for one class, strict threshold rule."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from generalad.errors import InputError
from generalad.metrics import average_precision, f1_max, image_auroc, image_metrics, threshold_metrics


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scores with many ties (few distinct levels) and labels with a random class balance."""
    n = int(rng.integers(2, 400))
    levels = int(rng.integers(1, 60))
    scores = rng.integers(0, levels, n) * 0.37 + rng.normal(0, 1) * (rng.random() < 0.5)
    labels = rng.random(n) < rng.uniform(0.05, 0.95)
    return scores.astype(rng.choice([np.float32, np.float64])), labels


def _sklearn_f1max(scores: np.ndarray, labels: np.ndarray) -> float:
    p, r, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        return float(np.nan_to_num(2 * p * r / (p + r)).max())


def test_equal_to_sklearn_on_random_data_with_ties() -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        s, y = _random_case(rng)
        if y.all() or not y.any():
            continue
        assert image_auroc(s, y) == roc_auc_score(y, s)  # bit for bit
        assert average_precision(s, y) == average_precision_score(y, s)
        assert f1_max(s, y) == pytest.approx(_sklearn_f1max(s, y), rel=1e-12, abs=1e-15)
        checked += 1
    assert checked > 200


def test_hand_computed_values() -> None:
    s = [0.9, 0.8, 0.8, 0.3, 0.1]
    y = [1, 0, 1, 0, 0]
    # pairs (pos, neg): 0.9 beats all 3; 0.8 ties one 0.8 (1/2) and beats 0.3 and 0.1 -> (3 + 2.5) / 6
    assert image_auroc(s, y) == pytest.approx(5.5 / 6)
    # step AP: recall 0.5 at precision 1, then recall 1 at precision 2/3 (tie collapsed)
    assert average_precision(s, y) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert f1_max(s, y) == pytest.approx(max(2 * 1 * 0.5 / 1.5, 2 * (2 / 3) / (2 / 3 + 1)))


def test_one_class_gives_nan_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for y in ([0, 0, 0], [1, 1, 1]):
            m = image_metrics([0.1, 0.5, 0.2], y)
            assert set(m) == {"image_auroc", "image_ap", "image_f1max"}
            assert all(math.isnan(v) for v in m.values())
        assert all(math.isnan(v) for v in f1_max([1.0], [1], return_threshold=True))


def test_f1_threshold_reproduces_the_optimum_with_strict_rule() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        s, y = _random_case(rng)
        if y.all() or not y.any():
            continue
        best, thr = f1_max(s, y, return_threshold=True)
        assert threshold_metrics(s, y, thr)["f1"] == pytest.approx(best, rel=1e-12)


def test_f1_threshold_minus_inf_when_everything_is_flagged() -> None:
    best, thr = f1_max([0.2, 0.3], [1, 0], return_threshold=True)
    # optimum: flag both (P = 1/2, R = 1, F1 = 2/3) vs flag 0.3 only (a normal image: F1 = 0)
    assert best == pytest.approx(2 / 3) and thr == -math.inf


def test_threshold_metrics_strict_rule_and_counts() -> None:
    s = [0.1, 0.5, 0.5, 0.7, 0.9]
    y = [0, 0, 1, 0, 1]
    m = threshold_metrics(s, y, 0.5)  # 0.5 is NOT above 0.5: only 0.7 and 0.9 are flagged
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (1, 1, 2, 1)
    assert m["tpr"] == 0.5 and m["fpr"] == pytest.approx(1 / 3)
    assert m["precision"] == 0.5 and m["f1"] == pytest.approx(0.5)
    assert m["rule"] == "score > threshold" and m["threshold"] == 0.5


def test_threshold_metrics_on_normal_only_calibration_data() -> None:
    m = threshold_metrics([0.1, 0.2, 0.3, 0.4], [0, 0, 0, 0], 0.25)
    assert m["fpr"] == 0.5 and m["n_anomalous"] == 0
    assert math.isnan(m["tpr"]) and m["f1"] == 0.0  # two false alarms, nothing to find
    nothing = threshold_metrics([0.1, 0.2], [0, 1], 5.0)
    assert math.isnan(nothing["precision"]) and nothing["tpr"] == 0.0


def test_accepts_torch_and_ints() -> None:
    torch = pytest.importorskip("torch")
    s = torch.tensor([0.2, 0.9, 0.4, 0.4])
    y = torch.tensor([0, 1, 1, 0])
    assert image_auroc(s, y) == roc_auc_score(y.numpy(), s.numpy())
    assert image_auroc([1, 2, 3], [False, True, True]) == 1.0


@pytest.mark.parametrize(
    "scores, labels, message",
    [
        ([0.1, float("nan")], [0, 1], "NaN"),
        ([0.1, 0.2], [0, 2], "0/1"),
        ([0.1, 0.2, 0.3], [0, 1], "3 scores"),
    ],
)
def test_bad_inputs_raise_one_line_errors(scores, labels, message) -> None:
    with pytest.raises(InputError, match=message) as err:
        image_auroc(scores, labels)
    assert "\n" not in str(err.value)
