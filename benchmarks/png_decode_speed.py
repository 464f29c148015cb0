"""PNG decoding: libspng (generalad's default for 8-bit PNGs) vs Pillow, and what it does to `generalad speed`.

    python benchmarks/png_decode_speed.py --images ../shared/data/mvtec_bottle_subset/bottle/test \
        --run runs/exp/gad_bottle [--batch-size 16]

Part 1 times ``read_image`` on every PNG under ``--images`` with each decoder (best of 3 passes, one thread,
identical pixels checked). Part 2 (with ``--run``) runs ``generalad speed`` twice in fresh processes, once
with pyspng hidden so that Pillow decodes, and prints both end-to-end / bare-backbone ratios. Same run, same
machine: compare the ratios, not the absolute numbers across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HIDE_SPNG = "import sys; sys.modules['pyspng'] = None\n"
SPEED = "from generalad.cli import main; sys.exit(main(sys.argv[1:]))\n"


def _decode_pass(paths: list[Path], use_spng: bool) -> tuple[float, list[np.ndarray]]:
    import generalad.data.images as images

    saved = images._spng
    if not use_spng:
        images._spng = None
    try:
        t0 = time.perf_counter()
        out = [images.read_image(p) for p in paths]
        return time.perf_counter() - t0, out
    finally:
        images._spng = saved


def decode_table(paths: list[Path]) -> dict[str, float]:
    best = {"pillow": float("inf"), "libspng": float("inf")}
    reference = None
    for _ in range(3):
        for name, use in (("pillow", False), ("libspng", True)):
            seconds, pixels = _decode_pass(paths, use)
            best[name] = min(best[name], seconds / len(paths) * 1e3)
            if reference is None:
                reference = pixels
            elif not all(np.array_equal(a, b) for a, b in zip(reference, pixels)):
                raise SystemExit("pixels differ between decoders")
    return best


def speed_ratio(run: str, images: str, batch: int, hide: bool) -> dict:
    code = ("import sys\n" + (HIDE_SPNG if hide else "") + SPEED)
    env = dict(os.environ, GLIBC_TUNABLES="glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184")
    proc = subprocess.run([sys.executable, "-c", code, "speed", "--run", run, "--images", images, "--batch-size",
                           str(batch), "--quiet"], capture_output=True, text=True, env=env, check=True)
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", required=True)
    ap.add_argument("--run")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    paths = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() == ".png")
    from generalad.device import cpu_model_name

    print(f"CPU: {cpu_model_name()}; {len(paths)} PNGs under {args.images}")
    ms = decode_table(paths)
    print(f"read_image, one thread, best of 3: Pillow {ms['pillow']:.1f} ms, libspng {ms['libspng']:.1f} ms "
          f"({ms['pillow'] / ms['libspng']:.2f}x), identical pixels")
    if args.run:
        for label, hide in (("Pillow", True), ("libspng", False)):
            print(f"generalad speed with {label} decoding:", json.dumps(speed_ratio(args.run, args.images, args.batch_size, hide)))


if __name__ == "__main__":
    main()
