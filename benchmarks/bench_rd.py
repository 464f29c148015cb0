"""RD / ARD student speed: training steps and inference per precision, measured in one run (ratios comparable).

Random teacher-shaped maps (the teacher is cached in real fits, so an epoch is the student's forward and
backward only); EfficientNet-Lite0 (24/40/112 ch) or any teacher of generalad.methods.rd.config.TEACHERS.

    python benchmarks/bench_rd.py --size 256 --attn-at both
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from generalad.device import autocast, cpu_model_name
from generalad.evaluate import peak_rss_mb
from generalad.methods.rd.config import student_spec
from generalad.methods.rd.core import distance_maps, distillation_loss
from generalad.methods.rd.modules import Student

CHANNELS = {"efficientnet_lite0": (24, 40, 112), "resnet18": (64, 128, 256), "resnet34": (64, 128, 256),
            "wide_resnet50_2": (256, 512, 1024)}


def _rate(fn, n_images: int, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return n_images * repeats / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="efficientnet_lite0", choices=sorted(CHANNELS))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--attn-at", default="both")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    c = CHANNELS[args.teacher]
    feats = [torch.randn(args.batch, ch, args.size // s, args.size // s) for ch, s in zip(c, (4, 8, 16))]
    student = Student(student_spec(args.teacher, c), attn_at=args.attn_at)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3, betas=(0.5, 0.999))
    rows = []
    for precision in ("fp32", "bf16"):
        def train_step() -> None:
            student.train()
            opt.zero_grad(set_to_none=True)
            with autocast("cpu", precision):
                out = student(feats)
            distillation_loss(feats, out).backward()
            opt.step()

        @torch.no_grad()
        def infer() -> None:
            student.eval()
            with autocast("cpu", precision):
                out = student(feats)
            distance_maps(feats, out, (args.size, args.size))

        t0 = time.perf_counter()
        rows.append({"precision": precision, "train_images_per_s": round(_rate(train_step, args.batch, args.repeats), 1),
                     "infer_images_per_s": round(_rate(infer, args.batch, args.repeats), 1),
                     "wall_s": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nstudent of {args.teacher}, {args.size} px, batch {args.batch}, attn_at {args.attn_at}; "
          f"CPU {cpu_model_name()}, {torch.get_num_threads()} threads; peak RSS {peak_rss_mb():.0f} MB")
    print(f"bf16 / fp32: training {rows[1]['train_images_per_s'] / rows[0]['train_images_per_s']:.2f}x, "
          f"inference {rows[1]['infer_images_per_s'] / rows[0]['infer_images_per_s']:.2f}x")


if __name__ == "__main__":
    main()
