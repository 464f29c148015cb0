"""The generator's fusion map learns where the structure changed (docs/methods/anomalyhybrid.md §3, §7):
a few hundred steps on synthetic shapes make M concentrate on the warped region."""

from __future__ import annotations

import numpy as np
import torch

from generalad.methods.anomalyhybrid.augment import PairConfig, make_pairs
from generalad.methods.anomalyhybrid.structure import StructureSources
from generalad.methods.anomalyhybrid.train_gen import train_generator


def _shapes(n: int = 16, s: int = 32) -> torch.Tensor:
    rng = np.random.default_rng(0)
    imgs = np.full((n, 3, s, s), 0.3, dtype=np.float32)
    yy, xx = np.mgrid[:s, :s]
    for i in range(n):  # a few stripes and a disc: structure a TPS warp visibly bends
        imgs[i, :, (xx + 3 * i) % 8 < 2] = 0.9
        cy, cx = rng.integers(8, s - 8, 2)
        imgs[i, 1, (yy - cy) ** 2 + (xx - cx) ** 2 < 25] = 0.1
    x = torch.from_numpy(imgs)
    return torch.cat([x, StructureSources().maps(x)], dim=1)


def test_fusion_map_concentrates_on_the_warped_region(single_thread) -> None:
    stack = _shapes()
    cfg = PairConfig(p_tps=1.0, p_global=0.0, tps_box=(0.35, 0.6), tps_shift=0.6)
    gen, history = train_generator(
        stack, widths=(8, 16, 32, 64), decoders=("edges",), steps=250, batch_size=8, lr=1e-3,
        lambdas={"gan": 0.0, "l1": 10.0, "perceptual": 0.0, "mask": 1.0, "fusion": 0.0}, perceptual=None, seed=0,
        pair_config=cfg, log_every=50,
    )
    pairs = make_pairs(stack, torch.Generator().manual_seed(99), cfg)
    with torch.no_grad():
        out = gen(pairs["reference"][:, :3], pairs["reference"][:, 3:], pairs["target"][:, 3:])["edges"]
    m, changed = out["fusion"], pairs["changed"]
    inside = float((m * changed).sum() / changed.sum())
    outside = float((m * (1 - changed)).sum() / (1 - changed).sum())
    assert inside > 2 * outside, (inside, outside, history[-1])
    pred = m > m.flatten(1).quantile(1 - changed.mean().item(), dim=1).view(-1, 1, 1, 1)  # top-|R| pixels
    iou = float((pred & (changed > 0)).sum() / (pred | (changed > 0)).sum())
    chance = float(changed.mean()) / (2 - float(changed.mean()))  # IoU of a random set of the same size
    assert iou > chance + 0.1, (iou, chance)
