"""GeneralAD (Sträter et al., ECCV 2024) as an estimator: frozen patch features → distortions →
cross-patch discriminator → top-K image score and blurred logit maps.

The training step and modules live beside this file (``core``, ``discriminator``, ...); this file connects them to the
backbone, the feature cache, calibration, model selection and the model file. Method doc:
docs/methods/generalad.md.
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
from generalad.methods.base import AnomalyModel, BaseConfig
from generalad.methods.generalad import core
from generalad.methods.generalad.config import GeneralADConfig
from generalad.methods.generalad.discriminator import Discriminator
from generalad.metrics import image_auroc

def _grid_of(features) -> tuple[int, int]:
    return tuple(features.maps[0].shape[-2:])


def patch_tokens(maps: list[torch.Tensor], attention: torch.Tensor | None, *, vit: bool,
                 cnn_token_norm: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N, P, D) patch tokens and (N, H, P) saliency from backbone maps (the estimator and the export share it).

    ViT: tokens after the final LayerNorm and the CLS→patch attention. CNN: the stages resized to the
    first stage's grid and concatenated, LayerNorm-ed per patch (so σ = 0.25 has the same meaning), and
    the feature norm as a one-head saliency (stated in the model config).
    """
    grid = tuple(maps[0].shape[-2:])
    if vit and len(maps) == 1:
        return maps[0].flatten(2).transpose(1, 2).float(), attention
    stacked = torch.cat(
        [m if tuple(m.shape[-2:]) == grid else F.interpolate(m.float(), size=grid, mode="bilinear", align_corners=False)
         for m in maps], dim=1,
    ).float()
    tokens = stacked.flatten(2).transpose(1, 2)
    saliency = tokens.norm(dim=-1)
    saliency = (saliency / saliency.sum(dim=1, keepdim=True).clamp_min(1e-12)).unsqueeze(1)
    if cnn_token_norm:
        tokens = F.layer_norm(tokens, tokens.shape[-1:])
    return tokens, saliency


class GeneralAD(AnomalyModel):
    """``GeneralAD(backbone="dinov2_vits14", weights=..., image_size=224, preset="industrial").fit(train)``."""

    name: ClassVar[str] = "generalad"
    Config: ClassVar[type[BaseConfig]] = GeneralADConfig

    def __init__(self, config: GeneralADConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.disc_: Discriminator | None = None
        self.grid_: tuple[int, int] | None = None
        self.history_: list[dict[str, Any]] = []
        self.selection_: str = "last epoch"
        self._test_for_selection: list[Sample] | None = None

    @property
    def needs_attention(self) -> bool:  # type: ignore[override]
        return self.hparams.needs_attention and self.backbone().kind == "vit"

    def _is_fitted(self) -> bool:
        return self.disc_ is not None

    # ------------------------------------------------------------------ features
    def _tokens(self, features) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, P, D) patch tokens and (N, H, P) saliency for the attention-guided distortions (:func:`patch_tokens`)."""
        return patch_tokens(features.maps, features.attention, vit=self.backbone().kind == "vit",
                            cnn_token_norm=self.config.cnn_token_norm)

    # ------------------------------------------------------------------ fit
    def fit(self, samples: Sequence[Sample], *, calibration=None, progress: bool = False,
            select_on_test: Sequence[Sample] | None = None):
        """``select_on_test`` is the paper's protocol (best epoch by test AUROC): parity only, stamped."""
        self._test_for_selection = list(select_on_test) if select_on_test else None
        try:
            return super().fit(samples, calibration=calibration, progress=progress)
        finally:
            self._test_for_selection = None

    def _fit_features(self, features, samples: Sequence[Sample], *, held_out=None) -> None:
        tokens, attention = self._tokens(features)
        cfg = self._training_config(tokens)
        self.grid_ = _grid_of(features)
        validation = val_attention = None
        if self.config.selection == "validation":
            if held_out is None:
                raise ConfigError("selection='validation' needs held-out training normals (calibration_fraction > 0)")
            validation, val_attention = self._tokens(held_out)  # extracted once by the base estimator
        on_epoch, best = self._oracle_callback(cfg) if self._test_for_selection else (None, None)
        self.disc_, self.history_ = core.train_discriminator(
            tokens, self.grid_, cfg, attention=attention if cfg.needs_attention else None,
            validation=validation,
            validation_attention=val_attention if cfg.needs_attention else None,
            on_epoch=on_epoch, device=self.device, progress=self._progress,
        )
        self.selection_ = self._selection_label(cfg, best)
        self.method_stats_ = {
            "epochs_run": len(self.history_),
            "final_loss": self.history_[-1]["loss"] if self.history_ else None,
            "selection": self.selection_,
            "grid": list(self.grid_),
            "top_k": core.resolve_top_k(cfg.top_k, self.grid_[0] * self.grid_[1], self.config.top_k_mode),
            "sigma_effective": round(cfg.sigma, 6),
            "train_precision": cfg.train_precision,
        }

    def _training_config(self, tokens: torch.Tensor) -> GeneralADConfig:
        """The resolved config for training: train precision for this device, and sigma converted to
        feature units (from training features only) when ``sigma_unit="feature_std"``."""
        cfg = dataclasses.replace(self.hparams, train_precision=self._train_precision())
        if self.config.sigma_unit == "feature_std":
            cfg = dataclasses.replace(cfg, sigma=cfg.sigma * float(tokens.std()))  # _tokens gives fp32
        return cfg

    def _train_precision(self) -> str:
        from generalad.device import resolve_precision

        return resolve_precision(self.config.train_precision, self.device)

    def _oracle_callback(self, cfg: GeneralADConfig):
        """Parity with the official code: evaluate the test set after every epoch, keep the best epoch."""
        tokens, _ = self._tokens(self.extract(self._test_for_selection))
        labels = np.array([s.label for s in self._test_for_selection])
        best: dict[str, Any] = {"auroc": -1.0, "epoch": -1, "state": None}

        def on_epoch(epoch: int, disc: Discriminator) -> None:
            logits = core.patch_logits(disc, tokens, precision=cfg.train_precision)
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
        return core.resolve_top_k(self.hparams.top_k, num_patches, self.config.top_k_mode)

    def _infer_features(self, features) -> tuple[np.ndarray, torch.Tensor]:
        tokens, _ = self._tokens(features)
        grid = _grid_of(features)
        if grid != self.grid_:
            self.disc_.resize_positions(grid)
            self.grid_ = grid
        logits = core.patch_logits(self.disc_, tokens, precision=self._train_precision())
        return core.image_scores(logits, self._k(logits.shape[1])).numpy(), logits.reshape(-1, *grid)

    def _export_head(self) -> torch.nn.Module:
        from generalad.methods.generalad.export import GeneralADHead

        return GeneralADHead(self.disc_, self._k(self.grid_[0] * self.grid_[1]), vit=self.backbone().kind == "vit",
                             cnn_token_norm=self.config.cnn_token_norm)

    def _map_blur(self) -> tuple[float, int]:
        cfg = self.hparams
        size = (self.config.image_size, self.config.image_size)
        return core.map_blur(size, cfg.map_sigma_at_518, cfg.map_radius_at_518)

    def _map_sigma(self) -> float:
        return self._map_blur()[0]

    def _map_radius(self) -> int | None:
        return self._map_blur()[1]

    def protocol(self) -> dict[str, Any]:
        cfg = self.hparams
        learned = self.fit_info_  # what fit measured; restored with the model file (method_stats_ is not)
        return {
            **super().protocol(),
            "selection": self.selection_,
            "preset": self.config.preset,
            "distortions": ["noise_all"] * cfg.noise_all + list(cfg.partials),
            "top_k": learned.get("top_k", cfg.top_k),
            "top_k_mode": self.config.top_k_mode,
            "sigma": learned.get("sigma_effective", cfg.sigma),
            "sigma_unit": self.config.sigma_unit,
            "epochs": cfg.epochs,
            "train_precision": learned.get("train_precision", self._train_precision()),
            "cnn_features": "stages resized + per-patch LayerNorm; saliency = feature norm"
            if self.backbone().kind != "vit" else None,
        }

    # ------------------------------------------------------------------ persistence
    def _state(self) -> dict[str, torch.Tensor]:
        state = {f"discriminator.{k}": v for k, v in self.disc_.state_dict().items()}
        state["grid"] = torch.tensor(self.grid_, dtype=torch.int64)
        return state

    def _load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        cfg = self.hparams
        self.grid_ = tuple(int(v) for v in tensors["grid"].tolist())
        disc_state = {k.removeprefix("discriminator."): v for k, v in tensors.items() if k.startswith("discriminator.")}
        dim = disc_state["pos_embed"].shape[-1]
        self.disc_ = Discriminator(dim, self.grid_, num_heads=cfg.heads, hidden=cfg.hidden, dropout=cfg.dropout)
        self.disc_.load_state_dict(disc_state)
        self.disc_.to(self.device).eval()

    def _extra_meta(self) -> dict[str, Any]:
        return {"selection": self.selection_, "history": self.history_}

    def _load_extra_meta(self, meta: dict[str, Any]) -> None:
        self.selection_ = meta.get("selection", "unknown")
        self.history_ = meta.get("history", [])
