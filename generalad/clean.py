"""Cleaning a training set that may contain anomalies: rank training images, flag the likely anomalies.

Two families of statistics rank the images (``statistic``):

* ``loo_distance`` (default): PatchCore's own score for each training image with that image left out of the
  memory bank: the mean of its 1 % largest patch distances to the nearest patch of any *other* image
  (``generalad.nn.loo``). A defect that recurs in no other image stands out. With ``kth`` > 1 a patch is
  measured against its k-th nearest other image instead, so a defect shared by fewer than ``kth`` other
  images stands out too (exact per-image minima: ~N² cost, 10 min for 770 magnetic-tile images).
* InReaCh's channel statistics (``any_mnn_fraction``, ``nn_dist_max``, ... see ``IMAGE_STAT_DOC``): how
  well the image's patches joined channels of patches that recur across the seed images.

Flags: images whose anomaly score is a robust outlier on the high side (above median + k·1.4826·MAD), or,
when the contamination rate is roughly known, the ``drop_fraction`` most suspicious images. Any model can
then be fitted without them (``generalad fit --exclude LIST``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from generalad.data import Sample
from generalad.errors import ConfigError
from generalad.io import atomic_write_text
from generalad.methods.inreach import channels as ir

LOO = "loo_distance"
STATISTICS = {
    LOO: ("high = anomalous", "mean of the image's top 1 % patch distances to all other training images"),
    **ir.IMAGE_STAT_DOC,
}
#: the feature-extractor options cleaning takes (the CLI's flags of the same names)
BACKBONE_OPTIONS = ("backbone", "weights", "image_size", "precision", "device", "cache_dir", "seed")


def anomaly_scores(samples: Sequence[Sample], statistic: str = LOO, **options: Any) -> np.ndarray:
    """(N,) per-image anomaly score from one statistic, higher = more suspicious (NaN → the median)."""
    if statistic not in STATISTICS:
        raise ConfigError(f"unknown statistic {statistic!r}; choose one of: {', '.join(STATISTICS)}")
    if len(samples) < 2:
        raise ConfigError(f"cleaning needs at least 2 training images, got {len(samples)}")
    if statistic == LOO:
        value = _loo_scores(samples, **options)
    else:
        value = _channel_statistic(samples, statistic, **options)
    value = np.asarray(value, dtype=np.float64)
    if STATISTICS[statistic][0].startswith("high = nominal"):
        value = -value
    return np.where(np.isfinite(value), value, np.nanmedian(value))  # InReaCh's order[0] has no data


def _loo_scores(
    samples: Sequence[Sample], *, top_fraction: float = 0.01, bank_ratio: float | None = None, kth: int = 1,
    **options: Any,
) -> np.ndarray:
    """kth = 1: one coreset of all patches (10 %). kth > 1 needs per-image minima: every patch of every image
    (bank_ratio 1.0, exact) unless ``bank_ratio`` says otherwise."""
    from generalad.methods.patchcore import PatchCore
    from generalad.nn.loo import image_scores_from_patches, kth_image_distances, leave_one_out_distances

    unknown = set(options) - set(BACKBONE_OPTIONS)
    if unknown:
        raise ConfigError(f"loo_distance does not take option(s) {', '.join(sorted(unknown))}")
    if not 1 <= kth < len(samples):  # checked before the (slow) feature extraction
        raise ConfigError(f"kth={kth} must be >= 1 and below the number of training images, {len(samples)}")
    model = PatchCore(**options)
    patches, _ = model.patches(model.extract(list(samples)))
    seed = model.config.seed
    ratio = bank_ratio if bank_ratio is not None else 0.1 if kth == 1 else 1.0
    if kth == 1:
        distances = leave_one_out_distances(patches, bank_ratio=ratio, seed=seed)
    else:
        bf16 = model.precision == "bf16"  # resolved: "auto" → the device's faster one
        distances = kth_image_distances(patches, bank_ratio=ratio, kth=kth, seed=seed, bf16=bf16)
    return image_scores_from_patches(distances, top_fraction=top_fraction)


def _channel_statistic(samples: Sequence[Sample], statistic: str, **options) -> np.ndarray:
    from generalad.methods.inreach import InReaCh

    model = InReaCh(**options)
    X = model.descriptors(model.extract(model.prepare(list(samples))))
    return ir.build_bank(X, model.config.channel_config()).image_stats[statistic]


def flag_outliers(scores: np.ndarray, *, k: float = 3.0, drop_fraction: float | None = None) -> np.ndarray:
    """Boolean flags: score > median + k·1.4826·MAD, or the ``drop_fraction`` highest scores when given."""
    scores = np.asarray(scores, dtype=np.float64)
    _check_drop_fraction(drop_fraction)
    if drop_fraction is not None:
        n_drop = int(round(drop_fraction * scores.size))
        flags = np.zeros(scores.size, dtype=bool)
        flags[np.argsort(-scores, kind="stable")[:n_drop]] = True
        return flags
    med = np.median(scores)
    mad = 1.4826 * np.median(np.abs(scores - med))
    return scores > med + k * max(mad, 1e-12)


def _check_drop_fraction(drop_fraction: float | None) -> None:
    if drop_fraction is not None and not 0 <= drop_fraction < 1:
        raise ConfigError(f"drop_fraction must be in [0, 1), got {drop_fraction}")


def rank_training_images(
    samples: Sequence[Sample], *, statistic: str = LOO, k: float = 3.0, drop_fraction: float | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Records ``{path, anomaly_score, flagged, rank}`` sorted from most to least suspicious.

    ``options`` configure the feature extractor (backbone, weights, image_size, cache_dir, seed, ...).
    """
    _check_drop_fraction(drop_fraction)  # before the (minutes-long) scoring, not after
    scores = anomaly_scores(samples, statistic, **options)
    flagged = flag_outliers(scores, k=k, drop_fraction=drop_fraction)
    order = np.argsort(-scores, kind="stable")
    return [
        {"path": samples[i].path, "anomaly_score": float(scores[i]), "flagged": bool(flagged[i]), "rank": r}
        for r, i in enumerate(order)
    ]


def write_clean_list(records: list[dict[str, Any]], out: str | Path) -> Path:
    """LIST = flagged paths, one per line (what ``fit --exclude`` reads); LIST.ranking.tsv = everything."""
    out = Path(out)
    atomic_write_text(out, "".join(r["path"] + "\n" for r in records if r["flagged"]))
    rows = ["rank\tpath\tanomaly_score\tflagged"] + [
        f"{r['rank']}\t{r['path']}\t{r['anomaly_score']:.6g}\t{int(r['flagged'])}" for r in records
    ]
    atomic_write_text(out.with_name(out.name + ".ranking.tsv"), "\n".join(rows) + "\n")
    return out
