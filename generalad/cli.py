"""Command-line interface: ``generalad fit | test | report | predict | serve | export | speed | benchmark | clean |
generate | demo | doctor``.

Every user-caused problem ends in one line on stderr (``generalad: error: ...``) and exit status 2. The
``--model`` choices, their help and the method-specific flags come from the method registry
(``generalad.methods``): a new method needs no change here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from generalad.errors import ConfigError, GeneralADError, InputError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


# --------------------------------------------------------------------------------------- helpers
def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


#: flags every method's config has (BaseConfig); method-specific ones come from the registry
COMMON_FLAGS = ("backbone", "weights", "image_size", "seed", "precision", "device", "batch_size", "cache_dir")


def _method_flags() -> dict[str, tuple[Any, list[str]]]:
    """{config field: (Flag, names of the methods that take it)} over all registered methods."""
    from generalad.methods import list_methods, method_info

    flags: dict[str, tuple[Any, list[str]]] = {}
    for name in list_methods():
        for flag in method_info(name).flags:
            flags.setdefault(flag.field, (flag, []))[1].append(name)
    return flags


def _overrides(args: argparse.Namespace, config_cls) -> dict[str, Any]:
    """Model options from named flags, a YAML config file and ``--set key=value`` (later wins)."""
    import dataclasses

    import yaml

    names = {f.name for f in dataclasses.fields(config_cls)}
    out: dict[str, Any] = {}
    if args.config:
        try:
            loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise InputError(f"cannot read config file {args.config}: {err}".splitlines()[0]) from None
        out.update(loaded)
    flag_map = {key: getattr(args, key, None) for key in (*COMMON_FLAGS, *_method_flags())}
    for key, value in flag_map.items():
        if value is None:
            continue
        if key not in names:
            raise ConfigError(f"--{key.replace('_', '-')} does not apply to model {args.model!r}")
        out[key] = value
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = _parse_value(value)
    return out


def _list_images(inputs: list[str]) -> list[str]:
    paths: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
            if not found:
                raise InputError(f"no images found in folder {p}")
            paths.extend(found)
        elif p.is_file():
            paths.append(str(p))
        else:
            raise InputError(f"no such file or folder: {p}")
    return paths


def _open(args: argparse.Namespace, data_info: dict[str, Any] | None = None):
    from generalad.data import open_dataset

    info = data_info or {}
    normal = args.normal_class if getattr(args, "normal_class", None) is not None else info.get("normal_class")
    category = args.category if getattr(args, "category", None) is not None else info.get("category_arg")
    return open_dataset(args.data, category=category, normal_class=normal, split=args.split or info.get("split", "official"))


def _print_json(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, default=str))


# --------------------------------------------------------------------------------------- commands
def _fit_model(args: argparse.Namespace, model, progress: bool):
    from generalad.pipeline import fit_on, open_training

    run = open_training(
        args.data, category=args.category, normal_class=args.normal_class, split=args.split or "official",
        contaminate_n=args.contaminate or 0, exclude=args.exclude, shots=args.shots, shots_mode=args.shots_mode,
        seed=args.seed or 0,
    )
    return fit_on(model, run, select_on_test=args.select_on_test, progress=progress)


def _save_fitted(args: argparse.Namespace, model) -> None:
    model.save(args.out, bundle_backbone=args.bundle_backbone)
    _print_json({"run": str(args.out), **model.describe(), **model.fit_info_, "threshold": model.threshold_})


def cmd_fit(args: argparse.Namespace) -> int:
    from generalad.methods import get_method

    if args.dist_backend and not args.distributed:
        raise ConfigError("--dist-backend applies to --distributed")
    if args.distributed:
        return _fit_distributed(args)
    cls = get_method(args.model)
    model = cls(**_overrides(args, cls.Config))
    _fit_model(args, model, progress=not args.quiet)
    _save_fitted(args, model)
    return 0


def _fit_distributed(args: argparse.Namespace) -> int:
    """``fit --distributed`` under torchrun (docs/SCALE.md §9): every rank fits (features sharded, gradients
    summed), rank 0 alone writes the run directory and prints the summary; the others wait for it."""
    from generalad import distributed
    from generalad.methods import get_method

    distributed.torchrun_env()  # one line, before anything is loaded, when not started by torchrun
    cls = get_method(args.model)
    model = cls(**_overrides(args, cls.Config))
    with distributed.session(model.device, args.dist_backend) as group:
        if model.device.type == "cuda":  # one GPU per rank
            model.set_params(device=str(distributed.rank_device(model.device, group)))
        _fit_model(args, model, progress=not args.quiet and group.is_main)
        distributed.run_on_main(group, lambda: _save_fitted(args, model))
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from generalad.data import loco_defects_config
    from generalad.evaluate import evaluate
    from generalad.methods import load_model

    model = load_model(args.run, weights=args.weights, device=args.device)
    ds = _open(args, model.run_info_)
    eval_size = None if args.eval_size == "native" else (int(args.eval_size),) * 2
    metrics = evaluate(
        model,
        ds.test,
        out_dir=args.out,
        has_masks=ds.has_masks,
        eval_size=eval_size,
        progress=not args.quiet,
        extra={"dataset": ds.name, "category": ds.category, "data_root": str(Path(args.data).resolve())},
        defects=loco_defects_config(ds.root) if ds.name == "loco" else None,
    )
    keys = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_aupro", "pixel_auspro@0.05", "pixel_ap",
            "n_test", "images_per_second")
    extra: dict[str, Any] = {"out": str(args.out)}
    if not args.no_report:
        from generalad.report_html import write_report

        extra["report"] = str(write_report(args.out))
    _print_json({k: metrics[k] for k in keys if k in metrics} | extra)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import time

    from generalad.report_html import write_report

    t0 = time.perf_counter()
    out = write_report(args.res, args.out)
    _print_json({"report": str(out), "bytes": out.stat().st_size, "seconds": round(time.perf_counter() - t0, 2)})
    return 0


def _load_for_inference(run: str, args: argparse.Namespace):
    """A torch model directory or an exported one (deploy.json): both score through the same interface."""
    from generalad.deploy import Inferencer, is_export_dir

    if is_export_dir(run):
        if getattr(args, "weights", None):
            raise ConfigError(f"--weights does not apply to an exported model ({run} holds its whole graph)")
        return Inferencer(run, batch_size=getattr(args, "batch_size", None) or 8)
    from generalad.methods import load_model

    return load_model(run, weights=args.weights, device=args.device)


def cmd_predict(args: argparse.Namespace) -> int:
    from generalad.predict import raise_for_failures

    if args.engine != "ray" and (args.address or args.workers is not None or args.gpus_per_worker is not None):
        raise ConfigError("--address, --workers and --gpus-per-worker apply to --engine ray")
    paths = _list_images(args.inputs)
    if args.engine == "ray":
        from generalad.engines.ray import predict_ray

        rows, stats = predict_ray(
            args.run, paths, args.out, address=args.address, workers=2 if args.workers is None else args.workers,
            chunk=args.chunk, threads=args.threads, gpus_per_worker=args.gpus_per_worker, weights=args.weights,
            device=args.device, save_maps=args.save_maps, progress=not args.quiet)
        failed = [r for r in rows if "error" in r]
        summary = {"n_images": len(rows), "n_failed": len(failed),
                   "n_anomalous": sum(bool(r.get("is_anomalous")) for r in rows), "threshold": stats.pop("threshold"),
                   "out": str(args.out), **stats}
        records: list[Any] = rows
    else:
        from generalad.predict import FailedImage, load_predictor, predict_folder

        model = load_predictor(args.run, weights=args.weights, device=args.device, threads=args.threads)
        records = predict_folder(model, paths, args.out, save_maps=args.save_maps, progress=not args.quiet,
                                 chunk=args.chunk)
        n_failed = sum(isinstance(r, FailedImage) for r in records)
        summary = {"n_images": len(records), "n_failed": n_failed,
                   "n_anomalous": sum(r.pred_label for r in records if not isinstance(r, FailedImage)),
                   "threshold": model.threshold_, "out": str(args.out), "engine": "local"}
    _print_json(summary)
    raise_for_failures(records, args.out)  # one line: how many failed and where the list is (exit 2)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from generalad.serve import serve

    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be > 0, got {args.max_upload_mb:g}")
    model = _load_for_inference(args.run, args)
    serve(model, args.run, host=args.host, port=args.port, images=args.images, max_upload_mb=args.max_upload_mb)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from generalad.export import export_model
    from generalad.methods import load_model

    model = load_model(args.run, weights=args.weights, device="cpu")
    out = export_model(model, args.out, fmt=args.format, source_run=str(Path(args.run).resolve()))
    meta = json.loads((out / "deploy.json").read_text())
    _print_json({"out": str(out), "format": meta["format"], "graph": meta["graph"], "model": meta["model"],
                 "backbone": meta["backbone"], "image_size": meta["image_size"], "threshold": meta["threshold"],
                 **{f"check_{k}": v for k, v in meta["export_check"].items()}})
    return 0


def cmd_speed(args: argparse.Namespace) -> int:
    from generalad.speed import compare_speed

    models = [_load_for_inference(run, args) for run in args.run]
    _print_json(compare_speed(models, args.run, _list_images([args.images]), batch_size=args.batch_size,
                              repeats=args.repeats))
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from generalad.benchmark import run_benchmark

    run_benchmark(args.config_file, out=args.out, quiet=args.quiet, device=args.device)
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from generalad.clean import BACKBONE_OPTIONS, rank_training_images, write_clean_list
    from generalad.pipeline import open_training

    run = open_training(args.data, category=args.category, normal_class=args.normal_class,
                        split=args.split or "official", contaminate_n=args.contaminate or 0, seed=args.seed or 0)
    moved = run.contaminants
    options = {k: getattr(args, k) for k in BACKBONE_OPTIONS if getattr(args, k) is not None}
    if args.kth is not None:
        options["kth"] = args.kth
    records = rank_training_images(
        run.train, statistic=args.statistic, k=args.k, drop_fraction=args.drop_fraction, **options
    )
    write_clean_list(records, args.out)
    flagged = {r["path"] for r in records if r["flagged"]}
    rule = f"top {args.drop_fraction:g}" if args.drop_fraction is not None else f"median + {args.k:g} MAD"
    summary: dict[str, Any] = {"n_train": len(records), "statistic": args.statistic, "kth": args.kth or 1,
                               "flag_rule": rule,
                               "n_flagged": len(flagged), "out": str(args.out)}
    if moved:  # known contaminants: precision / recall of the flags
        truth = {s.path for s in moved}
        hits = len(flagged & truth)
        summary |= {"n_contaminants": len(truth), "precision": hits / len(flagged) if flagged else None,
                    "recall": hits / len(truth)}
    _print_json(summary)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from generalad.methods.anomalyhybrid.estimator import generate_from_run

    ds = _open(args)
    sources = ds.train if args.from_split == "train" else [s for s in ds.test if s.label == 0]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    _print_json(generate_from_run(args.run, sources, args.n, args.out, seed=args.seed, kinds=kinds,
                                  mask_source=args.mask_source, device=args.device, progress=not args.quiet))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from generalad.demo import run_demo

    _print_json(run_demo(args.out, model=args.model, quiet=args.quiet))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from generalad.doctor import report

    _print_json(report())
    return 0


# --------------------------------------------------------------------------------------- parser
def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data", required=required, help="dataset folder (MVTec/LOCO/VisA/DAGM/class folders/CIFAR/MNIST)")
    p.add_argument("--category", help="category inside the dataset root (e.g. bottle)")
    p.add_argument("--normal-class", help="class-folder datasets: normal class name or index")
    p.add_argument("--split", help="dataset split protocol: official (default) or a parity split")


def _add_device_args(p: argparse.ArgumentParser, precision: bool = True) -> None:
    p.add_argument("--device", help="auto (default: CUDA when present) | cpu | cuda | cuda:N")
    if precision:
        # no argparse choices: the model config checks it (one error path, one list of choices)
        p.add_argument("--precision", help="auto (default): bf16 only where this device runs it faster | bf16 | fp32")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="generalad", description="Visual anomaly detection across domains.")
    sub = parser.add_subparsers(dest="command", required=True)

    from generalad.methods import list_methods, method_info

    methods = list_methods()
    fit = sub.add_parser("fit", help="fit a model on normal training images", formatter_class=argparse.RawTextHelpFormatter)
    # no argparse choices: an unknown name goes through the one error path (generalad: error: ..., exit 2)
    fit.add_argument("--model", required=True, metavar="MODEL",
                     help="\n".join(f"{n}: {method_info(n).summary}" for n in methods))
    _add_data_args(fit)
    fit.add_argument("--backbone", help="backbone name, e.g. efficientnet_lite0, dinov2_vits14")
    fit.add_argument("--weights", help="local weights file for the backbone")
    fit.add_argument("--image-size", type=int)
    for field, (flag, users) in _method_flags().items():
        helps = dict.fromkeys(f.help for n in users for f in method_info(n).flags if f.field == field and f.help)
        fit.add_argument(f"--{field.replace('_', '-')}", type=flag.type, help=f"{', '.join(users)}: {'; '.join(helps)}")
    _add_device_args(fit)
    fit.add_argument("--batch-size", type=int)
    fit.add_argument("--cache-dir", help="frozen-feature cache folder")
    fit.add_argument("--seed", type=int)
    fit.add_argument("--shots", type=int, help="few-shot: sample N training images (seeded)")
    fit.add_argument("--shots-mode", default="random", choices=["random", "window"])
    fit.add_argument("--contaminate", type=int, help="move N anomalous test images into training (leak-free)")
    fit.add_argument("--exclude", help="file listing training image paths to leave out (e.g. from 'clean')")
    fit.add_argument("--select-on-test", action="store_true", help="PAPER PARITY ONLY: pick the epoch by test AUROC")
    fit.add_argument("--config", help="YAML file of model options")
    fit.add_argument("--set", action="append", metavar="KEY=VALUE", help="any model option, e.g. --set map_sigma=8")
    fit.add_argument("--out", required=True, help="run directory to write (config.json + model.safetensors)")
    fit.add_argument("--distributed", action="store_true",
                     help="data-parallel training, one process per rank: run under 'torchrun --nproc-per-node N -m "
                          "generalad.cli fit ... --distributed' (docs/SCALE.md); the same model as one process")
    fit.add_argument("--dist-backend",
                     help="--distributed: gloo | nccl, the collective backend (default: nccl on CUDA, gloo on the CPU)")
    fit.add_argument("--bundle-backbone", action="store_true",
                     help="also write the backbone weights into the run directory (backbone.safetensors, sha256 "
                          "checked on load): the directory then loads anywhere without the original weights file")
    fit.set_defaults(func=cmd_fit)

    test = sub.add_parser("test", help="evaluate a fitted model on a dataset's test split")
    test.add_argument("--run", required=True)
    _add_data_args(test)
    test.add_argument("--weights", help="backbone weights file (if not at the recorded path)")
    test.add_argument("--eval-size", default="256", help="evaluation resolution for pixel metrics, or 'native'")
    _add_device_args(test, precision=False)
    test.add_argument("--out", required=True)
    test.add_argument("--no-report", action="store_true", help="do not write OUT/report.html (the HTML report)")
    test.set_defaults(func=cmd_test)

    report = sub.add_parser("report", help="a self-contained HTML report of a test results folder")
    report.add_argument("--res", required=True, help="results folder written by generalad test --out")
    report.add_argument("--out", help="HTML file to write (default: RES/report.html)")
    report.set_defaults(func=cmd_report)

    pred = sub.add_parser("predict", help="score images and write heat-map overlays (docs/SCALE.md: --engine ray)")
    pred.add_argument("--run", required=True, help="a fitted model directory or an export directory (deploy.json)")
    pred.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    pred.add_argument("--weights")
    pred.add_argument("--save-maps", action="store_true", help="also write raw float32 maps (.npy)")
    _add_device_args(pred, precision=False)
    pred.add_argument("--out", required=True)
    pred.add_argument("--engine", default="local", choices=["local", "ray"],
                      help="local (this process, default) | ray: a Ray Data actor pool, resumable (pip install "
                           "'generalad[ray]')")
    pred.add_argument("--address", help="ray: an existing cluster's address (default: a local cluster of this machine)")
    pred.add_argument("--workers", type=int, help="ray: actors, each loading the model once (default 2)")
    pred.add_argument("--gpus-per-worker", type=float,
                      help="ray: GPU share per actor (default 1 when the cluster has a GPU per actor, 0 without GPUs)")
    pred.add_argument("--threads", type=int, help="intra-op threads (local: of this process, default all cores; "
                      "ray: CPUs per actor, default cluster CPUs / workers); rows are identical between engines "
                      "at equal threads")
    pred.add_argument("--chunk", type=int, help="images per inference chunk = per ray shard (default the model's: "
                      "64 torch, 8 export)")
    pred.set_defaults(func=cmd_predict)

    from generalad.serve import DEFAULT_HOST, DEFAULT_PORT

    srv = sub.add_parser("serve", help="a local web app (and JSON API) to look at a model's decisions")
    srv.add_argument("--run", required=True, help="a fitted model directory or an export directory (deploy.json)")
    srv.add_argument("--images", help="a folder of images to list, scored, in a sortable table")
    srv.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    srv.add_argument("--port", type=int, default=DEFAULT_PORT)
    srv.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload (default 20)")
    srv.add_argument("--weights")
    _add_device_args(srv, precision=False)
    srv.set_defaults(func=cmd_serve)

    export = sub.add_parser("export", help="a fitted model -> ONNX / OpenVINO graph + deploy.json (runs without torch)")
    export.add_argument("--run", required=True, help="a fitted model directory")
    export.add_argument("--format", default="onnx", help="onnx (onnxruntime) | openvino")
    export.add_argument("--weights", help="backbone weights file (if not at the recorded path)")
    export.add_argument("--out", required=True, help="export directory to write")
    export.set_defaults(func=cmd_export)

    speed = sub.add_parser("speed", help="throughput of the full predict path vs the bare backbone; several --run "
                           "(torch and exported directories) are measured in one run on the same images")
    speed.add_argument("--run", required=True, nargs="+", help="model and / or export directories")
    speed.add_argument("--images", required=True)
    speed.add_argument("--batch-size", type=int, default=16)
    speed.add_argument("--repeats", type=int, default=1)
    speed.add_argument("--weights")
    _add_device_args(speed, precision=False)
    speed.set_defaults(func=cmd_speed)

    bench = sub.add_parser("benchmark", help="models x datasets x categories from a YAML file -> tables")
    bench.add_argument("config_file", metavar="CONFIG.yaml")
    bench.add_argument("--out", help="output folder (default: from the YAML file)")
    _add_device_args(bench, precision=False)
    bench.set_defaults(func=cmd_benchmark)

    clean = sub.add_parser(
        "clean", help="rank training images by how anomalous they look against the rest; flag likely anomalies"
    )
    _add_data_args(clean)
    clean.add_argument("--backbone")
    clean.add_argument("--weights")
    clean.add_argument("--seed", type=int)
    clean.add_argument("--cache-dir")
    clean.add_argument("--contaminate", type=int, help="move N anomalous test images into training first")
    clean.add_argument("--image-size", type=int)
    _add_device_args(clean)
    clean.add_argument("--statistic", default="loo_distance",
                       help="loo_distance (leave-one-out patch distance) or an InReaCh channel statistic")
    clean.add_argument("--k", type=float, default=3.0, help="flag scores above median + k * MAD")
    clean.add_argument("--kth", type=int, help="loo_distance: measure each patch against its k-th nearest other "
                       "image (default 1; 2 unmasks defects shared by pairs of images, exact, ~N^2 cost)")
    clean.add_argument("--drop-fraction", type=float,
                       help="flag this fraction of the most suspicious images instead (known contamination rate)")
    clean.add_argument("--out", required=True, help="LIST file of flagged paths (+ LIST.ranking.tsv)")
    clean.set_defaults(func=cmd_clean)

    gen = sub.add_parser("generate", help="anomalyhybrid: write N generated (anomalous image, mask) pairs, MVTec style")
    gen.add_argument("--run", required=True, help="a fitted anomalyhybrid run (holds its generator)")
    _add_data_args(gen)
    gen.add_argument("--from-split", default="train", choices=["train", "test-good"],
                     help="normal images to start from (default: the training normals)")
    gen.add_argument("--n", type=int, required=True, help="number of anomalies")
    gen.add_argument("--kinds", default="local", help="local | global | local,global")
    gen.add_argument("--mask-source", choices=["fusion", "region"], help="default: the run's")
    gen.add_argument("--seed", type=int, default=0)
    _add_device_args(gen, precision=False)
    gen.add_argument("--out", required=True, help="folder: test/<kind>/NNN.png, ground_truth/<kind>/NNN_mask.png")
    gen.set_defaults(func=cmd_generate)

    demo = sub.add_parser("demo", help="offline end-to-end run on generated data with bundled weights")
    demo.add_argument("--out", default="runs/demo")
    demo_methods = [n for n in methods if method_info(n).demo is not None]
    demo.add_argument("--model", default="all", help=" | ".join([*demo_methods, "all"]))
    demo.set_defaults(func=cmd_demo)

    doctor = sub.add_parser("doctor", help="check the environment and which weights are available")
    doctor.set_defaults(func=cmd_doctor)

    for p in (fit, test, pred, speed, bench, demo, clean, gen):
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except GeneralADError as err:
        print(f"generalad: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("generalad: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The ``generalad`` console command: tuned glibc malloc (generalad/allocator.py), then :func:`main`."""
    from generalad.allocator import reexec_with_tuned_malloc

    reexec_with_tuned_malloc()
    sys.exit(main())


if __name__ == "__main__":
    entry()
