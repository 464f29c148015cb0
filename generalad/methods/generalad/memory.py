"""GeneralAD's training-memory planner: how many distorted copies may share one discriminator forward.

The discriminator's attention is quadratic in the patch count (a CNN grid at 518 px, 65 × 65, needs ~40 GiB
for the default three copies of 16 images), so before training the planner compares the estimated peak
with the memory available and groups copies (same loss and gradient, docs/methods/generalad.md), or
refuses in one line when even one copy cannot fit — instead of letting the OS kill the process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from generalad.errors import ConfigError

if TYPE_CHECKING:
    from generalad.methods.generalad.config import GeneralADConfig

#: bytes held per training attention weight (scores, fp32 softmax, dropout mask, bf16 copy, saved for the
#: backward); measured 14–21 B on CPU for 784–1369 patches (peak RSS of one step), so 16 plus headroom.
_BYTES_PER_ATTENTION_WEIGHT = 16
#: share of the available memory the training attention may take (the rest: features, model, optimiser)
_MEMORY_BUDGET = 0.7


def attention_bytes(images: int, num_patches: int, heads: int) -> int:
    """Estimated peak bytes of the written-out training attention for ``images`` sequences."""
    return images * heads * num_patches * num_patches * _BYTES_PER_ATTENTION_WEIGHT


def _available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def plan_copies_per_forward(
    config: "GeneralADConfig", batch: int, num_patches: int, available: int | None = None
) -> int | None:
    """How many copies may share one forward without exhausting memory (None = all, the fastest).

    The attention is quadratic in the patch count: a CNN grid at 518 px (65 × 65) needs ~40 GiB for the
    default three copies of 16 images. Grouping copies changes neither loss nor gradient (see
    ``distortion_loss``), so the plan only trades speed for memory; if even one copy cannot fit, raise a
    ConfigError that says what to change instead of letting the OS kill the process.
    """
    copies = 1 + int(config.noise_all) + len(config.partials)
    wanted = config.copies_per_forward or copies
    available = _available_bytes() if available is None else available
    if available is None:
        return config.copies_per_forward
    budget = _MEMORY_BUDGET * available
    per_copy = attention_bytes(batch, num_patches, config.heads)
    fits = int(budget // per_copy)
    if fits >= wanted:
        return config.copies_per_forward
    if fits < 1:
        raise ConfigError(
            f"GeneralAD training on {num_patches} patches at batch {batch} needs ~{per_copy / 2**30:.1f} GiB for "
            f"attention, more than {_MEMORY_BUDGET:.0%} of the {available / 2**30:.1f} GiB available: "
            "use a smaller --image-size or --batch-size"
        )
    return fits
