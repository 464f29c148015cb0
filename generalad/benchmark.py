"""``generalad benchmark CONFIG.yaml``: models × datasets × categories (× seeds × shots) → one table.

YAML shape (relative paths are taken from the current directory)::

    out: runs/benchmark/industrial
    eval_size: 256                 # or "native"
    seeds: [0]                     # several → mean ± std
    shots: [null]                  # few-shot table: [1, 2, 4, 8]
    shots_mode: random             # or "window": GeneralAD's parity subset (sorted indices seed … seed+shots-1)
    contaminate: 0                 # leak-free contamination (anomalous test images moved into training)
    models:
      - {name: patchcore, label: PatchCore, options: {backbone: efficientnet_lite0}}
      - {name: generalad, options: {backbone: dinov2_vits14, weights: w.safetensors, preset: industrial}}
    datasets:
      - {name: mvtec, root: ../shared/data/mvtec_bottle_subset, categories: [bottle]}
      - {name: mnist, root: ../shared/data/mnist_subset, normal_classes: [0, 1], options: {preset: semantic}}
      - {name: aircraft, root: data/fgvc_aircraft, layout: fgvc_aircraft, normal_classes: [91],
         data_options: {test_classes: [91, 96]}}   # layout: skip auto-detection; data_options: reader options

Optional ``tables:`` add tables in a paper's layout under the default one (same rows, same numbers)::

    tables:
      - {title: "Table 1: image AUROC", rows: model, metrics: [image_auroc]}          # a row per model, units as columns
      - {title: "Table 2: pixel AUROC / PRO", rows: model, metrics: [pixel_auroc, pixel_aupro]}  # cells "a/b"
      - {title: "Table 3: one-class AUROC", rows: unit, metrics: [image_auroc]}        # a row per class, model × dataset columns

Dataset keys: ``root``, ``name``, ``layout``, ``categories`` / ``normal_classes``, ``split`` (VisA),
``data_options`` (open_dataset reader options, e.g. FGVC ``test_classes``, Cats-vs-Dogs ``split_seed``) and
``options`` (model options for this dataset). ``save_models: true`` keeps each fitted model under
``runs/<row>/model`` (e.g. to reuse an anomalyhybrid generator); ``bundle_backbone: true`` also writes each
backbone's weights into it (``backbone.safetensors``, as ``fit --bundle-backbone``). Writes ``results.jsonl``
(one line per fit/test), ``table.md`` and ``table.csv`` (per category + mean). MVTec LOCO rows add logical and
structural image AUROC columns (each group against the good test images), next to the pooled one.
``report.html`` (self-contained) shows the table, a chart per metric and every row's protocol stamps, and links
each row to its run's own ``runs/<row>/report.html`` (docs/INSPECT.md).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from generalad.errors import ConfigError, InputError
from generalad.evaluate import evaluate
from generalad.io import atomic_write_text
from generalad.report_html import REPORT_FILE, write_benchmark_report, write_report

METRICS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_aupro", "pixel_auspro@0.05",
           "logical_image_auroc", "structural_image_auroc")
GROUPS = ("logical", "structural")  # evaluate() writes metrics[group] = image metrics for MVTec LOCO
SHOTS_MODES = ("random", "window")
TABLE_ROWS = ("model", "unit")


def load_config(path: str | Path) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"cannot read benchmark file {path}: {str(err).splitlines()[0]}") from None
    for key in ("models", "datasets"):
        if not cfg.get(key):
            raise ConfigError(f"benchmark file {path} needs a non-empty '{key}' list")
    if cfg.get("shots_mode", "random") not in SHOTS_MODES:
        raise ConfigError(f"benchmark file {path}: shots_mode must be one of {', '.join(SHOTS_MODES)}")
    _check_datasets(cfg["datasets"], path)
    for table in cfg.get("tables") or []:
        if not isinstance(table, dict) or table.get("rows") not in TABLE_ROWS or not table.get("metrics"):
            raise ConfigError(f"benchmark file {path}: every table needs rows: model|unit and a metrics list")
        unknown = sorted(set(table["metrics"]) - set(METRICS))
        if unknown:
            raise ConfigError(f"benchmark file {path}: unknown table metric(s) {', '.join(unknown)}")
    return cfg


def _check_datasets(datasets: list[Any], path: str | Path) -> None:
    """Catch layout and key typos before hours of fitting (reader options are checked by open_dataset)."""
    from generalad.data import LAYOUTS

    known = {"name", "root", "layout", "categories", "normal_classes", "split", "data_options", "options"}
    for ds in datasets:
        if not isinstance(ds, dict) or "root" not in ds:
            raise ConfigError(f"benchmark file {path}: every dataset needs a 'root' (got {ds!r})")
        unknown = sorted(set(ds) - known)
        if unknown:
            raise ConfigError(f"benchmark file {path}: unknown dataset key(s) {', '.join(unknown)}")
        if ds.get("layout", "auto") not in LAYOUTS:
            choices = ", ".join(LAYOUTS)
            raise ConfigError(f"benchmark file {path}: unknown layout {ds['layout']!r}; choose one of {choices}")


def _jobs(cfg: dict[str, Any]):
    """Yield one job per (dataset, category or normal class, model, seed, shots)."""
    for ds in cfg["datasets"]:
        units = [("category", c) for c in ds.get("categories", [])] + [
            ("normal_class", c) for c in ds.get("normal_classes", [])
        ] or [("category", None)]
        for kind, unit in units:
            for m in cfg["models"]:
                for seed in cfg.get("seeds", [0]):
                    for shots in cfg.get("shots", [None]):
                        yield ds, kind, unit, m, seed, shots


def _run_job(ds_cfg, kind, unit, m, seed, shots, cfg, out: Path, device: str | None = None) -> dict[str, Any]:
    from generalad.data import loco_defects_config
    from generalad.methods import get_method
    from generalad.pipeline import fit_on, open_training

    run = open_training(
        ds_cfg["root"], layout=ds_cfg.get("layout", "auto"), split=ds_cfg.get("split", "official"),
        data_options=ds_cfg.get("data_options", {}), contaminate_n=int(cfg.get("contaminate") or 0),
        shots=shots, shots_mode=cfg.get("shots_mode", "random"), seed=seed,
        **({"category": unit} if kind == "category" else {"normal_class": unit}),
    )
    ds, train = run.dataset, run.train
    options = {**m.get("options", {}), **ds_cfg.get("options", {}), "seed": seed}
    if device is not None:
        options["device"] = device
    model = get_method(m["name"])(**options)
    t0 = time.perf_counter()
    fit_on(model, run)
    fit_s = time.perf_counter() - t0
    label = m.get("label", m["name"])
    run_dir = out / "runs" / (f"{ds_cfg.get('name', ds.name)}_{unit}_{label}_s{seed}" + (f"_k{shots}" if shots else ""))
    if cfg.get("save_models"):  # keep the fitted model (e.g. an anomalyhybrid generator to reuse)
        model.save(run_dir / "model", bundle_backbone=bool(cfg.get("bundle_backbone")))
    eval_size = cfg.get("eval_size", 256)
    metrics = evaluate(
        model, ds.test, out_dir=run_dir, has_masks=ds.has_masks,
        eval_size=None if eval_size == "native" else (int(eval_size),) * 2,
        defects=loco_defects_config(ds.root) if ds.name == "loco" else None,
    )
    write_report(run_dir)  # each run's own page (report.html beside its metrics.json), linked from the table's
    return {
        "dataset": ds_cfg.get("name", ds.name), "unit": str(unit if unit is not None else ds.category),
        "model": label, "seed": seed, "shots": shots, "fit_seconds": round(fit_s, 2),
        "run_dir": str(run_dir.relative_to(out)),
        # few-shot rows list the images they were fitted on (docs/PROTOCOLS.md §2), so a subset can be reproduced
        **({"shots_mode": cfg.get("shots_mode", "random"), "train_files": [s.path for s in train]} if shots else {}),
        **{k: metrics.get(k) for k in (*METRICS, "images_per_second", "peak_rss_mb", "backbone",
                                       "weights_sha256", "image_size", "precision", "device", "selection",
                                       "n_test")},
        **group_metrics(metrics),
    }


def group_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """``{"logical_image_auroc": …, "structural_image_auroc": …}`` for the LOCO groups evaluate() found."""
    return {f"{g}_image_auroc": metrics[g].get("image_auroc") for g in GROUPS if isinstance(metrics.get(g), dict)}


def _fmt(values: list[float]) -> str:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    if not vals:
        return "–"
    mean = 100 * float(np.mean(vals))
    return f"{mean:.1f} ± {100 * float(np.std(vals)):.1f}" if len(vals) > 1 else f"{mean:.1f}"


def make_tables(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """Markdown and CSV: one row per dataset/category (+ mean per dataset), columns model × metric."""
    models = list(dict.fromkeys(r["model"] + (f" ({r['shots']}-shot)" if r["shots"] else "") for r in rows))
    metrics = [k for k in METRICS if any(r.get(k) is not None for r in rows)]
    cells: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        col = r["model"] + (f" ({r['shots']}-shot)" if r["shots"] else "")
        for k in metrics:
            cells[(r["dataset"], r["unit"])][f"{col} {k}"].append(r.get(k))
    header = ["dataset", "category"] + [f"{m} {k}" for m in models for k in metrics]
    body: list[list[str]] = []
    for dataset in dict.fromkeys(d for d, _ in cells):
        units = [u for d, u in cells if d == dataset]
        for u in units:
            body.append([dataset, u] + [_fmt(cells[(dataset, u)][h]) for h in header[2:]])
        means = []
        for h in header[2:]:  # mean over categories of the per-category means (seeds averaged first)
            per_unit = [np.mean([v for v in cells[(dataset, u)][h] if v is not None] or [np.nan]) for u in units]
            means.append(_fmt([float(np.nanmean(per_unit))] if not np.all(np.isnan(per_unit)) else []))
        body.append([dataset, "**mean**"] + means)
    md = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    md += "".join("| " + " | ".join(row) + " |\n" for row in body)
    buf = io.StringIO()
    csv.writer(buf).writerows([header] + [[c.replace("**", "") for c in row] for row in body])
    return md, buf.getvalue()


def _cell(values: list[list[float | None]]) -> str:
    """Metrics of one cell ("96.2/94.7"): each the mean over seeds, in %, one decimal."""
    out = []
    for vals in values:
        vals = [v for v in vals if v is not None and np.isfinite(v)]
        out.append(f"{100 * float(np.mean(vals)):.1f}" if vals else "–")
    return "/".join(out)


def layout_table(rows: list[dict[str, Any]], spec: dict[str, Any]) -> str:
    """One markdown table in a paper's layout (``tables:`` entry): ``rows: model`` → a row per dataset ×
    model with the units as columns and their mean last; ``rows: unit`` → a row per unit with model ×
    dataset columns and a mean row. Means are over units of the per-unit (seed-averaged) values."""
    metrics = list(spec["metrics"])
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    models = list(dict.fromkeys(r["model"] for r in rows))
    units = list(dict.fromkeys(r["unit"] for r in rows))

    def values(dataset: str, model: str, unit: str | None) -> list[list[float | None]]:
        picked = [r for r in rows if r["dataset"] == dataset and r["model"] == model and unit in (None, r["unit"])]
        if unit is not None:
            return [[r.get(k) for r in picked] for k in metrics]
        per_unit = [[np.mean([v for r in picked if r["unit"] == u and (v := r.get(k)) is not None] or [np.nan])
                     for u in units if any(r["unit"] == u for r in picked)] for k in metrics]
        return [[float(np.nanmean(v))] if np.isfinite(v).any() else [] for v in map(np.array, per_unit)]

    title = f"**{spec.get('title', ' / '.join(metrics))}** ({' / '.join(metrics)}, %)\n\n"
    if spec["rows"] == "model":
        header = ["dataset", "model", *units, "mean"]
        body = [[d, m, *[_cell(values(d, m, u)) for u in units], _cell(values(d, m, None))]
                for d in datasets for m in models if any(r["dataset"] == d and r["model"] == m for r in rows)]
    else:
        cols = [(d, m) for d in datasets for m in models if any(r["dataset"] == d and r["model"] == m for r in rows)]
        header = ["unit", *[f"{m} {d}" for d, m in cols]]
        body = [[u, *[_cell(values(d, m, u)) for d, m in cols]] for u in units]
        body.append(["**mean**", *[_cell(values(d, m, None)) for d, m in cols]])
    md = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    return title + md + "".join("| " + " | ".join(row) + " |\n" for row in body)


def run_benchmark(
    config_file: str | Path, *, out: str | Path | None = None, quiet: bool = False, device: str | None = None
) -> list[dict[str, Any]]:
    """Run every job of the YAML file (``device`` overrides the models' device option)."""
    cfg = load_config(config_file)
    out = Path(out or cfg.get("out", "runs/benchmark"))
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for job in _jobs(cfg):
        row = _run_job(*job, cfg, out, device=device)
        rows.append(row)
        if not quiet:
            print(json.dumps(row, default=str), flush=True)
        atomic_write_text(out / "results.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in rows))
    md, table_csv = make_tables(rows)
    backbones = sorted({f"{r['backbone']} (sha256 {str(r['weights_sha256'])[:12]})" for r in rows})
    note = f"\nBackbone(s): {', '.join(backbones)}. Metrics in %, raw scores; selection: " + ", ".join(
        sorted({str(r["selection"]) for r in rows})) + ".\n"
    for spec in cfg.get("tables") or []:
        md += "\n" + layout_table(rows, spec)
    atomic_write_text(out / "table.md", md + note)
    atomic_write_text(out / "table.csv", table_csv)
    links = {i: f"{r['run_dir']}/{REPORT_FILE}" for i, r in enumerate(rows) if r.get("run_dir")}
    write_benchmark_report(out, rows, table_csv, links, title=f"{Path(config_file).name} → {out}")
    if not quiet:
        print(md + note)
    return rows
