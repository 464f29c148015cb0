"""Keep glibc from returning big buffers to the kernel after every step (docs/ARCHITECTURE.md, "Speed").

glibc serves allocations above ``mmap_threshold`` (128 KiB, growing dynamically to at most 32 MiB) with a fresh
``mmap`` and gives them back with ``munmap`` on ``free``; torch's CPU allocator frees its large temporaries after
every op. A training step or a kNN block therefore maps, faults in and unmaps the same hundreds of MiB again
and again: ≈ 145,000 minor page faults per second and 12 % of the CPU time in the kernel in a GeneralAD fit
(measured; docs/RESULTS.md, "Speed (issue 17)"). With both thresholds raised, freed blocks stay in the heap
and are reused.

``mallopt`` cannot do it from inside the process (it refuses an mmap threshold above 32 MiB, and the dynamic
threshold only ever reaches that), but the ``GLIBC_TUNABLES`` environment variable, read once at start-up, can.
So the command-line entry point re-executes itself once with the tunables set (:func:`reexec_with_tuned_malloc`);
``GENERALAD_MALLOC=default`` turns it off. Library users who want the same set the variable themselves:

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184 python ...

The cost: memory freed by the program is kept for reuse instead of returned, so RSS stays at its peak (the
peak itself is unchanged: the same buffers exist at the same time).
"""

from __future__ import annotations

import os
import platform
import sys

TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184"
ENV_SWITCH = "GENERALAD_MALLOC"  # "default" = leave glibc as it is
_MARK = "GENERALAD_MALLOC_TUNED"  # set in the re-executed process, so it happens once


def _is_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def tuned_environment(env: dict[str, str]) -> dict[str, str] | None:
    """``env`` with the tunables added (keeping the user's own), or None when nothing should change."""
    if env.get(ENV_SWITCH, "").strip().lower() == "default" or env.get(_MARK) or not _is_glibc():
        return None
    current = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.mmap_threshold" in current or "glibc.malloc.trim_threshold" in current:
        return None  # the user chose their own thresholds
    return {**env, "GLIBC_TUNABLES": f"{current}:{TUNABLES}" if current else TUNABLES, _MARK: "1"}


def reexec_with_tuned_malloc(module: str = "generalad.cli") -> None:
    """Replace this process by ``python -m <module> <same args>`` with the tunables set; no-op when not needed."""
    env = tuned_environment(dict(os.environ))
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)
    except OSError:  # an exotic interpreter set-up: run untuned rather than not at all
        return
