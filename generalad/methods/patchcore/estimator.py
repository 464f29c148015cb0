"""PatchCore (Roth et al., CVPR 2022): a coreset memory bank of locally aware patch features.

docs/methods/patchcore.md: features from two backbone stages (or ViT tokens), 3×3 local aggregation, greedy
k-center coreset on a random projection, exact nearest-neighbour distances (faiss on CPU, torch GEMM +
top-k on CUDA), map bilinear to the input size and Gaussian-smoothed (σ = 4 px at the working size).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from generalad.data import Sample
from generalad.errors import ConfigError
from generalad.methods.base import AnomalyModel, BaseConfig
from generalad.nn.coreset import greedy_coreset
from generalad.nn.loo import kth_image_distances, leave_one_out_distances
from generalad.nn.knn import BACKENDS, IVFPQParams
from generalad.nn.patches import NearestNeighbours, locally_aware_patches
from generalad.nn.sharded import ShardedNearestNeighbours, shard_bounds, sharded_greedy_coreset


MAX_FEATURE_DIM = 1024  # the paper's width: the cap of the backbone-derived default


@dataclasses.dataclass
class PatchCoreConfig(BaseConfig):
    coreset_ratio: float = 0.1  # 10 % is the common default (1 % / 25 % in the paper's ablation)
    projection_dim: int = 128  # random projection used only while selecting the coreset
    # width of the locally aware patch vector. None = the backbone's: its tapped channels summed, at most 1024
    # (Lite0 152, ViT-S 384, WRN-50 layer2+3 1536 → 1024); wider repeats values (docs/methods/patchcore.md §3).
    # 1024 is the paper's width for every backbone (parity option).
    feature_dim: int | None = None
    map_sigma: float = 4.0  # Gaussian σ in pixels at the working resolution
    image_score: str = "max_map"  # "max_map": max of the smoothed map; "max_patch": max raw patch distance (paper)
    # Training sets that may contain anomalies (SoftPatch-like, off in the paper): before the coreset, drop
    # this fraction of training patches with the largest leave-one-out distance (nearest patch of any other
    # training image, generalad.nn.loo), so defect patches that recur nowhere else stay out of the bank.
    denoise_fraction: float = 0.0
    # ... measured against the k-th nearest other image instead (exact per-image minima, ~N² cost): a defect
    # shared by fewer than denoise_kth other images is dropped too (as ``generalad clean --kth``).
    denoise_kth: int = 1
    # Banks beyond one process (docs/SCALE.md, "PatchCore banks beyond memory"): shards > 1 runs the coreset
    # selection and the exact search in that many worker processes, each holding a contiguous shard — the
    # same bank and the same scores as shards=1. bank_dir: the shards' .npy files on disk (memory-mapped, kept)
    # instead of a temporary folder in RAM (/dev/shm); with shards=1 it runs one disk-backed worker.
    shards: int = 1
    bank_dir: str | None = None
    # "auto" / "torch" / "faiss": exact search (generalad.nn.knn); "ivfpq": approximate faiss IVF-PQ trained on
    # the bank (docs/methods/patchcore.md §4): ivf_nlist cells (None: ~√bank), ivf_m bytes per vector (None:
    # D / 4), ivf_nprobe cells scanned, the exact nearest of ivf_refine candidates. Runs on the CPU.
    knn_backend: str = "auto"
    ivf_nlist: int | None = None
    ivf_m: int | None = None
    ivf_nprobe: int = 8
    ivf_refine: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.coreset_ratio <= 1:
            raise ConfigError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.image_score not in ("max_map", "max_patch"):
            raise ConfigError(f"image_score must be 'max_map' or 'max_patch', got {self.image_score!r}")
        if not 0 <= self.denoise_fraction < 1:
            raise ConfigError(f"denoise_fraction must be in [0, 1), got {self.denoise_fraction}")
        if self.feature_dim is not None and self.feature_dim < 1:
            raise ConfigError(f"feature_dim must be >= 1 or None (the backbone's width), got {self.feature_dim}")
        if self.denoise_kth < 1:
            raise ConfigError(f"denoise_kth must be >= 1, got {self.denoise_kth}")
        self._check_scale_options()

    def _check_scale_options(self) -> None:
        """One-line ConfigErrors for shards / bank_dir / knn_backend / ivf_* (--set key=value)."""
        if not isinstance(self.shards, int) or isinstance(self.shards, bool) or self.shards < 1:
            raise ConfigError(f"shards must be an integer >= 1, got {self.shards!r}")
        if self.bank_dir is not None and (not isinstance(self.bank_dir, str) or not self.bank_dir):
            raise ConfigError(f"bank_dir must be a folder path or None, got {self.bank_dir!r}")
        if self.knn_backend not in BACKENDS:
            raise ConfigError(f"knn_backend must be one of {', '.join(BACKENDS)}, got {self.knn_backend!r}")
        if self.knn_backend == "faiss" and self.sharded:
            raise ConfigError("knn_backend 'faiss' is single-process: the sharded exact search (shards > 1 or "
                              "bank_dir) uses the torch kernel, set knn_backend=auto")
        for name in ("ivf_nlist", "ivf_m"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be an integer >= 1 or None (derived from the bank), got {value!r}")
        if self.ivf_nprobe < 1 or self.ivf_refine < 1:
            raise ConfigError(f"ivf_nprobe and ivf_refine must be >= 1, got {self.ivf_nprobe} and {self.ivf_refine}")

    @property
    def sharded(self) -> bool:
        """Whether the coreset and exact search run in worker processes (shards > 1 or a bank_dir)."""
        return self.shards > 1 or self.bank_dir is not None


class PatchCore(AnomalyModel):
    """PatchCore baseline: ``PatchCore(backbone="efficientnet_lite0").fit(train_samples)``."""

    name: ClassVar[str] = "patchcore"
    Config: ClassVar[type[BaseConfig]] = PatchCoreConfig

    def __init__(self, config: PatchCoreConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.bank_: torch.Tensor | None = None
        self.grid_: tuple[int, int] | None = None
        self._index: NearestNeighbours | None = None

    @property
    def feature_dim_(self) -> int:
        """The patch-vector width in use: the bank's once fitted, else ``feature_dim`` or the backbone's channels."""
        if self.bank_ is not None:
            return int(self.bank_.shape[1])
        if self.config.feature_dim is not None:
            return self.config.feature_dim
        return min(MAX_FEATURE_DIM, sum(self.backbone().channels))

    def patches(self, features) -> tuple[torch.Tensor, tuple[int, int]]:
        """Locally aware patch features (N, P, feature_dim_) and their grid (h, w) from backbone features."""
        return locally_aware_patches(features.maps, out_dim=self.feature_dim_)

    def _is_fitted(self) -> bool:
        return self.bank_ is not None

    def _fit_features(self, features, samples: Sequence[Sample], *, held_out=None) -> None:
        self.bank_, self._index = None, None  # a refit starts over (feature_dim_ reads the bank once there is one)
        patches, self.grid_ = self.patches(features)
        flat = patches.reshape(-1, patches.shape[-1]).float().contiguous()
        n_patches = int(flat.shape[0])
        if self.config.denoise_fraction > 0:
            flat = flat[self._nominal_patches(patches)]
        keep = self._coreset(flat)
        self.bank_ = flat[keep].cpu().contiguous()
        self._index = None
        self.method_stats_ = {"n_patches": n_patches, "bank_size": int(self.bank_.shape[0]),
                              "feature_dim": int(self.bank_.shape[1])}
        if self.config.sharded:
            self.method_stats_["coreset_shards"] = len(shard_bounds(int(flat.shape[0]), self.config.shards, 32768))
        if self.config.denoise_fraction > 0:
            self.method_stats_["denoised_patches"] = n_patches - int(flat.shape[0])

    def _coreset(self, flat: torch.Tensor) -> torch.Tensor:
        """Coreset indices of the (M, D) training patches: in process, or over ``shards`` workers (same picks)."""
        c = self.config
        if c.sharded:  # CPU worker processes; identical indices (generalad.nn.sharded)
            return sharded_greedy_coreset(flat.cpu(), shards=c.shards, bank_dir=c.bank_dir, ratio=c.coreset_ratio,
                                          proj_dim=c.projection_dim, seed=c.seed)
        # the coreset's GEMMs run on the model's device
        return greedy_coreset(flat.to(self.device), ratio=c.coreset_ratio, proj_dim=c.projection_dim, seed=c.seed)

    def _nominal_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Flat indices of the patches kept by ``denoise_fraction`` (the smallest leave-one-out distances)."""
        if patches.shape[0] < 2:
            raise ConfigError("denoise_fraction needs at least 2 training images")
        c = self.config
        if c.denoise_kth == 1:
            distances = leave_one_out_distances(
                patches, bank_ratio=c.coreset_ratio, proj_dim=c.projection_dim, seed=c.seed
            ).reshape(-1)
        else:
            distances = kth_image_distances(
                patches, bank_ratio=1.0, proj_dim=c.projection_dim, seed=c.seed, kth=c.denoise_kth,
                bf16=self.precision == "bf16",
            ).reshape(-1)
        n_keep = distances.numel() - int(round(self.config.denoise_fraction * distances.numel()))
        return distances.topk(n_keep, largest=False).indices.sort().values

    def _nn(self) -> NearestNeighbours:
        if self._index is None:
            c = self.config
            if c.knn_backend == "ivfpq":  # faiss-cpu: trained on the bank when first needed (~30 s at 49k × 152)
                ivf = IVFPQParams(nlist=c.ivf_nlist, pq_m=c.ivf_m, nprobe=c.ivf_nprobe, refine=c.ivf_refine)
                self._index = NearestNeighbours(self.bank_, backend="ivfpq", ivf=ivf)
            elif c.sharded:
                self._index = ShardedNearestNeighbours(self.bank_, shards=c.shards, bank_dir=c.bank_dir)
            else:
                self._index = NearestNeighbours(self.bank_, device=self.device, backend=c.knn_backend)
        return self._index

    def _infer_features(self, features) -> tuple[np.ndarray, torch.Tensor]:
        patches, grid = self.patches(features)
        n, p, d = patches.shape
        dist, _ = self._nn().search(patches.reshape(-1, d).float().contiguous(), k=1)
        dist = torch.as_tensor(np.asarray(dist)).reshape(n, p).float()
        return dist.amax(dim=1).numpy(), dist.reshape(n, *grid)

    def _final_scores(self, patch_scores: np.ndarray, maps: torch.Tensor) -> np.ndarray:
        if self.config.image_score == "max_map":
            return maps.flatten(1).amax(dim=1).double().numpy()
        return patch_scores

    def _map_sigma(self) -> float:
        return self.config.map_sigma

    def _export_head(self) -> torch.nn.Module:
        from generalad.methods.patchcore.export import PatchCoreHead

        return PatchCoreHead(self.backbone().channels, self.bank_, out_dim=self.feature_dim_)

    def _export_score(self) -> torch.nn.Module | None:
        from generalad.export.graph import MaxOfMap

        return MaxOfMap() if self.config.image_score == "max_map" else None

    def _state(self) -> dict[str, torch.Tensor]:
        return {"memory_bank": self.bank_, "grid": torch.tensor(self.grid_, dtype=torch.int64)}

    def _load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.bank_ = tensors["memory_bank"].float().contiguous()
        self.grid_ = tuple(int(v) for v in tensors["grid"].tolist())
        self._index = None
