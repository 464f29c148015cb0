"""ARD's attention ablation on a validation signal built from TRAINING data only (docs/methods/ard.md §6).

The training normals are split (seeded) into a fitting part and a validation part; every validation normal
also gets a CutPaste-style synthetic defect (generalad.data.synthetic). Each configuration is fitted on
the fitting part and evaluated every 10 epochs on validation normals vs their defective copies (image AUROC,
pixel AUROC). Test images are never read. Prints a markdown table plus throughput, wall time and peak RSS.

    python benchmarks/ard_attention.py --data ../shared/data/magnetic_tile --image-size 128 --epochs 20
    python benchmarks/ard_attention.py --data ../shared/data/mnist_subset --normal-class 2 --image-size 32
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from generalad.data import split_holdout
from generalad.data.synthetic import pasted_defects
from generalad.device import cpu_model_name
from generalad.evaluate import peak_rss_mb
from generalad.io import atomic_write_text
from generalad.methods.rd import ARD
from generalad.pipeline import open_training

#: (label, options): RD4AD without attention at ARD's lr, then each module × placement
CONFIGS = [
    ("none", {"attn_at": "none"}),
    ("cbam@oce", {"attention": "cbam", "attn_at": "oce"}),
    ("cbam@mff", {"attention": "cbam", "attn_at": "mff"}),
    ("cbam@both", {"attention": "cbam", "attn_at": "both"}),
    ("se@oce", {"attention": "se", "attn_at": "oce"}),
    ("eca@oce", {"attention": "eca", "attn_at": "oce"}),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--category")
    ap.add_argument("--normal-class")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", help="comma-separated labels (default: all)")
    ap.add_argument("--cache-dir", default=".cache/features")
    ap.add_argument("--out", help="JSON file for the rows")
    args = ap.parse_args()

    run = open_training(args.data, category=args.category, normal_class=args.normal_class, seed=args.seed)
    fit_part, val = split_holdout(run.train, args.val_fraction, 5, args.seed)
    chosen = set(args.configs.split(",")) if args.configs else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        monitor = val + pasted_defects(val, tmp, seed=args.seed)
        for label, options in CONFIGS:
            if chosen and label not in chosen:
                continue
            model = ARD(backbone=args.backbone, image_size=args.image_size, epochs=args.epochs, seed=args.seed,
                        cache_dir=args.cache_dir, **options)
            t0 = time.perf_counter()
            model.fit(fit_part, monitor=monitor)
            wall = time.perf_counter() - t0
            checks = [(h["epoch"] + 1, h["monitor"]) for h in model.history_ if "monitor" in h]
            rows.append({"config": label, "final_loss": round(model.history_[-1]["loss"], 4), "checks": checks,
                         "fit_seconds": round(wall, 1), "train_images_per_s": round(
                             len(fit_part) * args.epochs / sum(h["seconds"] for h in model.history_), 1)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.data} {args.category or ''}{args.normal_class or ''}: {len(fit_part)} fit / {len(val)} validation "
          f"normals + {len(val)} pasted defects; teacher {args.backbone} (ImageNet), {args.image_size} px, "
          f"{args.epochs} epochs, lr {model.hparams.lr}; CPU {cpu_model_name()}; peak RSS {peak_rss_mb():.0f} MB\n")
    epochs = [e for e, _ in rows[0]["checks"]]
    print("| config | " + " | ".join(f"img / px AUROC @{e}" for e in epochs) + " | final loss | fit s |")
    print("|---|" + "---|" * (len(epochs) + 2))
    for r in rows:
        cells = [f"{m['image_auroc']:.3f} / {m.get('pixel_auroc', float('nan')):.3f}" for _, m in r["checks"]]
        print(f"| {r['config']} | " + " | ".join(cells) + f" | {r['final_loss']:.4f} | {r['fit_seconds']:.0f} |")
    if args.out:
        atomic_write_text(args.out, json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
