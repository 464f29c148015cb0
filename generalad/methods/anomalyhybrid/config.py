"""AnomalyHybrid configuration and presets (docs/methods/anomalyhybrid.md §6).

Fields left ``None`` are filled from the preset by ``resolved()`` (the constructor never rewrites them):

* ``paper``: 256 px, generator widths 64-128-256-512, 250 epochs at batch 28, Adam 2e-4 with linear decay
  ([SH]); detector base width 64, 200 epochs × 500 samples, batch 8, Adam 1e-4 × 0.2 at 80 % / 90 % ([AD]).
* ``cpu`` (default): 128 px, widths 32-64-128-256 (≈ 4 M parameters), 600 steps at batch 8, Adam 1e-3 with
  linear decay (at 2e-4 the fusion map had not separated changed from unchanged pixels after 150 steps on
  bottle training pairs: mean M 0.21 / 0.19; at 1e-3: 0.39 / 0.31 with the balanced mask loss); detector base
  16, 16 epochs × 500 samples — sized to the issue's 30 / 20 minute budgets on 2 cores (docs/RESULTS.md).
* ``smoke``: 64 px, tiny widths, a few steps — tests and the demo only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from generalad.errors import ConfigError
from generalad.methods.anomalyhybrid.manipulate import OPERATORS, REGIONS
from generalad.methods.anomalyhybrid.structure import StructureSources
from generalad.methods.base import BaseConfig

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"image_size": 256, "gen_widths": (64, 128, 256, 512), "gen_steps": None, "gen_epochs": 250,
              "gen_batch": 28, "gen_lr": 2e-4, "det_base": 64, "det_epochs": 200, "n_generated": 2000},
    "cpu": {"image_size": 128, "gen_widths": (32, 64, 128, 256), "gen_steps": 600, "gen_epochs": None,
            "gen_batch": 8, "gen_lr": 1e-3, "det_base": 16, "det_epochs": 16, "n_generated": 1000},
    "smoke": {"image_size": 64, "gen_widths": (8, 16, 32, 64), "gen_steps": 4, "gen_epochs": None,
              "gen_batch": 4, "gen_lr": 1e-3, "det_base": 4, "det_epochs": 1, "n_generated": 16},
}
MASK_SOURCES = ("fusion", "region")
MODALITIES = ("rgb", "depth", "rgbd")  # which detectors: RGB, sensor depth, or both fused (docs §4)


@dataclasses.dataclass
class AnomalyHybridConfig(BaseConfig):
    """AnomalyHybrid: structure-conditioned anomaly generator + DRAEM-style UNet detector.

    backbone: always "pixels" — the detector reads RGB; the generator's perceptual network is ``perceptual``.
    edges / depth: structure sources (generalad.methods.anomalyhybrid.structure), named in every record.
    generator: a fitted anomalyhybrid run (or ``generalad generate`` generator) whose generator is reused.
    gen_*: generator training (steps win over epochs); lambda_*: loss weights (ours, docs §3).
    operators / regions / region_area / mask_source: the local anomalies the detector is trained on
        (region_area None: 0.3–3 % of the image; (low, high): that fraction, drawn log-uniformly).
    modality: "rgb" | "depth" | "rgbd" detectors (depth ones need MVTec 3D-AD sensor depth).
    det_*: detector (``det_samples`` per epoch, half normal / half generated).
    """

    backbone: str = "pixels"
    image_size: int | None = None  # type: ignore[assignment]
    preset: str = "cpu"
    edges: str = "sobel_nms"
    depth: str = "pseudo"
    perceptual: str = "efficientnet_lite0"
    perceptual_weights: str | None = None
    generator: str | None = None
    gen_widths: tuple[int, ...] | None = None
    gen_steps: int | None = None
    gen_epochs: int | None = None
    gen_batch: int | None = None
    gen_lr: float | None = None
    lambda_l1: float = 10.0
    lambda_perceptual: float = 10.0
    lambda_gan: float = 1.0
    lambda_mask: float = 1.0
    lambda_fusion: float = 0.0
    operators: tuple[str, ...] = tuple(OPERATORS)
    regions: tuple[str, ...] = REGIONS
    region_area: tuple[float, float] | None = None
    mask_source: str = "fusion"
    n_generated: int | None = None
    det_base: int | None = None
    det_epochs: int | None = None
    det_samples: int = 500
    det_batch: int = 8
    det_lr: float = 1e-4
    modality: str = "rgb"
    train_precision: str = "auto"

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"anomalyhybrid: unknown preset {self.preset!r}; choose from {', '.join(PRESETS)} (--preset)")
        super().__post_init__()
        for name in ("gen_widths", "operators", "regions", "region_area"):  # JSON round trip gives lists
            if getattr(self, name) is not None:
                setattr(self, name, tuple(getattr(self, name)))
        StructureSources(self.edges, self.depth)  # validates both names
        checks = [
            (self.backbone == "pixels", "the detector reads pixels: backbone must be 'pixels' "
                                        f"(the perceptual network is --set perceptual=...), got {self.backbone!r}"),
            (bool(self.operators) and set(self.operators) <= set(OPERATORS),
             f"operators must be a non-empty subset of {', '.join(OPERATORS)}, got {self.operators!r}"),
            (bool(self.regions) and set(self.regions) <= set(REGIONS), f"regions must be a subset of {', '.join(REGIONS)}"),
            (self.region_area is None or (len(self.region_area) == 2 and 0 < self.region_area[0] <= self.region_area[1] <= 1),
             f"region_area must be (low, high) fractions of the image with 0 < low <= high <= 1, got {self.region_area!r}"),
            (self.mask_source in MASK_SOURCES, f"mask_source must be one of {', '.join(MASK_SOURCES)}"),
            (self.modality in MODALITIES, f"modality must be one of {', '.join(MODALITIES)}, got {self.modality!r}"),
            (self.modality == "rgb" or self.depth == "sensor",
             f"modality {self.modality!r} needs sensor depth (MVTec 3D-AD): --depth sensor"),
            (self.image_size is None or (self.image_size >= 32 and self.image_size % 32 == 0),
             "image_size must be a multiple of 32 (the UNet pools 5 times)"),
            (self.gen_steps is None or self.gen_steps >= 1, "gen_steps must be >= 1"),
            (self.gen_lr is None or self.gen_lr > 0, "gen_lr must be > 0"),
            (self.det_epochs is None or self.det_epochs >= 1, "det_epochs must be >= 1"),
            (self.n_generated is None or self.n_generated >= 1, "n_generated must be >= 1"),
            (min(self.det_samples, self.det_batch) >= 1, "det_samples and det_batch must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"anomalyhybrid: {message}")
        if not self.active_operators():
            raise ConfigError("anomalyhybrid: depth='none' switches the depth decoder off; give an edge operator "
                              f"({', '.join(op for op, d in OPERATORS.items() if d == 'edges')})")

    def resolved(self) -> "AnomalyHybridConfig":
        fill = {k: v for k, v in PRESETS[self.preset].items() if getattr(self, k) is None}
        return dataclasses.replace(self, **fill) if fill else self

    def active_operators(self) -> tuple[str, ...]:
        """The operators that can run: without depth, only the edge-map ones."""
        return tuple(op for op in self.operators if self.depth != "none" or OPERATORS[op] == "edges")

    def sources(self) -> StructureSources:
        return StructureSources(self.edges, self.depth)
