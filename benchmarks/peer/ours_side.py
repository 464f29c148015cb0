"""One generalad run (fit + predict) in generalad's venv; driven by run.py in a fresh process per run.

    .venv/bin/python benchmarks/peer/ours_side.py JOB.json RESULT.json

The Python API a user of generalad writes: ``open_dataset(root)``, ``get_method(name)(backbone=..,
image_size=.., ...)``, ``.fit(train)``, then the predict path from files: ``infer_batches(test)`` (decode →
resize → backbone → raw scores + anomaly maps at the working size, the same outputs anomalib's predict
returns). Choices that make it comparable (README.md):

- the model learns from every ``train/good`` image, as anomalib's does: ``fit(train, calibration=held)``
  where ``held`` is the slice our default hold-out would pick (10 %, at least 5, seed 0) — here used only
  for the decision thresholds anomalib does not compute, so it is extra work counted in our fit time, not
  fewer training images;
- ``precision="fp32"`` (and ``train_precision="fp32"`` for GeneralAD): what "auto" resolves to on a CPU
  without AMX / AVX512-BF16, written out;
- the backbone and the preprocessing (exact resize, bicubic + antialias, no crop, the backbone's own
  normalisation) are ours by definition; anomalib's side is configured to the same.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path


def _maxrss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main(job_path: str, out_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    warnings.filterwarnings("ignore")
    t_start = time.perf_counter()
    import numpy as np
    import torch

    torch.set_num_threads(int(job["threads"]))
    import generalad
    from generalad.data import open_dataset, split_holdout
    from generalad.methods import get_method

    t_import = time.perf_counter()
    rss = {"import": _maxrss_mb()}
    ds = open_dataset(job["root"], layout="mvtec")
    train, test = ds.train, ds.test

    t0 = time.perf_counter()
    kw = dict(backbone=job["ours_backbone"], image_size=int(job["size"]), precision="fp32", device="cpu",
              batch_size=int(job["batch_size"]), seed=int(job["seed"]))
    if job.get("weights"):
        kw["weights"] = job["weights"]
    if job["model"] == "patchcore":
        kw.update(coreset_ratio=float(job["coreset_ratio"]), layers=list(job["ours_layers"]))
    elif job["model"] == "generalad":
        kw.update(epochs=int(job["epochs"]), train_batch_size=int(job["train_batch_size"]),
                  train_precision="fp32", layers=list(job["ours_layers"]))
    else:
        raise SystemExit(f"unknown model {job['model']!r}")
    model = get_method(job["model"])(**kw)
    model.backbone()  # build + load the backbone here (anomalib loads it in its constructor)
    t_init = time.perf_counter() - t0
    rss["init"] = _maxrss_mb()

    _, held = split_holdout(train, model.config.calibration_fraction, model.config.calibration_min,
                            model.config.seed)
    t0 = time.perf_counter()
    model.fit(train, calibration=held or None)
    t_fit = time.perf_counter() - t0
    rss["fit"] = _maxrss_mb()

    t0 = time.perf_counter()
    scores, map_shapes = [], set()
    for _chunk, s, maps in model.infer_batches(test, use_cache=False):
        scores.append(np.asarray(s, dtype=np.float64))
        map_shapes.add(tuple(maps.shape[-2:]))
    t_predict = time.perf_counter() - t0
    rss["predict"] = _maxrss_mb()
    scores = np.concatenate(scores) if scores else np.zeros(0)

    paths = [s.path for s in test]
    labels = [0 if Path(p).parent.name == "good" else 1 for p in paths]
    from sklearn.metrics import roc_auc_score

    auroc = float(roc_auc_score(labels, scores)) if len(set(labels)) == 2 else None
    try:
        git = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        git = "unknown"
    result = {
        "library": "generalad",
        "versions": {"generalad": generalad.__version__, "generalad_git": git, "torch": torch.__version__,
                     "timm": __import__("timm").__version__},
        "n_train": len(train),
        "n_calibration": len(held),
        "n_test": len(test),
        "seconds_import": round(t_import - t_start, 3),
        "seconds_init": round(t_init, 3),
        "seconds_fit": round(t_fit, 3),
        "seconds_predict": round(t_predict, 3),
        "predict_images_per_s": round(len(test) / t_predict, 3),
        "image_auroc": auroc,
        "anomaly_map_shapes": sorted(map_shapes),
        "fit_info": getattr(model, "fit_info_", None),
        "precision": model.precision,
        "backbone_describe": model.backbone().describe(),
        "threads": torch.get_num_threads(),
        "ru_maxrss_self_mb": _maxrss_mb(),
        "ru_maxrss_mb_after": rss,  # the running peak after each phase
        "scores": dict(zip(paths, scores.tolist())),
    }
    Path(out_path).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
