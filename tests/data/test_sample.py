"""Seeded subset protocols: hold-out, few-shot, leak-free contamination."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from generalad.data import Dataset, Sample, contaminate, sample_shots, split_holdout
from generalad.data.sample import sort_samples
from generalad.errors import ConfigError


def _samples(n: int, label: int = 0, prefix: str = "/d/train/good") -> list[Sample]:
    return [Sample(f"{prefix}/{i:03d}.png", label, "good" if label == 0 else "crack") for i in range(n)]


def _dataset(n_train: int = 10, n_good: int = 5, n_bad: int = 8) -> Dataset:
    test = _samples(n_good, 0, "/d/test/good") + _samples(n_bad, 1, "/d/test/crack")
    return Dataset("mvtec", "x", "/d", _samples(n_train), sort_samples(test), [], False)


def test_sort_key_orders_in_memory_indices_numerically() -> None:
    items = [Sample(f"/f/test_batch#{i}", 0) for i in (10, 2, 1)]
    assert [s.path for s in sort_samples(items)] == ["/f/test_batch#1", "/f/test_batch#2", "/f/test_batch#10"]


def test_split_holdout_is_deterministic_disjoint_and_sorted() -> None:
    samples = _samples(50)
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    kept, held = split_holdout(shuffled, fraction=0.1, min_count=5, seed=3)
    assert (kept, held) == split_holdout(samples, fraction=0.1, min_count=5, seed=3)  # listing order irrelevant
    assert len(held) == 5 and len(kept) == 45
    assert set(kept).isdisjoint(held) and set(kept) | set(held) == set(samples)
    assert kept == sorted(kept, key=lambda s: s.path) and held == sorted(held, key=lambda s: s.path)
    assert split_holdout(samples, seed=4)[1] != held  # the seed matters


def test_split_holdout_fraction_and_minimum() -> None:
    assert len(split_holdout(_samples(200), fraction=0.1, min_count=5)[1]) == 20
    assert len(split_holdout(_samples(70), fraction=0.1, min_count=5)[1]) == 7  # no float ceil surprise
    assert len(split_holdout(_samples(20), fraction=0.1, min_count=5)[1]) == 5  # the minimum wins


@pytest.mark.parametrize("n", [0, 1, 5])
def test_split_holdout_too_few_holds_out_nothing(n: int) -> None:
    samples = _samples(n)
    assert split_holdout(samples, fraction=0.1, min_count=5) == (samples, [])


@pytest.mark.parametrize("kwargs", [{"fraction": 1.0}, {"fraction": -0.1}, {"min_count": -1}])
def test_split_holdout_rejects_bad_options(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        split_holdout(_samples(10), **kwargs)


def test_sample_shots_random_is_seeded_sorted_subset() -> None:
    samples = _samples(20)
    shuffled = samples[::-1]
    shots = sample_shots(shuffled, 4, seed=10)
    assert shots == sample_shots(samples, 4, seed=10)
    assert len(shots) == 4 and len(set(shots)) == 4 and set(shots) <= set(samples)
    assert shots == sorted(shots, key=lambda s: s.path)
    assert len({tuple(sample_shots(samples, 4, seed=s)) for s in (0, 10, 20, 30, 40)}) > 1


def test_sample_shots_window_is_contiguous_and_wraps() -> None:
    samples = _samples(10)
    assert sample_shots(samples, 3, seed=4, mode="window") == samples[4:7]
    wrapped = sample_shots(samples, 4, seed=8, mode="window")  # indices 8, 9, 0, 1
    assert wrapped == [samples[0], samples[1], samples[8], samples[9]]
    assert sample_shots(samples, 10, seed=0, mode="window") == samples


@pytest.mark.parametrize(("shots", "mode"), [(0, "random"), (11, "random"), (2, "bogus")])
def test_sample_shots_rejects_bad_requests(shots: int, mode: str) -> None:
    with pytest.raises(ConfigError):
        sample_shots(_samples(10), shots, seed=0, mode=mode)  # type: ignore[arg-type]


def test_contaminate_moves_anomalies_out_of_test() -> None:
    data = _dataset()
    new, moved = contaminate(data, 3, seed=0)
    assert len(moved) == 3
    assert all(s.label == 1 and s.split == "train" for s in moved)
    test_paths = {s.path for s in new.test}
    assert not any(s.path in test_paths for s in moved)  # leak-free: never evaluated on a training image
    assert len(new.test) == len(data.test) - 3 and len(new.train) == len(data.train) + 3
    assert {s.path for s in moved} <= {s.path for s in new.train}
    assert new.train == sorted(new.train, key=lambda s: s.path)
    assert len(data.test) == 13 and len(data.train) == 10  # input untouched


def test_contaminate_is_deterministic_and_seeded() -> None:
    data = _dataset()
    first = contaminate(data, 4, seed=7)[1]
    assert first == contaminate(dataclasses.replace(data, test=data.test[::-1]), 4, seed=7)[1]
    assert any(contaminate(data, 4, seed=s)[1] != first for s in range(1, 5))


def test_contaminate_limits_and_modes() -> None:
    data = _dataset(n_bad=2)
    new, moved = contaminate(data, 0, seed=0)
    assert moved == [] and new.test == data.test
    new, moved = contaminate(data, 2, seed=0)
    assert all(s.label == 0 for s in new.test)
    with pytest.raises(ConfigError, match="only 2"):
        contaminate(data, 3, seed=0)
    with pytest.raises(ConfigError):
        contaminate(data, 1, seed=0, mode="paper_leaky")  # type: ignore[arg-type]


def test_contaminate_keeps_in_memory_arrays() -> None:
    pixels = np.zeros((2, 2), np.uint8)
    test = [Sample(f"/f/test_batch#{i}", 1, "cat", array=pixels) for i in range(3)]
    _, moved = contaminate(Dataset("cifar10", "dog", "/f", [], test, [], False), 2, seed=1)
    assert all(s.array is pixels for s in moved)
