"""GeneralAD loss (docs/methods/generalad.md §4) with the empty-set guard.

```
L = mean ℓ(clean, 0) + mean ℓ(noise_all, 1)
  + Σ_p [ mean_{m_p = 0} ℓ(partial_p, 0) + mean_{m_p = 1} ℓ(partial_p, 1) ]
```
ℓ is binary cross-entropy on logits. The two means of a partial copy pool over the whole batch (each partial
copy is class-balanced at batch level whatever k is). All weights are 1.

Empty-set guard: a partial copy whose batch has no 0-patch (or no 1-patch) contributes 0 for that term
instead of the NaN of a mean over nothing (which poisons AdamW in the official code's 1-shot runs). It is
computed as sum / max(count, 1), so no host synchronisation is needed on a GPU.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["constant_bce", "masked_bce", "partial_bce", "generalad_loss"]


def constant_bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Mean BCE of every logit against one constant label (the clean and noise-all copies)."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(target)))


def masked_bce(logits: torch.Tensor, select: torch.Tensor, target: float,
               count: torch.Tensor | None = None) -> torch.Tensor:
    """Mean BCE against ``target`` over the entries where ``select`` is True; exactly 0 if there are none.

    ``count``: divide by this many entries instead of ``select``'s (a rank's rows of a global batch: its
    share of the global mean, docs/SCALE.md §9)."""
    logits = logits.float()
    per = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, float(target)), reduction="none")
    sel = select.to(per.dtype)
    return (per * sel).sum() / (sel.sum() if count is None else count.to(per.dtype)).clamp_min(1.0)


def partial_bce(logits: torch.Tensor, labels: torch.Tensor, global_labels: torch.Tensor | None = None) -> torch.Tensor:
    """Class-balanced loss of one partial copy: mean over its 0-patches + mean over its 1-patches.

    Both means pool over the whole batch (not per image). ``global_labels``: the whole global batch's labels
    when ``logits`` / ``labels`` are one rank's rows of it; the result is then that rank's share (the means'
    denominators count the global batch), and the shares of all ranks sum to the global loss."""
    positive = labels.bool()
    if global_labels is None:
        return masked_bce(logits, ~positive, 0.0) + masked_bce(logits, positive, 1.0)
    n_pos = global_labels.bool().sum()
    n_neg = global_labels.numel() - n_pos
    return masked_bce(logits, ~positive, 0.0, n_neg) + masked_bce(logits, positive, 1.0, n_pos)


def generalad_loss(
    clean_logits: torch.Tensor,
    noise_all_logits: torch.Tensor | None = None,
    partials: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
    *,
    return_terms: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total GeneralAD loss from the logits (B, N) of each copy.

    Args:
        clean_logits: logits of the undistorted features (all labels 0).
        noise_all_logits: logits of the noise-all copy (all labels 1); None switches the term off (ablation).
        partials: ``(logits, labels)`` per partial copy; labels (B, N) bool/float, 1 = distorted.
        return_terms: also return the individual terms (detached) for logging.
    """
    terms: dict[str, torch.Tensor] = {"clean": constant_bce(clean_logits, 0.0)}
    if noise_all_logits is not None:
        terms["noise_all"] = constant_bce(noise_all_logits, 1.0)
    for i, (logits, labels) in enumerate(partials):
        terms[f"partial{i}"] = partial_bce(logits, labels)
    total = torch.stack(list(terms.values())).sum()
    if return_terms:
        return total, {k: v.detach() for k, v in terms.items()}
    return total
