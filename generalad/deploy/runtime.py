"""The two runtimes an exported graph runs on: onnxruntime (``model.onnx``) and OpenVINO (``model.xml``).

Both take the (B, 3, S, S) float32 batch and return (scores (B,), maps (B, S, S)) as numpy arrays, and read
back the ``generalad`` metadata the exporter wrote into the graph, so ``Inferencer`` can check it against
``deploy.json``. Imported lazily: a user of one runtime does not need the other installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from generalad.errors import ConfigError, InputError, one_line

GRAPH_META_KEY = "generalad"  # ONNX metadata_props key / OpenVINO rt_info key holding the JSON metadata


class OnnxRuntime:
    """``onnxruntime.InferenceSession`` on the CPU provider (fp32)."""

    name = "onnxruntime"

    def __init__(self, graph: Path, *, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("onnxruntime is not installed: pip install 'generalad[export]' (or onnxruntime)") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 — truncated / corrupt protobuf, unsupported opset
            raise InputError(f"cannot load exported graph {graph}: {one_line(err)}") from None
        self.version = ort.__version__
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = list(self.session.get_inputs()[0].shape)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def graph_metadata(self) -> dict[str, Any] | None:
        text = self.session.get_modelmeta().custom_metadata_map.get(GRAPH_META_KEY)
        return None if text is None else json.loads(text)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = self.session.run(self.output_names, {self.input_name: batch})
        return scores, maps


class OpenVINORuntime:
    """OpenVINO ``CompiledModel`` on the CPU device; ``precision="f32"`` by default (parity with torch)."""

    name = "openvino"

    def __init__(self, graph: Path, *, threads: int | None = None, precision: str = "f32") -> None:
        try:
            import openvino as ov
        except ImportError:
            raise ConfigError("openvino is not installed: pip install 'generalad[export]' (or openvino)") from None
        core = ov.Core()
        try:
            self.model = core.read_model(str(graph))
        except Exception as err:  # noqa: BLE001
            raise InputError(f"cannot load exported graph {graph}: {one_line(err)}") from None
        # OpenVINO runs bf16 by default on CPUs with AMX / AVX512-BF16; f32 keeps scores equal to torch's fp32
        # and no dynamic int8 quantisation of fully-connected layers (on by default in recent CPU plugins: ~1 % error
        # on a ViT measured here)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                                  "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(self.model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.version = ov.__version__ if hasattr(ov, "__version__") else ov.get_version()
        self.precision = precision
        self.input_shape = [d.get_length() if d.is_static else "batch" for d in self.model.inputs[0].get_partial_shape()]

    def graph_metadata(self) -> dict[str, Any] | None:
        if not self.model.has_rt_info([GRAPH_META_KEY]):
            return None
        return json.loads(self.model.get_rt_info([GRAPH_META_KEY]).astype(str))

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.request.infer({0: batch})
        return np.asarray(out[self.compiled.outputs[0]]), np.asarray(out[self.compiled.outputs[1]])


RUNTIMES = {"onnx": OnnxRuntime, "openvino": OpenVINORuntime}
