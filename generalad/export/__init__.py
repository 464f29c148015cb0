"""``generalad export``: a fitted model → one ONNX / OpenVINO graph + ``deploy.json`` (docs/DEPLOY.md).

The graph is ``AnomalyModel.export_module()`` traced with torch's dynamo ONNX exporter (dynamic batch size):
pre-processed (B, 3, S, S) images → raw image scores (B,) and maps (B, S, S) at the working size. The
threshold, working size, normalisation constants, method, backbone and weights sha256 are metadata — in
``deploy.json`` beside the graph and repeated inside it (ONNX ``metadata_props`` / OpenVINO ``rt_info``) —
never operations in the graph. Right after writing, the graph is run with its runtime on a fixed batch and
compared with the torch module; the figures go into ``deploy.json`` (``export_check``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generalad import __version__
from generalad.deploy.inferencer import CHECKED_KEYS, FORMAT_VERSION, GRAPH_FILES, META_FILE, check_runtime_choice
from generalad.deploy.runtime import GRAPH_META_KEY, RUNTIMES
from generalad.errors import ConfigError
from generalad.io import AtomicDir, atomic_write_json, sha256_file, to_jsonable

OPSET = 18
CHECK_BATCH = 2  # images in the post-export comparison (a batch > 1 exercises the dynamic batch axis)


def export_metadata(model, fmt: str) -> dict[str, Any]:
    """What ``deploy.json`` says about the model (the graph's own metadata repeats ``CHECKED_KEYS``)."""
    from generalad.backbones.cache import PREPROCESS_VERSION

    bb = model.backbone()
    desc = model.describe()
    size = model.working_size
    return {
        "format_version": FORMAT_VERSION,
        "format": fmt,
        "model": model.name,
        "backbone": desc["backbone"],
        "weights_sha256": desc["weights_sha256"],
        "image_size": size,
        "input": {"name": "images", "layout": "NCHW", "dtype": "float32", "size": [size, size],
                  "mean": list(bb.mean), "std": list(bb.std), "resize": PREPROCESS_VERSION,
                  "jpeg_draft": bool(model.config.jpeg_draft)},
        "outputs": {"scores": "raw image scores (B,), higher = more anomalous",
                    "maps": f"raw anomaly maps (B, {size}, {size}) at the working size"},
        "threshold": float(model.threshold_),
        "pixel_threshold": model.pixel_threshold_,
        "calibration": model.calibration_.to_dict(),
        "pixel_calibration": model.pixel_calibration_.to_dict(),
        "describe": {**desc, "precision": "fp32"},
        "protocol": model.protocol(),
        "generalad_version": __version__,
        "torch_version": torch.__version__,
        "opset": OPSET,
    }


def _trace_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation / fallback chatter is not the user's concern
        program = torch.onnx.export(module, (example,), dynamo=True, opset_version=OPSET, input_names=["images"],
                                    output_names=["scores", "maps"], dynamic_shapes=({0: batch},), verbose=False)
    program.save(str(path), external_data=False)


def _write_graph_metadata(path: Path, inside: dict[str, Any]) -> None:
    import onnx

    graph = onnx.load(str(path))
    entry = graph.metadata_props.add()
    entry.key, entry.value = GRAPH_META_KEY, json.dumps(to_jsonable(inside), sort_keys=True)
    onnx.save(graph, str(path))


def _to_openvino(onnx_path: Path, xml_path: Path, inside: dict[str, Any]) -> None:
    try:
        import openvino as ov
    except ImportError:
        raise ConfigError("openvino is not installed: pip install 'generalad[export]' (or openvino)") from None
    ov_model = ov.convert_model(str(onnx_path))
    ov_model.set_rt_info(json.dumps(to_jsonable(inside), sort_keys=True), [GRAPH_META_KEY])
    ov.save_model(ov_model, str(xml_path), compress_to_fp16=False)  # fp16 weights would break fp32 parity


def _example_batch(model) -> torch.Tensor:
    """A fixed batch of normalised noise (seeded): the trace input and the post-export comparison."""
    g = torch.Generator().manual_seed(0)
    size = model.working_size
    return torch.randn(CHECK_BATCH, 3, size, size, generator=g)


def export_model(model, out_dir: str | Path, *, fmt: str = "onnx", source_run: str | None = None) -> Path:
    """Write ``out_dir`` (atomically): the graph, ``deploy.json``; returns the directory."""
    fmt = check_runtime_choice(fmt)
    model._check_fitted()
    if model.device.type != "cpu":
        raise ConfigError("export runs on the CPU: load the model with --device cpu")
    module = model.export_module()
    example = _example_batch(model)
    meta = {**export_metadata(model, fmt), "source_run": source_run}
    inside = {k: meta[k] for k in CHECKED_KEYS}
    out = Path(out_dir)
    with AtomicDir(out) as tmp:
        onnx_path = tmp / GRAPH_FILES["onnx"]
        _trace_onnx(module, example, onnx_path)
        _write_graph_metadata(onnx_path, inside)
        graph = onnx_path
        if fmt == "openvino":
            graph = tmp / GRAPH_FILES["openvino"]
            _to_openvino(onnx_path, graph, inside)
            onnx_path.unlink()
        meta["graph"], meta["graph_sha256"] = graph.name, sha256_file(graph)
        meta["export_check"] = _check(module, example, RUNTIMES[fmt](graph))
        atomic_write_json(tmp / META_FILE, meta)
    return out


def _check(module: torch.nn.Module, example: torch.Tensor, runtime) -> dict[str, Any]:
    """Largest relative differences runtime vs torch module on the export's example batch."""
    with torch.inference_mode():
        t_scores, t_maps = (t.numpy() for t in module(example))
    r_scores, r_maps = runtime.run(example.numpy())

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).max() / max(float(np.abs(b).max()), 1e-12))

    return {"runtime": f"{runtime.name} {runtime.version}", "batch": int(example.shape[0]),
            "max_rel_score_diff": rel(r_scores, t_scores), "max_rel_map_diff": rel(r_maps, t_maps)}
