"""InReaCh (McIntosh & Branzan Albu, ICCV 2023) as an estimator.

Training images may contain anomalies: patches that recur as mutual nearest neighbours across images form
channels; channels that pass the span and σ filters form the nominal bank; test patches are scored by their
squared distance to the bank. Method doc: docs/methods/inreach.md (its CPU-scale plan is the default here).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from generalad.data import Sample, read_image
from generalad.errors import ConfigError
from generalad.methods.base import AnomalyModel, BaseConfig
from generalad.methods.inreach import channels as ir
from generalad.nn.coreset import greedy_coreset
from generalad.nn.maps import upsample_maps
from generalad.nn.patches import locally_aware_patches

log = logging.getLogger(__name__)

#: The hierarchy of residual blocks per backbone ([S]: the first 13 blocks of WRN-50, up to stride 16).
DEFAULT_HIERARCHY: dict[str, list[str]] = {
    "wide_resnet50_2": [f"layer1.{i}" for i in range(3)] + [f"layer2.{i}" for i in range(4)]
    + [f"layer3.{i}" for i in range(6)],
    "resnet18": ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1"],
    "resnet34": [f"layer1.{i}" for i in range(3)] + [f"layer2.{i}" for i in range(4)]
    + [f"layer3.{i}" for i in range(6)],
    "efficientnet_lite0": ["blocks.1.0", "blocks.1.1", "blocks.2.0", "blocks.2.1", "blocks.3.0", "blocks.3.1",
                           "blocks.3.2", "blocks.4.0", "blocks.4.1", "blocks.4.2"],
}
#: [C]'s list (layer3.0 skipped, layer4.0 added) for code parity.
CODE_HIERARCHY_WRN50 = [f"layer1.{i}" for i in range(3)] + [f"layer2.{i}" for i in range(4)] + [
    f"layer3.{i}" for i in range(1, 6)] + ["layer4.0"]


@dataclasses.dataclass
class InReaChModelConfig(BaseConfig):
    feature_dim: int = 256  # CPU plan (docs/methods/inreach.md §10); the paper's is 1024
    grid_pool: int = 2  # 2×2 average pooling of the aggregated 56×56 grid → 28×28 (docs/methods/inreach.md §10); 1 = paper grid
    num_seeds: int = 10
    all_pairs_below: int = 30
    min_channel_len: int = 3  # keep channels with more than 3 entries (≥ 4 with the seed)
    sigma_k: float = 5.0
    sigma_rule: str = "spherical"  # [C]: keep d_i < k·σ_sph; "centered": |d_i − mean d| < k·σ
    transpose_threshold: float = 600.0  # [S]; the official code uses 1000
    pos_weight: float = 5.0
    align: bool = True  # rotational alignment when the transpose test fails ([S]; [C]: off)
    map_sigma_at_224: float = 5.0  # [S] 5 px at 224; the official code uses 13
    bank_coreset_ratio: float | None = None  # optional greedy coreset of the bank (documented deviation)
    association_precision: str = "fp32"

    def channel_config(self) -> ir.InReaChConfig:
        return ir.InReaChConfig(
            num_seeds=self.num_seeds, all_pairs_below=self.all_pairs_below, seed=self.seed,
            min_channel_len=self.min_channel_len, sigma_k=self.sigma_k, sigma_rule=self.sigma_rule,
            precision=self.association_precision, transpose_threshold=self.transpose_threshold,
            pos_weight=self.pos_weight, align=self.align,
        )


def working_images(samples: Sequence[Sample], size: int) -> torch.Tensor:
    """(N, size, size, 3) float images in 0–255 at the working resolution (layout test, alignment)."""
    from generalad.backbones import preprocess

    out = [preprocess([read_image(s)], (size, size), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))[0] for s in samples]
    return (torch.stack(out).permute(0, 2, 3, 1) * 255.0).contiguous()


def rotated_samples(samples: Sequence[Sample], images: torch.Tensor, angles: np.ndarray) -> list[Sample]:
    """In-memory samples of the rotated working images (paths kept, so leak checks still see them)."""
    rotated = ir.rotate_images(images, angles).clamp(0, 255).round().to(torch.uint8).numpy()
    return [dataclasses.replace(s, array=r) for s, r in zip(samples, rotated)]


class InReaCh(AnomalyModel):
    """``InReaCh(backbone="efficientnet_lite0").fit(train_samples_possibly_contaminated)``."""

    name: ClassVar[str] = "inreach"
    Config: ClassVar[type[BaseConfig]] = InReaChModelConfig

    def __init__(self, config: InReaChModelConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.bank_: torch.Tensor | None = None
        self.grid_: tuple[int, int] | None = None
        self.use_positional_: bool = False
        self.reference_: torch.Tensor | None = None  # training image 0 (aligned sets only)
        self.result_: ir.InReaChResult | None = None
        self.layout_: dict[str, Any] = {}
        self._index: ir.NearestBank | None = None

    def _backbone_layers(self) -> list[str] | None:
        """``config.layers``, else the block hierarchy of this backbone (the config itself stays as given)."""
        return self.config.layers if self.config.layers is not None else DEFAULT_HIERARCHY.get(self.config.backbone)

    def _is_fitted(self) -> bool:
        return self.bank_ is not None

    # ------------------------------------------------------------------ descriptors
    def descriptors(self, features) -> torch.Tensor:
        """(N, P, D[+2]) locally aware multi-block descriptors, pooled to the CPU grid, ± positions."""
        patches, grid = locally_aware_patches(features.maps, out_dim=self.config.feature_dim)
        if self.config.grid_pool > 1:
            n, _, d = patches.shape
            x = patches.transpose(1, 2).reshape(n, d, *grid)
            x = F.avg_pool2d(x, self.config.grid_pool)
            grid = tuple(x.shape[-2:])
            patches = x.flatten(2).transpose(1, 2)
        self.grid_ = grid
        patches = patches.float().contiguous()
        if self.use_positional_:
            patches = ir.append_positional(patches, grid, self.config.pos_weight)
        return patches

    # ------------------------------------------------------------------ fit
    def prepare(self, samples: Sequence[Sample]) -> list[Sample]:
        """Layout (docs/methods/inreach.md): transpose test and optional rotational alignment of the training
        images; returns the samples to extract from (rotated copies when aligned) and records the decision."""
        images = working_images(samples, self.config.image_size)
        decision = ir.layout_decision(images, threshold=self.config.transpose_threshold, align=self.config.align)
        self.use_positional_ = decision.use_positional
        self.layout_ = {"transpose_score": decision.t_original, "transpose_score_aligned": decision.t_aligned,
                        "positional": decision.use_positional, "aligned": decision.angles is not None}
        if decision.angles is None:
            return list(samples)
        self.reference_ = images[0].to(torch.uint8)
        return rotated_samples(samples, images, decision.angles)

    def _fit_features(self, features, samples: Sequence[Sample], *, held_out=None) -> None:
        X = self.descriptors(features)  # features of prepare()'s images (rotated when aligned)
        self.result_ = ir.build_bank(X, self.config.channel_config())
        bank = ir.gather_bank(X, self.result_.bank_ids)
        if bank.shape[0] == 0:
            raise ConfigError(
                f"InReaCh kept no nominal patches from {len(samples)} training images (span/σ filters removed "
                "every channel); use more training images or sigma_rule='centered'"
            )
        if self.config.bank_coreset_ratio:
            bank = bank[greedy_coreset(bank, ratio=self.config.bank_coreset_ratio, seed=self.config.seed)]
        self.bank_ = bank.contiguous()
        self._index = None
        self.method_stats_ = {"bank_size": int(self.bank_.shape[0]), "n_patches": int(X.shape[0] * X.shape[1]),
                              "grid": list(self.grid_), **self.layout_, **self.result_.stats}

    # ------------------------------------------------------------------ inference
    def _search(self, queries: torch.Tensor) -> torch.Tensor:
        if self._index is None:
            self._index = ir.NearestBank(self.bank_, device=self.device)
        dist2, _ = self._index.search(queries)
        return torch.as_tensor(dist2).float()

    def _infer_features(self, features) -> tuple[np.ndarray, torch.Tensor]:
        X = self.descriptors(features)
        n, p, d = X.shape
        dist2 = self._search(X.reshape(-1, d)).reshape(n, p)  # squared L2, as the paper's flat index
        return dist2.amax(dim=1).numpy(), dist2.reshape(n, *self.grid_)

    def _final_scores(self, scores: np.ndarray, maps: torch.Tensor) -> np.ndarray:
        return maps.flatten(1).amax(dim=1).double().numpy()  # image score = max of the smoothed map

    def _map_sigma(self) -> float:
        return self.config.map_sigma_at_224 * self.config.image_size / 224.0

    def _map_mode(self) -> str:
        return "nearest"

    def _prepare_infer(self, chunk: Sequence[Sample]) -> tuple[list[Sample], np.ndarray | None]:
        """Aligned models rotate each test image onto the reference; the angles come back as context."""
        if self.reference_ is None:
            return list(chunk), None
        images = working_images(chunk, self.config.image_size)
        angles = ir.best_rotation(images, self.reference_.float())
        return rotated_samples(chunk, images, angles), angles

    def _grids_to_maps(self, grids: torch.Tensor, angles: np.ndarray | None) -> torch.Tensor:
        if angles is None:
            return super()._grids_to_maps(grids, None)
        size = (self.config.image_size, self.config.image_size)
        maps = upsample_maps(grids, size, sigma=0.0, mode="nearest")
        maps = ir.rotate_images(maps[..., None], -angles)[..., 0]  # back to the image's own orientation
        return upsample_maps(maps, size, sigma=self._map_sigma())

    def _export_head(self) -> torch.nn.Module:
        from generalad.methods.inreach.export import InReaChHead

        if self.reference_ is not None:
            raise ConfigError("this InReaCh model was fitted with rotational alignment (each test image is rotated "
                              "onto a reference first), which an exported graph does not do: refit with "
                              "--set align=false to export it")
        return InReaChHead(self.backbone().channels, self.bank_, out_dim=self.config.feature_dim,
                           grid_pool=self.config.grid_pool, grid=self.grid_,
                           positional_weight=self.config.pos_weight if self.use_positional_ else None)

    def _export_score(self) -> torch.nn.Module | None:
        from generalad.export.graph import MaxOfMap

        return MaxOfMap()

    # ------------------------------------------------------------------ cleaning
    def training_image_statistics(self) -> dict[str, np.ndarray]:
        """Per training image statistics from the channel construction (for ranking contaminants)."""
        if self.result_ is None:
            raise ConfigError("training statistics exist only right after fit() (they are not saved)")
        return self.result_.image_stats

    # ------------------------------------------------------------------ persistence
    def protocol(self) -> dict[str, Any]:
        return {**super().protocol(), "layout": self.layout_, "hierarchy": self._backbone_layers()}

    def _state(self) -> dict[str, torch.Tensor]:
        state = {"memory_bank": self.bank_, "grid": torch.tensor(self.grid_, dtype=torch.int64),
                 "use_positional": torch.tensor(int(self.use_positional_))}
        if self.reference_ is not None:
            state["reference_image"] = self.reference_
        return state

    def _load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.bank_ = tensors["memory_bank"].float().contiguous()
        self.grid_ = tuple(int(v) for v in tensors["grid"].tolist())
        self.use_positional_ = bool(int(tensors["use_positional"]))
        self.reference_ = tensors.get("reference_image")
        self._index = None

    def _extra_meta(self) -> dict[str, Any]:
        return {"layout": self.layout_}

    def _load_extra_meta(self, meta: dict[str, Any]) -> None:
        self.layout_ = meta.get("layout", {})
