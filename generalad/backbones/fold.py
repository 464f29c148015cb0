"""Fold frozen BatchNorm into the convolution before it (docs/ARCHITECTURE.md, "How the frozen CNNs run fast").

A frozen CNN in eval mode computes ``bn(conv(x)) = γ·(W∗x + b − μ)/√(σ² + ε) + β`` — an affine map per
output channel that can be written into the convolution itself: ``W' = W·s``, ``b' = (b − μ)·s + β`` with
``s = γ/√(σ² + ε)``. The network then skips one full read and write of every pre-activation map. Measured
on a 2-core Intel Xeon (AVX512F, no AMX), fp32, batch 16 at 224 px: EfficientNet-Lite0 up to ``blocks.4``
13.3 → 10.2 ms per image; outputs differ by ≤ 3e-6 relative (fp32 rounding of the folded weights).

Which BatchNorm follows which convolution is found by running the network once and matching tensors: a
BatchNorm folds only when its input *is* the output object of the convolution that ran just before it. The
folded network is then checked against the original on the probe input and discarded (the original kept)
if any output moves by more than ``tolerance`` — e.g. when a convolution's raw output also fed another op.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["fold_batchnorm"]


def _conv_bn_pairs(
    model: nn.Module, probe: torch.Tensor, keep: frozenset[nn.Module] = frozenset()
) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(conv, bn) pairs where ``bn``'s input is the output tensor of ``conv``, from one forward of ``probe``;
    none whose conv is in ``keep`` (a tapped raw convolution output must stay the raw output)."""
    last: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def after_conv(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        last["conv"] = (module, output)

    def after_bn(module: nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        conv = last.get("conv")
        if conv is not None and inputs and conv[1] is inputs[0]:
            pairs.append((conv[0], module))  # type: ignore[arg-type]

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module not in keep:
            handles.append(module.register_forward_hook(after_conv))
        elif isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
            handles.append(module.register_forward_hook(after_bn))
    try:
        with torch.inference_mode():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    # a module used twice in one forward (shared weights) cannot be folded for one use only
    convs = [c for c, _ in pairs]
    bns = [b for _, b in pairs]
    return [(c, b) for c, b in pairs if convs.count(c) == 1 and bns.count(b) == 1]


def _after_fold(bn: nn.BatchNorm2d) -> nn.Module:
    """What stays of ``bn`` once its affine map lives in the convolution: timm's BatchNormAct2d keeps its
    drop + activation (identity drop in eval), a plain BatchNorm2d nothing."""
    act = getattr(bn, "act", None)
    if isinstance(act, nn.Module):
        drop = getattr(bn, "drop", None)
        return nn.Sequential(drop, act) if isinstance(drop, nn.Module) else act
    return nn.Identity()


def _outputs(model: nn.Module, probe: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        out = model(probe)
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for t in out if isinstance(t, torch.Tensor)]
    return [t for t in vars(out).values() if isinstance(t, torch.Tensor)]


def fold_batchnorm(
    model: nn.Module, probe: torch.Tensor, *, keep: Iterable[str] = (), tolerance: float = 1e-4
) -> tuple[nn.Module, int]:
    """(a folded copy of ``model``, number of BatchNorms folded) — or (``model``, 0) when nothing folds or
    the copy's outputs on ``probe`` differ from the original's by more than ``tolerance`` (relative to the
    largest magnitude). ``model`` must be in eval mode; its whole forward (not a tapped layer) is compared.
    ``keep``: names of convolutions whose raw output is read (tapped layers); they are not folded.
    """
    folded = copy.deepcopy(model)
    keep_modules = frozenset(folded.get_submodule(name) for name in keep)
    pairs = _conv_bn_pairs(folded, probe, keep_modules)
    if not pairs:
        return model, 0
    names = {module: name for name, module in folded.named_modules()}
    with torch.no_grad():
        for conv, bn in pairs:
            scale = torch.rsqrt(bn.running_var + bn.eps)
            shift = -bn.running_mean * scale
            if bn.affine:
                scale, shift = scale * bn.weight, shift * bn.weight + bn.bias
            bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
            conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.ndim - 1))))
            conv.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
            parent_name, _, leaf = names[bn].rpartition(".")
            setattr(folded.get_submodule(parent_name) if parent_name else folded, leaf, _after_fold(bn))
    folded.train(False).requires_grad_(False)
    for a, b in zip(_outputs(model, probe), _outputs(folded, probe), strict=True):
        if a.shape != b.shape or float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) > tolerance:
            return model, 0
    return folded, len(pairs)
