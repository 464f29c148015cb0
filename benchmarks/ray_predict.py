"""Local vs Ray predict engines on one machine: same model, same images, same rows? how fast? (issue 19; docs/SCALE.md)

    python benchmarks/ray_predict.py RUN --images DIR [--workers 2] [--out runs/ray/bench] [--no-fault]

Runs ``generalad predict`` as separate processes on the sorted images of DIR:

1. ``local``          the local engine, default threads (all cores): the throughput reference;
2. ``local-1thread``  the local engine with ``--threads 1``: the rows the Ray workers (1 CPU each on a
                      2-core machine) must reproduce — oneDNN's convolutions round differently at different
                      thread counts, so rows are compared at equal threads;
3. ``ray``            ``--engine ray --workers W`` on a local cluster started by the command (its start-up and
                      the workers' model loading are inside the wall time);
4. ``ray-fault``      the same into a fresh folder, with one worker process SIGKILLed once a third of the
                      overlays exist: it must finish with every image once, rows and overlays as in (2).

For each: wall time, images/s end to end (images / wall), scoring images/s (overlays written per second
between the first and the last one: start-up excluded; ``first_overlay_s``: start-up plus the first chunk) and
peak memory of the whole process tree, sampled
every 0.25 s — PSS (shared pages split between processes) and the largest single process' RSS. Rows are
compared on every field but ``latency_ms``; overlays byte for byte. Prints a table and the CPU model
(``lscpu``); writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def lscpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "")
    extra = [f for f in ("amx_bf16", "avx512_bf16", "avx512f") if f" {f}" in f" {flags}"]
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs ({', '.join(extra) or 'no AVX512'})"


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc/*/stat parent links)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack += children.get(pid, [])
    return out


def _kb(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Monitor(threading.Thread):
    """Samples the process tree's memory and the overlay count of ``images`` every 0.25 s."""

    def __init__(self, pid: int, images: Path, kill_at: int | None = None) -> None:
        super().__init__(daemon=True)
        self.pid, self.images, self.kill_at = pid, images, kill_at
        self.peak_pss_mb = self.peak_proc_rss_mb = 0.0
        self.first_t = self.last_t = None
        self.first_n = self.last_n = 0
        self.killed: dict | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            pids = _tree(self.pid)
            pss = sum(_kb(Path(f"/proc/{p}/smaps_rollup"), "Pss:") for p in pids) / 1024
            rss = max((_kb(Path(f"/proc/{p}/status"), "VmRSS:") for p in pids), default=0) / 1024
            self.peak_pss_mb, self.peak_proc_rss_mb = max(self.peak_pss_mb, pss), max(self.peak_proc_rss_mb, rss)
            n = len(list(self.images.glob("*_overlay.png"))) if self.images.is_dir() else 0
            now = time.perf_counter()
            if n and self.first_t is None:
                self.first_t, self.first_n = now, n
            if n > self.last_n:
                self.last_t, self.last_n = now, n
            if self.kill_at is not None and self.killed is None and n >= self.kill_at:
                workers = [p for p in pids if "ChunkScorer" in _cmdline(p)]
                if workers:
                    os.kill(workers[0], signal.SIGKILL)
                    self.killed = {"pid": workers[0], "after_overlays": n, "workers_seen": len(workers)}
            self.stop.wait(0.25)

    def scoring_rate(self) -> float | None:
        if self.first_t is None or self.last_t is None or self.last_t <= self.first_t:
            return None
        return (self.last_n - self.first_n) / (self.last_t - self.first_t)


def run_predict(name: str, argv: list[str], out: Path, n_images: int, kill_at: int | None = None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "generalad.cli", "predict", *argv, "--out", str(out), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mon = Monitor(proc.pid, out / "images", kill_at)
    mon.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    mon.stop.set()
    mon.join()
    if proc.returncode not in (0, 2):
        raise SystemExit(f"{name}: exit {proc.returncode}\n{stderr}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    rate = mon.scoring_rate()
    rec = {"name": name, "argv": argv, "returncode": proc.returncode, "stderr": stderr.strip()[-500:],
           "wall_s": round(wall, 2), "images_per_s_end_to_end": round(n_images / wall, 3),
           "images_per_s_scoring": round(rate, 3) if rate else None,
           "first_overlay_s": round(mon.first_t - t0, 2) if mon.first_t is not None else None,
           "peak_pss_mb": round(mon.peak_pss_mb),
           "peak_process_rss_mb": round(mon.peak_proc_rss_mb), "summary": summary, "killed": mon.killed}
    print(f"{name}: {rec['wall_s']} s, {rec['images_per_s_end_to_end']} img/s end to end, "
          f"{rec['images_per_s_scoring']} img/s scoring, peak PSS {rec['peak_pss_mb']} MB", flush=True)
    return rec


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def compare(a: Path, b: Path) -> dict:
    """Rows on every field but latency_ms, overlays byte for byte, failed.txt."""
    ra = [{k: v for k, v in r.items() if k != "latency_ms"} for r in rows(a)]
    rb = [{k: v for k, v in r.items() if k != "latency_ms"} for r in rows(b)]
    diff = [i for i, (x, y) in enumerate(zip(ra, rb)) if x != y]
    score_diff = max((abs(x["score"] - y["score"]) / abs(x["score"]) for x, y in zip(ra, rb)
                      if "score" in x and "score" in y), default=0.0)
    names = sorted(p.name for p in (a / "images").iterdir())
    same_names = names == sorted(p.name for p in (b / "images").iterdir())
    overlay_diff = [n for n in names if same_names and (a / "images" / n).read_bytes() != (b / "images" / n).read_bytes()]
    failed = [(p / "failed.txt").read_text() if (p / "failed.txt").exists() else None for p in (a, b)]
    paths = [r["path"] for r in rb]
    return {"n_rows": [len(ra), len(rb)], "rows_identical": ra == rb, "n_rows_differing": len(diff) + abs(len(ra) - len(rb)),
            "max_rel_score_diff": score_diff, "overlay_names_identical": same_names,
            "n_overlays_differing": len(overlay_diff), "failed_identical": failed[0] == failed[1],
            "duplicated_paths": len(paths) - len(set(paths))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--images", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/ray/bench")
    parser.add_argument("--no-fault", action="store_true")
    args = parser.parse_args()

    paths = sorted(str(p) for p in Path(args.images).rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    n = len(paths)
    out = Path(args.out)
    cpu = lscpu_model()
    print(f"CPU: {cpu}; {n} images under {args.images}; model {args.run}", flush=True)
    base = ["--run", args.run, args.images]
    ray_args = [*base, "--engine", "ray", "--workers", str(args.workers)]
    runs = [run_predict("local", base, out / "local", n),
            run_predict("local-1thread", [*base, "--threads", "1"], out / "local-1thread", n),
            run_predict("ray", ray_args, out / "ray", n)]
    if not args.no_fault:
        runs.append(run_predict("ray-fault", ray_args, out / "ray-fault", n, kill_at=n // 3))
    reference = out / "local-1thread"
    checks = {r["name"]: compare(reference, out / r["name"]) for r in runs if r["name"] != "local-1thread"}

    print("\n| engine | threads / worker | wall s | images/s end to end | images/s scoring | peak PSS MB (tree) | "
          "largest process RSS MB | rows vs local --threads 1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        c = checks.get(r["name"])
        if c is None:
            same = "reference"
        elif c["rows_identical"]:
            same = "rows identical, " + ("overlays identical" if c["n_overlays_differing"] == 0 else
                                         f"{c['n_overlays_differing']} of {n} overlays differ")
        else:
            same = (f"{c['n_rows_differing']} rows differ (max rel score diff {c['max_rel_score_diff']:.1e}), "
                    f"{c['n_overlays_differing']} overlays")
        threads = r["summary"].get("cpus_per_worker") or ("1" if "--threads" in r["argv"] else "all")
        print(f"| {r['name']} | {threads} | {r['wall_s']} | {r['images_per_s_end_to_end']} | "
              f"{r['images_per_s_scoring']} | {r['peak_pss_mb']} | {r['peak_process_rss_mb']} | {same} |")
    fault = next((r for r in runs if r["name"] == "ray-fault"), None)
    if fault is not None:
        c = checks["ray-fault"]
        print(f"\nfault: killed {fault['killed']}; exit {fault['returncode']}; {c['n_rows'][1]} rows for {n} images, "
              f"{c['duplicated_paths']} duplicated; identical to local --threads 1: {c['rows_identical']} "
              f"(overlays differing: {c['n_overlays_differing']})")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"cpu": cpu, "n_images": n, "run": args.run, "images": args.images,
                                                  "runs": runs, "checks": checks}, indent=2) + "\n")
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
