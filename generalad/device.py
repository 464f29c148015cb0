"""Where the tensors live and at which precision the backbone runs: one place for ``--device`` / ``--precision``.

Conventions:

* A resolved device is always a ``torch.device`` with an index for CUDA (``cuda:0``, never bare ``cuda``),
  so it compares equal to ``tensor.device``. ``"auto"`` is the current CUDA device when
  ``torch.cuda.is_available()``, else the CPU (MPS/XPU are used only when asked for explicitly).
* A resolved precision is ``"bf16"`` (bfloat16 autocast, fp32 weights and outputs) or ``"fp32"``.
  ``"auto"`` picks bf16 only where the device runs it *faster* than fp32:

  - CUDA: ``torch.cuda.is_bf16_supported(including_emulation=False)`` (native bf16, Ampere and newer);
  - CPU: AMX-BF16 (Sapphire Rapids and newer) or AVX512-BF16 (Cooper Lake, Zen 4), probed with torch's
    ``torch.cpu._is_amx_tile_supported()`` / ``torch.cpu._is_avx512_bf16_supported()`` and the
    ``/proc/cpuinfo`` flags ``amx_bf16`` / ``avx512_bf16`` (either source suffices). Without them oneDNN
    emulates bf16: measured on the 2-core dev Xeon (AVX512F, no BF16 extension), a 2048×1024 @ 1024×1024
    matmul runs at 20 GFLOP/s in bf16 against 64 GFLOP/s in fp32, 3.2x slower;
  - anything else (MPS, XPU, ...): fp32, until measured.

  The environment variable ``GENERALAD_CPU_BF16`` overrides the CPU probe: ``1`` = treat the CPU as fast
  in bf16, ``0`` = not (read on every call, so tests can monkeypatch it; the hardware probe itself is cached).

Everything here is pure except :func:`cpu_model_name` and the CPU probe, which read ``/proc/cpuinfo``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import resource
import sys
from contextlib import AbstractContextManager

import torch

from generalad.errors import ConfigError

__all__ = [
    "PRECISIONS",
    "PRECISION_CHOICES",
    "CPU_BF16_ENV",
    "available_devices",
    "resolve_device",
    "resolve_precision",
    "precision_reason",
    "cpu_bf16_fast",
    "autocast",
    "synchronize",
    "peak_memory_bytes",
    "reset_peak_memory",
    "device_name",
    "cpu_model_name",
]

PRECISIONS = ("bf16", "fp32")  # what a resolved precision can be
PRECISION_CHOICES = ("auto", *PRECISIONS)  # what a user may pass (--precision)
CPU_BF16_ENV = "GENERALAD_CPU_BF16"
_CPUINFO = "/proc/cpuinfo"


# ----------------------------------------------------------------------------------------- devices
def _backend_module(kind: str):
    """torch.mps / torch.xpu / ... when that backend exists in this torch build, else None."""
    module = getattr(torch, kind, None)
    return module if module is not None and callable(getattr(module, "is_available", None)) else None


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """The devices this process can use, e.g. ``["cpu", "cuda:0", "cuda:1"]`` (what ``--device`` accepts)."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        out.append("mps")
    xpu = _backend_module("xpu")
    if xpu is not None and xpu.is_available():
        out += [f"xpu:{i}" for i in range(xpu.device_count())]
    return out


def _unavailable(spec: object, why: str) -> ConfigError:
    """One line: ``--device 'cuda': <why>; choose one of: auto, cpu, ...`` (what exists here)."""
    return ConfigError(f"--device {str(spec)!r}: {why}; choose one of: auto, {', '.join(available_devices())}")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None → ``cuda:<current>`` if CUDA is available, else ``cpu``; explicit specs are checked.

    Accepts ``"cpu"``, ``"cuda"`` (the current CUDA device), ``"cuda:N"``, ``"mps"``, ``"xpu[:N]"`` or a
    ``torch.device``. An unknown, malformed or unavailable device is a one-line ConfigError naming
    ``--device`` and the devices that exist here.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    if isinstance(spec, torch.device):
        device = spec
    elif isinstance(spec, str):
        try:
            device = torch.device(spec.strip().lower())
        except (RuntimeError, ValueError):
            raise _unavailable(spec, "not a torch device") from None
    else:
        raise _unavailable(spec, f"expected a device name or torch.device, got {type(spec).__name__}")
    kind = device.type
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise _unavailable(spec, f"{why} (torch.cuda.is_available() is False)")
        index = torch.cuda.current_device() if device.index is None else device.index
        if not 0 <= index < torch.cuda.device_count():
            raise _unavailable(spec, f"no such CUDA device ({torch.cuda.device_count()} visible)")
        return torch.device("cuda", index)
    if kind == "mps":
        if not _mps_available():
            raise _unavailable(spec, "MPS is not available (torch.backends.mps.is_available() is False)")
        return torch.device("mps")
    module = _backend_module(kind)
    if module is None or not module.is_available():
        raise _unavailable(spec, f"{kind} is not available in this torch build or machine")
    index = module.current_device() if device.index is None else device.index
    if not 0 <= index < module.device_count():
        raise _unavailable(spec, f"no such {kind} device ({module.device_count()} visible)")
    return torch.device(kind, index)


# ----------------------------------------------------------------------------------------- precision
def _cpuinfo_flags() -> set[str]:
    """The ``flags`` of the first processor in /proc/cpuinfo (empty off Linux or when unreadable)."""
    try:
        with open(_CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def _torch_probe(name: str) -> bool:
    """torch's private CPU capability probe ``torch.cpu.<name>()``; False when this torch lacks it."""
    probe = getattr(torch.cpu, name, None)
    try:
        return bool(probe()) if callable(probe) else False
    except Exception:  # noqa: BLE001 — a private probe that breaks means "not known to be there"
        return False


@functools.cache
def _cpu_bf16_probe() -> tuple[bool, str]:
    """(fast, what was found): AMX-BF16 or AVX512-BF16 per torch's probes or /proc/cpuinfo. Cached."""
    flags = _cpuinfo_flags()
    if "amx_bf16" in flags or _torch_probe("_is_amx_tile_supported"):
        return True, "AMX-BF16"
    if "avx512_bf16" in flags or _torch_probe("_is_avx512_bf16_supported"):
        return True, "AVX512-BF16"
    return False, "no AMX/AVX512-BF16"


def _cpu_override() -> bool | None:
    """GENERALAD_CPU_BF16: "1" → True, "0" → False, unset/empty → None (probe the hardware)."""
    value = os.environ.get(CPU_BF16_ENV, "").strip()
    if not value:
        return None
    if value not in ("0", "1"):
        raise ConfigError(f"{CPU_BF16_ENV} must be 0 or 1 (or unset to probe the CPU), got {value!r}")
    return value == "1"


def cpu_bf16_fast() -> bool:
    """Whether this CPU runs bf16 matmuls faster than fp32 (GENERALAD_CPU_BF16 overrides the probe)."""
    override = _cpu_override()
    return _cpu_bf16_probe()[0] if override is None else override


def _cuda_bf16_native(device: torch.device) -> bool:
    """Native (not emulated) bf16 on this CUDA device: ``torch.cuda.is_bf16_supported`` on that device."""
    check = torch.cuda.is_bf16_supported
    with torch.cuda.device(device):
        if "including_emulation" in inspect.signature(check).parameters:
            return bool(check(including_emulation=False))
        return bool(check())


def _auto_precision(device: torch.device) -> tuple[str, str]:
    """(precision, reason) that ``"auto"`` resolves to on ``device``."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if _cuda_bf16_native(device):
            return "bf16", f"{device} ({name}) with native bf16: bf16"
        major, minor = torch.cuda.get_device_capability(device)
        return "fp32", f"{device} ({name}, compute capability {major}.{minor}) without native bf16: fp32"
    if device.type == "cpu":
        override = _cpu_override()
        if override is not None:
            return ("bf16" if override else "fp32"), f"cpu, {CPU_BF16_ENV}={int(override)}: {'bf16' if override else 'fp32'}"
        fast, found = _cpu_bf16_probe()
        if fast:
            return "bf16", f"cpu with {found}: bf16"
        return "fp32", "cpu without AMX/AVX512-BF16: fp32 (bf16 matmul ~3-4x slower here)"
    return "fp32", f"{device.type}: fp32 (bf16 speed not measured for this device type)"


def resolve_precision(spec: str, device: torch.device | str) -> str:
    """``"auto"`` → ``"bf16"`` where ``device`` runs bf16 faster than fp32, else ``"fp32"`` (module docstring).

    ``"bf16"`` and ``"fp32"`` pass through unchanged (even where bf16 is emulated: asked for, given).
    Anything else is a one-line ConfigError naming ``--precision``.
    """
    value = spec.strip().lower() if isinstance(spec, str) else spec
    if value not in PRECISION_CHOICES:
        raise ConfigError(f"unknown precision {spec!r} (--precision); choose one of: {', '.join(PRECISION_CHOICES)}")
    if value != "auto":
        return value
    return _auto_precision(torch.device(device))[0]


def precision_reason(device: torch.device | str) -> str:
    """One line saying what ``"auto"`` gives on ``device`` and why, for result records.

    e.g. ``"cpu without AMX/AVX512-BF16: fp32 (bf16 matmul ~3-4x slower here)"``,
    ``"cuda:0 (NVIDIA H200) with native bf16: bf16"``.
    """
    return _auto_precision(torch.device(device))[1]


def autocast(device: torch.device | str, precision: str) -> AbstractContextManager:
    """bfloat16 autocast on ``device`` for ``"bf16"``; a ``nullcontext`` for ``"fp32"`` (no-op: tensors keep
    their dtype, and an enclosing autocast stays in force). ``"auto"`` must be resolved first."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    if precision == "fp32":
        return contextlib.nullcontext()
    raise ConfigError(f"unknown precision {precision!r} for autocast; choose one of: {', '.join(PRECISIONS)}")


# ----------------------------------------------------------------------------------------- benchmarks
def synchronize(device: torch.device | str) -> None:
    """Wait until the work queued on ``device`` has finished (a no-op on the CPU): call before reading a clock."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        module = _backend_module(device.type)
        sync = getattr(module, "synchronize", None) if module is not None else None
        if callable(sync):
            sync()


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # Linux reports KiB, macOS bytes


def peak_memory_bytes(device: torch.device | str) -> int:
    """Peak memory so far: ``torch.cuda.max_memory_allocated`` on CUDA (tensors only, since the last
    :func:`reset_peak_memory`), the process's peak RSS elsewhere (never reset: the peak since start-up)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return _peak_rss_bytes()


def reset_peak_memory(device: torch.device | str) -> None:
    """Restart the CUDA peak counter of ``device`` (a no-op elsewhere: the RSS peak cannot be reset)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


@functools.cache
def cpu_model_name() -> str:
    """The CPU's ``model name`` from /proc/cpuinfo (``platform.processor()`` elsewhere, "" if unknown)."""
    try:
        with open(_CPUINFO, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform

    return platform.processor()


def device_name(device: torch.device | str) -> str:
    """Human-readable hardware name: ``torch.cuda.get_device_name`` on CUDA, the CPU model on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return cpu_model_name() or "cpu"
    return str(device)
