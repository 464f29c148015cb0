"""Torch vs onnxruntime vs OpenVINO on one CPU, same run, same images (issue 16; docs/DEPLOY.md §6).

    python benchmarks/deploy_speed.py RUN [RUN ...] --images DIR [--n 40] [--batch-size 8] [--out OUT.json]

For each fitted model directory RUN: export it to ONNX and OpenVINO (into OUT's folder), then time the whole
predict path — decode → resize → graph / model → maps at each image's own size — for the torch model and
both exports on the same images in this one process (``generalad.speed.compare_speed``), plus parity on
those images (max relative score / map difference vs torch). Prints one table row per runtime with the CPU
model; writes everything to OUT as JSON. Peak RSS is the process's peak so far (it grows monotonically).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            flags = Path("/proc/cpuinfo").read_text()
            extra = [f for f in ("amx_bf16", "avx512_bf16", "avx512f") if f" {f}" in flags]
            return f"{line.split(':', 1)[1].strip()} ({', '.join(extra) or 'no AVX512'})"
    return platform.processor() or "unknown"


def parity(model, inferencer, samples) -> dict[str, float]:
    t = [(s, m) for c, sc, mp in model.infer_batches(samples, use_cache=False) for s, m in zip(sc, model.to_original_size(c, mp))]
    d = [(s, m) for c, sc, mp in inferencer.infer_batches(samples) for s, m in zip(sc, inferencer.to_original_size(c, mp))]
    ts, ds = np.array([x[0] for x in t]), np.array([x[0] for x in d])
    return {"max_rel_score": float(np.abs(ds - ts).max() / np.abs(ts).max()),
            "max_rel_map": float(max(np.abs(a[1] - b[1]).max() / np.abs(b[1]).max() for a, b in zip(d, t))),
            "same_decisions": bool((inferencer.decide(ds) == model.decide(ts)).all())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--images", required=True)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default="runs/deploy_speed/results.json")
    args = parser.parse_args()

    from generalad.data import Sample
    from generalad.deploy import Inferencer
    from generalad.export import export_model
    from generalad.methods import load_model
    from generalad.speed import compare_speed

    paths = sorted(str(p) for p in Path(args.images).rglob("*.png"))[: args.n]
    samples = [Sample(path=p, label=-1, split="predict") for p in paths]
    out = Path(args.out)
    results = {"cpu": cpu_model(), "n_images": len(paths), "batch_size": args.batch_size, "runs": []}
    print(f"CPU: {results['cpu']}; {len(paths)} images from {args.images}; batch {args.batch_size}")
    print("| model | backbone | size | runtime | images/s (end to end) | × torch | graph / backbone images/s | "
          "peak RSS MB | max rel score diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        model = load_model(run, device="cpu")
        exports, seconds = {}, {}
        for fmt in ("onnx", "openvino"):
            t0 = time.perf_counter()
            exports[fmt] = export_model(model, out.parent / f"{Path(run).name}_{fmt}", fmt=fmt, source_run=run)
            seconds[fmt] = round(time.perf_counter() - t0, 1)
        inferencers = [Inferencer(exports[f]) for f in ("onnx", "openvino")]
        speed = compare_speed([model, *inferencers], [run, *exports.values()], paths, batch_size=args.batch_size)
        checks = [None, *(parity(model, inf, samples) for inf in inferencers)]
        for rec, ratio, check in zip(speed["runs"], speed["speedup_vs_first"], checks):
            diff = "—" if check is None else f"{check['max_rel_score']:.1e}"
            print(f"| {rec['model']} | {rec['backbone']} | {rec['image_size']} | {rec['runtime'].split('-')[0]} | "
                  f"{rec['end_to_end_images_per_s']:.2f} | {ratio:.2f} | {rec['backbone_images_per_s']:.1f} | "
                  f"{rec['peak_rss_mb']:.0f} | {diff} |", flush=True)
        results["runs"].append({"run": run, "export_seconds": seconds, "speed": speed, "parity": checks[1:]})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
