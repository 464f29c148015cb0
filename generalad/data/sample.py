"""``Sample`` and ``Dataset`` records plus the seeded subset protocols (hold-out, few-shot, contamination).

Every protocol works on the *sorted* sample list and a numpy ``default_rng(seed)``, so the chosen files depend
only on the file names and the seed, never on the filesystem's listing order (docs/PROTOCOLS.md §1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from generalad.errors import ConfigError


@dataclass(frozen=True)
class Sample:
    path: str  # file path; for in-memory sources "<source-file>#<index>"
    label: int  # 0 normal, 1 anomalous
    defect_type: str = "good"  # "good" for normal images; LOCO: "logical_anomalies"/"structural_anomalies"
    mask_paths: tuple[str, ...] = ()  # OR-ed together; empty → all-zero mask
    category: str = ""
    split: str = "test"  # "train" | "validation" | "test"
    depth_path: str = ""  # MVTec 3D-AD: the sample's xyz TIFF (organised point cloud); empty for 2-D datasets
    array: np.ndarray | None = field(default=None, compare=False, repr=False)  # in-memory pixels


@dataclass
class Dataset:
    name: str  # the layout that read it: "mvtec" | "loco" | "visa" | … | "cats_vs_dogs" (data.LAYOUTS)
    category: str
    root: str
    train: list[Sample]  # normal training images, sorted
    test: list[Sample]  # sorted
    validation: list[Sample]  # normal-only (LOCO validation/good); may be empty
    has_masks: bool


def sort_key(sample: Sample) -> tuple[str, int]:
    """Order by file, then by numeric in-file index, so "x#10" follows "x#9" for in-memory sources."""
    source, sep, index = sample.path.rpartition("#")
    if sep and index.isdigit():
        return (source, int(index))
    return (sample.path, -1)


def sort_samples(samples: Iterable[Sample]) -> list[Sample]:
    return sorted(samples, key=sort_key)


def split_holdout(
    samples: Sequence[Sample], fraction: float = 0.1, min_count: int = 5, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``max(min_count, round(fraction * n))`` samples (seeded) for calibration.

    When that would leave no sample for training, nothing is held out: ``(samples, [])``.
    Both returned lists are sorted.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"holdout fraction must be in [0, 1), got {fraction}")
    if min_count < 0:
        raise ConfigError(f"holdout min_count must be >= 0, got {min_count}")
    ordered = sort_samples(samples)
    n_hold = max(min_count, round(fraction * len(ordered)))
    if n_hold == 0 or n_hold >= len(ordered):
        return ordered, []
    chosen = set(np.random.default_rng(seed).choice(len(ordered), size=n_hold, replace=False).tolist())
    kept = [s for i, s in enumerate(ordered) if i not in chosen]
    held = [s for i, s in enumerate(ordered) if i in chosen]
    return kept, held


def sample_shots(
    samples: Sequence[Sample], shots: int, seed: int, mode: Literal["random", "window"] = "random"
) -> list[Sample]:
    """Few-shot training subset of ``shots`` samples, returned sorted (docs/methods/generalad.md §9).

    ``random``: seeded uniform choice without replacement from the sorted list (our default).
    ``window``: sorted indices ``seed … seed+shots-1`` modulo n — GeneralAD's parity mode.
    """
    ordered = sort_samples(samples)
    if shots < 1:
        raise ConfigError(f"shots must be >= 1, got {shots}")
    if shots > len(ordered):
        raise ConfigError(f"shots={shots} exceeds the {len(ordered)} available samples")
    if mode == "random":
        picked = np.random.default_rng(seed).choice(len(ordered), size=shots, replace=False).tolist()
    elif mode == "window":
        picked = [(seed + i) % len(ordered) for i in range(shots)]
    else:
        raise ConfigError(f"unknown few-shot mode {mode!r}: expected 'random' or 'window'")
    return [ordered[i] for i in sorted(picked)]


def contaminate(
    dataset: Dataset, n: int, seed: int, mode: Literal["anomalous_only"] = "anomalous_only"
) -> tuple[Dataset, list[Sample]]:
    """Leak-free contaminated training (docs/PROTOCOLS.md §2): move ``n`` anomalous test images into ``train``.

    The moved samples keep ``label=1`` and get ``split="train"``; they are REMOVED from ``test`` so no
    evaluated image was seen in training. The input dataset is not modified.
    """
    if mode != "anomalous_only":
        raise ConfigError(f"unknown contamination mode {mode!r}: only 'anomalous_only' is supported")
    if n < 0:
        raise ConfigError(f"contamination count must be >= 0, got {n}")
    anomalies = [s for s in sort_samples(dataset.test) if s.label == 1]
    if n > len(anomalies):
        raise ConfigError(
            f"cannot move {n} anomalous images into training: {dataset.root} has only {len(anomalies)}"
        )
    picked = np.random.default_rng(seed).choice(len(anomalies), size=n, replace=False).tolist()
    moved_originals = [anomalies[i] for i in sorted(picked)]
    gone = set(moved_originals)  # hashing ignores ``array`` (compare=False), paths are unique
    moved = [dataclasses.replace(s, split="train") for s in moved_originals]
    new = dataclasses.replace(
        dataset,
        train=sort_samples([*dataset.train, *moved]),
        test=[s for s in sort_samples(dataset.test) if s not in gone],
        validation=list(dataset.validation),
    )
    return new, moved
