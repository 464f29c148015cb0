"""RD / ARD configuration, teachers and presets (docs/methods/ard.md §2, §5).

``RDConfig`` is the faithful RD4AD baseline; ``ARDConfig`` the same with attention in the one-class
embedding switched on. Fields a preset decides default to ``None`` = "the preset's value"
(``config.resolved()`` fills them in), as GeneralAD's config does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from generalad.device import PRECISION_CHOICES
from generalad.errors import ConfigError
from generalad.methods.base import BaseConfig
from generalad.methods.rd.attention import ATTENTIONS
from generalad.methods.rd.modules import PLACEMENTS, StudentSpec

LOSSES = ("flattened", "per_position")
#: "last" epoch, or "generated": the epoch with the best mean image + pixel AUROC on held-out normals plus
#: anomalies generated from them by an anomalyhybrid run (``validation_generator``; docs/methods/ard.md §6).
#: Test-set selection is only the parity flag --select-on-test.
SELECTIONS = ("last", "generated")

#: teacher layers (strides 4, 8, 16) and the student that mirrors it (docs/methods/ard.md §2, "Teachers")
TEACHERS: dict[str, tuple[tuple[str, str, str], dict[str, Any]]] = {
    "wide_resnet50_2": (("layer1", "layer2", "layer3"),
                        {"block": "bottleneck", "oce_blocks": 3, "decoder_blocks": (3, 4, 6), "base_width": 128}),
    "resnet34": (("layer1", "layer2", "layer3"), {"block": "basic", "oce_blocks": 3, "decoder_blocks": (3, 4, 6)}),
    "resnet18": (("layer1", "layer2", "layer3"), {"block": "basic", "oce_blocks": 2, "decoder_blocks": (2, 2, 2)}),
    # inferred (no official RD on it): stride-4/8/16 stages (24/40/112 ch, signed linear-bottleneck outputs),
    # a ResNet-34-deep basic-block student whose decoder stages end without ReLU
    "efficientnet_lite0": (("blocks.1", "blocks.2", "blocks.4"),
                           {"block": "basic", "oce_blocks": 3, "decoder_blocks": (3, 4, 6), "signed_features": True}),
}

#: presets (docs/methods/ard.md §5): the fields they decide
PRESETS: dict[str, dict[str, Any]] = {
    # the official settings: 256 px, 200 epochs, batch 16 (one-class MNIST/F-MNIST/CIFAR: 32 px); lr: the
    # method's published one (``paper_lr``: RD 0.005 [RC], ARD 0.001 [SA])
    "paper": {"image_size": 256, "epochs": 200, "lr": "paper"},
    "paper_novelty": {"image_size": 32, "epochs": 200, "lr": "paper"},
    # chosen on training-loss and synthetic-defect validation curves of training data (docs/RESULTS.md)
    "cpu": {"image_size": 128, "epochs": 50, "lr": 0.005},
    "cpu_novelty": {"image_size": 32, "epochs": 30, "lr": 0.005},
}
PRESET_FIELDS = ("image_size", "epochs", "lr")


def student_spec(backbone: str, channels: tuple[int, int, int]) -> StudentSpec:
    if backbone not in TEACHERS:
        raise ConfigError(f"RD needs a CNN teacher; choose one of {', '.join(TEACHERS)} (--backbone), got {backbone!r}")
    return StudentSpec(channels=tuple(int(c) for c in channels), **TEACHERS[backbone][1])


@dataclasses.dataclass
class RDConfig(BaseConfig):
    """RD4AD options; defaults = the official code's except where docs/methods/ard.md §7 says otherwise.

    preset: "cpu" (default), "paper", "cpu_novelty", "paper_novelty" — decide image_size and epochs when
        they are None.
    loss: "flattened" (official code: cosine of each sample's whole C×H×W map) | "per_position" (paper).
    lr / betas: Adam; lr None = the preset's (paper presets: RD 0.005 as the official code, ARD 0.001 as its
        supplement; cpu presets 0.005 for both, from training-loss curves). betas (0.5, 0.999) as upstream.
    attention / attn_at / reduction: ARD's attention (attn_at "none" = RD4AD).
    map_sigma: Gaussian σ (pixels at the working size) on the summed map; image score = max of the map.
    train_precision: "auto" | "bf16" | "fp32" for the student's forward/backward (fp32 weights and loss).
    """

    backbone: str = "efficientnet_lite0"
    image_size: int | None = None  # type: ignore[assignment]
    preset: str = "cpu"
    epochs: int | None = None
    train_batch_size: int = 16
    lr: float | None = None  # None → the preset's (paper presets: ``paper_lr``)
    betas: tuple[float, float] = (0.5, 0.999)
    loss: str = "flattened"
    attention: str = "cbam"
    attn_at: str = "none"
    reduction: int = 16
    map_sigma: float = 4.0
    selection: str = "last"
    validation_generator: str | None = None  # selection="generated": a fitted anomalyhybrid run
    train_precision: str = "auto"

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown RD preset {self.preset!r}; choose from {', '.join(PRESETS)} (--preset)")
        super().__post_init__()
        self.betas = tuple(float(b) for b in self.betas)  # JSON round trip gives a list
        checks = [
            (self.backbone in TEACHERS, f"the teacher must be one of {', '.join(TEACHERS)} (--backbone), got {self.backbone!r}"),
            (self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}"),
            (self.attention in ATTENTIONS, f"attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}"),
            (self.attn_at in PLACEMENTS, f"attn_at must be one of {', '.join(PLACEMENTS)}, got {self.attn_at!r}"),
            (self.selection in SELECTIONS,
             f"selection must be 'last' or 'generated', got {self.selection!r} "
             "(test-set selection is the parity flag --select-on-test)"),
            (self.selection != "generated" or bool(self.validation_generator),
             "selection='generated' needs validation_generator=<a fitted anomalyhybrid run>"),
            (self.train_precision in PRECISION_CHOICES,
             f"train_precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.train_precision!r}"),
            (self.reduction >= 1, "reduction must be >= 1"),
            (self.map_sigma >= 0, "map_sigma must be >= 0"),
            (self.train_batch_size >= 1, "train_batch_size must be >= 1"),
            (self.epochs is None or self.epochs >= 1, "epochs must be >= 1"),
            (self.lr is None or self.lr > 0, "lr must be > 0"),
            (self.image_size is None or self.image_size >= 32, "image_size must be >= 32 (the embedding is at 1/32)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{type(self).__name__.removesuffix('Config').lower()}: {message}")

    paper_lr: ClassVar[float] = 0.005  # [RC]

    def resolved(self) -> "RDConfig":
        fill = {k: v for k, v in PRESETS[self.preset].items() if getattr(self, k) is None}
        if fill.get("lr") == "paper":
            fill["lr"] = self.paper_lr
        return dataclasses.replace(self, **fill) if fill else self


@dataclasses.dataclass
class ARDConfig(RDConfig):
    """ARD: RD4AD with CBAM on the fused map and inside every one-class-embedding block (docs/methods/ard.md §3,
    default chosen in §6); paper lr 0.001."""

    attn_at: str = "both"  # chosen on training-data validation (docs/RESULTS.md, "RD and ARD"); the note's guess: "oce"
    paper_lr: ClassVar[float] = 0.001  # [SA] (novelty experiments)
