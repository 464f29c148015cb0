"""GeneralAD (Sträter et al., ECCV 2024) as an estimator: frozen patch features → distortions →
cross-patch discriminator → top-K image score and blurred logit maps.

The training step and modules live beside this file (``core``, ``discriminator``, ...); this file connects them to the
backbone, the feature cache, calibration, model selection and the model file. Spec: shared/notes/generalad.md.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from generalad.data import Sample
from generalad.errors import ConfigError
from generalad.methods.generalad import core
from generalad.methods.base import AnomalyModel, BaseConfig
from generalad.metrics import image_auroc
from generalad.methods.generalad.discriminator import Discriminator

SELECTIONS = ("last", "validation", "oracle_test")
SIGMA_UNITS = ("absolute", "feature_std")
_CORE_FIELDS = {f.name for f in dataclasses.fields(core.GeneralADConfig)} - {"seed", "precision", "batch_size"}


@dataclasses.dataclass
class GeneralADModelConfig(BaseConfig):
    """Estimator settings. ``None`` fields take the preset's value (spec §7); anything can be overridden."""

    backbone: str = "dinov2_vits14"
    image_size: int = 518  # the paper's resolution (37 × 37 patches with /14)
    preset: str = "industrial"  # industrial | logical | semantic | near_distribution
    distortions: list[str] | None = None
    noise_all: bool | None = None
    sigma: float | None = None
    top_k: int | None = None
    top_k_mode: str = "literal"  # "literal" K, or "scaled" to keep K/1369 of the 518-px grid
    epochs: int | None = None
    semantic_epoch_size: int | None = None
    train_batch_size: int = 16
    lr: float | None = None
    weight_decay: float | None = None
    derangement: bool | None = None  # shuffles change every labelled patch; False = upstream parity
    shuffle_k_max: int | None = None
    map_sigma_at_518: float | None = None
    map_radius_at_518: int | None = None
    selection: str = "last"  # last epoch | "validation": early stopping on held-out train normals
    early_stopping_patience: int = 10
    train_precision: str = "bf16"  # discriminator forwards under bf16 autocast (fp32 master weights)
    cnn_token_norm: bool = True  # CNN features: parameter-free LayerNorm per patch, like a ViT's final LN
    # "feature_std": sigma times the std of the training features, so the distortion is equally strong on
    # any backbone (a CNN's LayerNorm-ed tokens have std 1, where both units agree). Why the default: the
    # ViT-S used here has token std 2.4 after its final LN, and with sigma = 0.25 absolute its discriminator
    # never told noisy from clean *training* features (noise-all loss at chance, ln 2, for 160 epochs).
    # "absolute": sigma as written in the spec (§3) and the official code — parity with the paper.
    sigma_unit: str = "feature_std"

    def __post_init__(self) -> None:
        if self.selection not in SELECTIONS[:2]:
            raise ConfigError(
                f"selection must be 'last' or 'validation', got {self.selection!r} (test-set selection is the "
                "parity flag --select-on-test)"
            )
        if self.sigma_unit not in SIGMA_UNITS:
            raise ConfigError(f"sigma_unit must be one of {', '.join(SIGMA_UNITS)}, got {self.sigma_unit!r}")
        self.core()  # validate early: one-line ConfigError for bad values

    def core(self) -> core.GeneralADConfig:
        """The training config: the preset, with every non-None field of this config on top."""
        overrides = {
            k: getattr(self, k) for k in _CORE_FIELDS & {f.name for f in dataclasses.fields(self)}
            if getattr(self, k) is not None
        }
        if "distortions" in overrides:
            overrides["distortions"] = tuple(overrides["distortions"])
        if self.selection == "validation":
            overrides["early_stopping_patience"] = self.early_stopping_patience
        else:
            overrides.pop("early_stopping_patience", None)
        return core.preset(
            self.preset, **overrides, seed=self.seed, precision=self.train_precision, batch_size=self.train_batch_size
        )


def _grid_of(features) -> tuple[int, int]:
    return tuple(features.maps[0].shape[-2:])


class GeneralAD(AnomalyModel):
    """``GeneralAD(backbone="dinov2_vits14", weights=..., image_size=224, preset="industrial").fit(train)``."""

    name: ClassVar[str] = "generalad"
    Config: ClassVar[type[BaseConfig]] = GeneralADModelConfig

    def __init__(self, config: GeneralADModelConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.disc_: Discriminator | None = None
        self.grid_: tuple[int, int] | None = None
        self.history_: list[dict[str, Any]] = []
        self.selection_: str = "last epoch"
        self._test_for_selection: list[Sample] | None = None

    @property
    def needs_attention(self) -> bool:  # type: ignore[override]
        return self.config.core().needs_attention and self.backbone().kind == "vit"

    # ------------------------------------------------------------------ features
    def _tokens(self, features) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, P, D) patch tokens and (N, H, P) saliency for the attention-guided distortions.

        ViT: tokens after the final LayerNorm and the CLS→patch attention. CNN: the stages resized to the
        first stage's grid and concatenated, LayerNorm-ed per patch (so σ = 0.25 has the same meaning), and
        the feature norm as a one-head saliency (stated in the model config).
        """
        maps = features.maps
        grid = _grid_of(features)
        if self.backbone().kind == "vit" and len(maps) == 1:
            tokens = maps[0].flatten(2).transpose(1, 2)
            return tokens.float(), features.attention
        stacked = torch.cat(
            [m if tuple(m.shape[-2:]) == grid else F.interpolate(m.float(), size=grid, mode="bilinear", align_corners=False)
             for m in maps], dim=1,
        ).float()
        tokens = stacked.flatten(2).transpose(1, 2)
        saliency = tokens.norm(dim=-1)
        saliency = (saliency / saliency.sum(dim=1, keepdim=True).clamp_min(1e-12)).unsqueeze(1)
        if self.config.cnn_token_norm:
            tokens = F.layer_norm(tokens, tokens.shape[-1:])
        return tokens, saliency

    # ------------------------------------------------------------------ fit
    def fit(self, samples: Sequence[Sample], *, calibration=None, progress: bool = False,
            select_on_test: Sequence[Sample] | None = None):
        """``select_on_test`` is the paper's protocol (best epoch by test AUROC): parity only, stamped."""
        self._test_for_selection = list(select_on_test) if select_on_test else None
        try:
            return super().fit(samples, calibration=calibration, progress=progress)
        finally:
            self._test_for_selection = None

    def _fit_features(self, features, samples: Sequence[Sample], *, held_out: Sequence[Sample] = ()) -> None:
        tokens, attention = self._tokens(features)
        cfg = self._training_config(tokens)
        self.grid_ = _grid_of(features)
        validation = val_attention = None
        if self.config.selection == "validation":
            if not held_out:
                raise ConfigError("selection='validation' needs held-out training normals (calibration_fraction > 0)")
            validation, val_attention = self._tokens(self.extract(held_out))
        on_epoch, best = self._oracle_callback(cfg) if self._test_for_selection else (None, None)
        self.disc_, self.history_ = core.train_discriminator(
            tokens, self.grid_, cfg, attention=attention if cfg.needs_attention else None,
            validation=validation,
            validation_attention=val_attention if cfg.needs_attention else None,
            on_epoch=on_epoch,
        )
        self.selection_ = self._selection_label(cfg, best)
        self.method_stats_ = {
            "epochs_run": len(self.history_),
            "final_loss": self.history_[-1]["loss"] if self.history_ else None,
            "selection": self.selection_,
            "grid": list(self.grid_),
            "top_k": core.resolve_top_k(cfg.top_k, self.grid_[0] * self.grid_[1], self.config.top_k_mode),
            "sigma_effective": round(cfg.sigma, 6),
        }

    def _training_config(self, tokens: torch.Tensor) -> core.GeneralADConfig:
        """The core config, with sigma converted to feature units (from training features only) if asked."""
        cfg = self.config.core()
        if self.config.sigma_unit == "feature_std":
            cfg = dataclasses.replace(cfg, sigma=cfg.sigma * float(tokens.std()))  # _tokens gives fp32
        return cfg

    def _oracle_callback(self, cfg: core.GeneralADConfig):
        """Parity with the official code: evaluate the test set after every epoch, keep the best epoch."""
        tokens, _ = self._tokens(self.extract(self._test_for_selection))
        labels = np.array([s.label for s in self._test_for_selection])
        best: dict[str, Any] = {"auroc": -1.0, "epoch": -1, "state": None}

        def on_epoch(epoch: int, disc: Discriminator) -> None:
            logits = core.patch_logits(disc, tokens, precision=self.config.train_precision)
            auroc = round(image_auroc(core.image_scores(logits, self._k(logits.shape[1])).numpy(), labels), 3)
            if auroc > best["auroc"]:  # ties → earliest, as upstream (rounded to 3 decimals)
                best.update(auroc=auroc, epoch=epoch, state=copy.deepcopy(disc.state_dict()))

        return on_epoch, best

    def _selection_label(self, cfg, best) -> str:
        if best is not None and best["state"] is not None:
            self.disc_.load_state_dict(best["state"])
            return f"test (paper parity): epoch {best['epoch']} of {cfg.epochs}, test AUROC {best['auroc']}"
        if self.config.selection == "validation":
            chosen = next((h["epoch"] for h in self.history_ if h.get("selected")), len(self.history_) - 1)
            return f"validation (held-out train normals, distortion loss): epoch {chosen}"
        return f"last epoch ({cfg.epochs})"

    # ------------------------------------------------------------------ inference
    def _k(self, num_patches: int) -> int:
        return core.resolve_top_k(self.config.core().top_k, num_patches, self.config.top_k_mode)

    def _infer_features(self, features) -> tuple[np.ndarray, torch.Tensor]:
        tokens, _ = self._tokens(features)
        grid = _grid_of(features)
        if grid != self.grid_:
            self.disc_.resize_positions(grid)
            self.grid_ = grid
        logits = core.patch_logits(self.disc_, tokens, precision=self.config.train_precision)
        return core.image_scores(logits, self._k(logits.shape[1])).numpy(), logits.reshape(-1, *grid)

    def _map_blur(self) -> tuple[float, int]:
        cfg = self.config.core()
        size = (self.config.image_size, self.config.image_size)
        return core.map_blur(size, cfg.map_sigma_at_518, cfg.map_radius_at_518)

    def _map_sigma(self) -> float:
        return self._map_blur()[0]

    def _map_radius(self) -> int | None:
        return self._map_blur()[1]

    def protocol(self) -> dict[str, Any]:
        cfg = self.config.core()
        learned = self.fit_info_  # what fit measured; restored with the model file (method_stats_ is not)
        return {
            **super().protocol(),
            "selection": self.selection_,
            "preset": self.config.preset,
            "distortions": ["noise_all"] * cfg.noise_all + list(cfg.distortions),
            "top_k": learned.get("top_k", cfg.top_k),
            "top_k_mode": self.config.top_k_mode,
            "sigma": learned.get("sigma_effective", cfg.sigma),
            "sigma_unit": self.config.sigma_unit,
            "epochs": cfg.epochs,
            "train_precision": self.config.train_precision,
            "cnn_features": "stages resized + per-patch LayerNorm; saliency = feature norm"
            if self.backbone().kind != "vit" else None,
        }

    # ------------------------------------------------------------------ persistence
    def _state(self) -> dict[str, torch.Tensor]:
        state = {f"discriminator.{k}": v for k, v in self.disc_.state_dict().items()}
        state["grid"] = torch.tensor(self.grid_, dtype=torch.int64)
        return state

    def _load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        cfg = self.config.core()
        self.grid_ = tuple(int(v) for v in tensors["grid"].tolist())
        disc_state = {k.removeprefix("discriminator."): v for k, v in tensors.items() if k.startswith("discriminator.")}
        dim = disc_state["pos_embed"].shape[-1]
        self.disc_ = Discriminator(dim, self.grid_, num_heads=cfg.heads, hidden=cfg.hidden, dropout=cfg.dropout)
        self.disc_.load_state_dict(disc_state)
        self.disc_.eval()

    def _extra_meta(self) -> dict[str, Any]:
        return {"selection": self.selection_, "history": self.history_}

    def _load_extra_meta(self, meta: dict[str, Any]) -> None:
        self.selection_ = meta.get("selection", "unknown")
        self.history_ = meta.get("history", [])
