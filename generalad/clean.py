"""Cleaning a training set that may contain anomalies, with InReaCh's channel statistics.

Every training image gets a nominality score from the channel construction (by default the fraction of its
patches that found a mutual nearest neighbour with the seeds, before filtering). Images whose score is a
robust outlier on the low side (below median − k·1.4826·MAD) are flagged; any model can then be fitted
without them (``generalad fit --exclude LIST``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from generalad.data import Sample
from generalad.errors import ConfigError
from generalad.io import atomic_write_text
from generalad.nn import inreach as ir

HIGH_IS_NOMINAL = {name for name, (direction, _) in ir.IMAGE_STAT_DOC.items() if direction.startswith("high")}


def rank_training_images(
    samples: Sequence[Sample], *, statistic: str = "any_mnn_fraction", k: float = 3.0, **inreach_options: Any
) -> list[dict[str, Any]]:
    """Records ``{path, nominality, flagged, rank}`` sorted from most to least suspicious."""
    from generalad.methods.inreach import InReaCh

    if statistic not in ir.IMAGE_STAT_DOC:
        raise ConfigError(f"unknown statistic {statistic!r}; choose one of: {', '.join(ir.IMAGE_STAT_DOC)}")
    model = InReaCh(**inreach_options)
    source = model._layout(samples)
    X = model.descriptors(model.extract(source))
    stats = ir.build_bank(X, model.config.channel_config()).image_stats
    value = np.asarray(stats[statistic], dtype=np.float64)
    nominality = value if statistic in HIGH_IS_NOMINAL else -value
    nominality = np.where(np.isfinite(nominality), nominality, np.nanmedian(nominality))  # order[0]: no data
    med = np.median(nominality)
    mad = 1.4826 * np.median(np.abs(nominality - med))
    flagged = nominality < med - k * max(mad, 1e-12)
    order = np.argsort(nominality, kind="stable")
    return [
        {"path": samples[i].path, "nominality": float(nominality[i]), "flagged": bool(flagged[i]), "rank": r}
        for r, i in enumerate(order)
    ]


def write_clean_list(records: list[dict[str, Any]], out: str | Path) -> Path:
    """LIST = flagged paths, one per line (what ``fit --exclude`` reads); LIST.ranking.tsv = everything."""
    out = Path(out)
    atomic_write_text(out, "".join(r["path"] + "\n" for r in records if r["flagged"]))
    rows = ["rank\tpath\tnominality\tflagged"] + [
        f"{r['rank']}\t{r['path']}\t{r['nominality']:.6g}\t{int(r['flagged'])}" for r in records
    ]
    atomic_write_text(out.with_name(out.name + ".ranking.tsv"), "\n".join(rows) + "\n")
    return out
