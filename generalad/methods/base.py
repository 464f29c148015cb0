"""The estimator contract shared by every method.

``AnomalyModel`` owns what all methods have in common — the frozen backbone on its device, feature
extraction and its cache, the normal-only calibration split, thresholds, maps at image size, the model
file and the scikit-learn contract (``get_params`` / ``set_params`` / ``repr``) — so that a method only
implements three things on *features*:

* ``_fit_features(features, samples, held_out=held_features)``: learn from the training features (the
  held-out normals' features come along, extracted once, e.g. for early stopping);
* ``_infer_features(features) -> (image_scores, patch_grids)``: raw scores, higher = more anomalous;
* ``_state()`` / ``_load_state(tensors)``: the learned tensors for ``model.safetensors``.

Optional hooks: ``prepare(samples)`` (public: the training images features are extracted from, e.g.
InReaCh's rotational alignment), ``_prepare_infer(chunk)`` / ``_grids_to_maps(grids, context)``, ``_final_scores``.

Configuration is never rewritten after construction: ``device="auto"`` and ``precision="auto"`` are
resolved on first use into ``device_`` / ``precision_`` (recorded in every model file and result).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from generalad import __version__
from generalad.calibration import Calibration, PixelCalibration, ThresholdRule, calibrate, calibrate_pixels
from generalad.data import Sample, image_hw, split_holdout
from generalad.device import PRECISION_CHOICES
from generalad.errors import ConfigError, InputError, NotFittedError
from generalad.io import AtomicDir, atomic_save_safetensors, atomic_write_json, load_safetensors
from generalad.methods.bundle import BUNDLE_KEY, BundledBackbone, check_weights_file, read_bundle, write_bundle
from generalad.nn.maps import resize_maps, upsample_maps

CONFIG_FILE = "config.json"
STATE_FILE = "model.safetensors"


@dataclasses.dataclass
class BaseConfig:
    """Settings every method shares. Method configs subclass this."""

    backbone: str = "efficientnet_lite0"
    weights: str | None = None  # local weights file; None → bundled/downloaded default
    layers: list[str] | None = None  # backbone layers to tap; None → the backbone's default
    image_size: int = 224  # square working resolution (no crop)
    # "auto": bf16 only where the device runs it faster (CUDA with bf16, CPUs with AMX / AVX512-BF16),
    # fp32 elsewhere — generalad.device.resolve_precision; "bf16" autocast or "fp32" force one.
    precision: str = "auto"
    device: str = "auto"  # "auto" (CUDA when present) | "cpu" | "cuda" | "cuda:N"
    batch_size: int = 16
    seed: int = 0
    calibration_fraction: float = 0.1  # held-out slice of the training normals for thresholds
    calibration_min: int = 5
    threshold: ThresholdRule = dataclasses.field(default_factory=ThresholdRule)
    pixel_quantile: float = 0.999
    cache_dir: str | None = None  # on-disk frozen-feature cache; None → no cache
    # decode JPEGs at the smallest DCT scale still ≥ the working size (up to 64× fewer pixels decoded; pixels
    # differ slightly from a full decode, so off by default: same scores as before)
    jpeg_draft: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISION_CHOICES:
            raise ConfigError(
                f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.precision!r} (--precision)"
            )
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device must be a name such as 'auto', 'cpu' or 'cuda:0', got {self.device!r} (--device)")

    def resolved(self) -> "BaseConfig":
        """A copy with preset-decided fields filled in; configs without presets are already resolved."""
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["threshold"] = dataclasses.asdict(self.threshold)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}")
        d = dict(d)
        if isinstance(d.get("threshold"), dict):
            d["threshold"] = ThresholdRule(**d["threshold"])
        return cls(**d)


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class AnomalyModel:
    """Base estimator: ``fit(normal_samples)``, ``score``, ``predict``, ``save``/``load``."""

    name: ClassVar[str] = "base"
    Config: ClassVar[type[BaseConfig]] = BaseConfig
    needs_attention: ClassVar[bool] = False

    def __init__(self, config: BaseConfig | None = None, **overrides: Any) -> None:
        """Configure in the constructor, sklearn style: ``PatchCore(backbone="resnet18", coreset_ratio=0.01)``.

        The configuration is validated here (one-line ``ConfigError``) and never changed afterwards.
        """
        self.config = self._configured(config if config is not None else self.Config(), overrides)
        self._hparams: tuple[BaseConfig, BaseConfig] | None = None  # (config, config.resolved()), see hparams
        self.infer_chunk = 64  # images per inference chunk: features of one chunk live in memory at once
        self.backbone_: torch.nn.Module | None = None
        self.backbone_bundle_: BundledBackbone | None = None  # a loaded model's backbone.safetensors (bundle.py)
        self.device_: torch.device | None = None  # resolved from config.device on first use
        self.precision_: str | None = None  # resolved from config.precision on first use
        self._progress = False  # progress bars of the fit in progress (training loops read it)
        self.calibration_: Calibration | None = None
        self.pixel_calibration_: PixelCalibration | None = None
        self.fit_info_: dict[str, Any] = {}
        self.method_stats_: dict[str, Any] = {}  # methods add what they learned (bank size, epochs, ...)
        self.run_info_: dict[str, Any] = {}  # where the training data came from (root, class, shots, ...)
        self.train_files_: list[str] = []
        self.calibration_files_: list[str] = []

    def _configured(self, config: BaseConfig, overrides: dict[str, Any]) -> BaseConfig:
        if not isinstance(config, self.Config):
            raise ConfigError(f"{self.name} needs a {self.Config.__name__}, got {type(config).__name__}")
        if not overrides:
            return config
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(config)})
        if unknown:
            raise ConfigError(f"unknown {self.name} option(s): {', '.join(unknown)}")
        if isinstance(overrides.get("threshold"), dict):
            overrides = {**overrides, "threshold": ThresholdRule(**overrides["threshold"])}
        return dataclasses.replace(config, **overrides)

    # ----------------------------------------------------------------- scikit-learn contract
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's options (``type(model)(**model.get_params())`` is an unfitted twin)."""
        return {f.name: getattr(self.config, f.name) for f in dataclasses.fields(self.config)}

    def set_params(self, **params: Any) -> "AnomalyModel":
        """Change options (validated like the constructor); they take effect at the next ``fit``."""
        self.config = self._configured(self.config, params)
        self.backbone_ = self.device_ = self.precision_ = None
        if {"backbone", "weights"} & set(params):  # another network than the bundled one was asked for
            self.backbone_bundle_ = None
        return self

    def __repr__(self) -> str:
        default = self.Config()
        changed = [f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config)
                   if getattr(self.config, f.name) != getattr(default, f.name)]
        return f"{type(self).__name__}({', '.join(changed)})"

    @property
    def hparams(self) -> BaseConfig:
        """``config.resolved()`` (presets filled in), computed once per configuration (``set_params`` starts over)."""
        if self._hparams is None or self._hparams[0] is not self.config:
            self._hparams = (self.config, self.config.resolved())
        return self._hparams[1]

    # ----------------------------------------------------------------- device, backbone and features
    @property
    def device(self) -> torch.device:
        """The torch device everything runs on (``config.device`` resolved once)."""
        if self.device_ is None:
            from generalad.device import resolve_device

            self.device_ = resolve_device(self.config.device)
        return self.device_

    @property
    def precision(self) -> str:
        """"bf16" or "fp32": ``config.precision`` resolved for this device (``auto`` = the faster one)."""
        if self.precision_ is None:
            from generalad.device import resolve_precision

            self.precision_ = resolve_precision(self.config.precision, self.device)
        return self.precision_

    @property
    def working_size(self) -> int:
        """The square resolution images are resized to (``config.image_size``; presets may decide it)."""
        return self.config.image_size

    def _backbone_layers(self) -> list[str] | None:
        """Backbone layers to tap: ``config.layers``, or the method's default for this backbone."""
        return self.config.layers

    def backbone(self) -> torch.nn.Module:
        """The frozen backbone on ``self.device``, created on first use (from the bundled file when loaded with one)."""
        if self.backbone_ is None:
            from generalad.backbones import create_backbone

            if self.backbone_bundle_ is not None:
                bb = self.backbone_bundle_.create(self.config.backbone, self._backbone_layers())
            else:
                bb = create_backbone(self.config.backbone, weights=self.config.weights, layers=self._backbone_layers())
            self.backbone_ = bb.to(self.device)
        return self.backbone_

    def speed_reference(self) -> tuple[str, torch.nn.Module]:
        """(name, module) whose bare forward ``generalad speed`` times next to the whole path: the backbone."""
        return "backbone", self.backbone()

    def extract(self, samples: Sequence[Sample], *, progress: bool = False, use_cache: bool = True):
        """Frozen features of ``samples`` (a ``FeatureSet`` of float32 CPU tensors), cached when asked."""
        from generalad import distributed

        group = distributed.parallel()
        if group is not None:  # torchrun: each rank extracts whole batches of its slice, then all ranks gather
            return distributed.gather_features(lambda part: self._extract_here(part, progress, use_cache),
                                               list(samples), self.config.batch_size, group)
        return self._extract_here(samples, progress, use_cache)

    def _extract_here(self, samples: Sequence[Sample], progress: bool, use_cache: bool):
        """``extract`` in this process only (no sharding)."""
        from generalad.backbones import extract_features

        return extract_features(self.backbone(), list(samples), **self._feature_options(use_cache, progress))

    def _feature_options(self, use_cache: bool, progress: bool) -> dict[str, Any]:
        """How this model's features are extracted (``extract_features`` / ``iter_features`` keywords)."""
        return dict(image_size=self.working_size, batch_size=self.config.batch_size, precision=self.precision,
                    cache_dir=self.config.cache_dir if use_cache else None, with_attention=self.needs_attention,
                    progress=progress, jpeg_draft=self.config.jpeg_draft)

    # ----------------------------------------------------------------- hooks for methods
    def _fit_features(self, features, samples: Sequence[Sample], *, held_out=None) -> None:
        """Learn from the training ``features``; ``held_out`` = the calibration normals' features (or None)."""
        raise NotImplementedError

    def prepare(self, samples: Sequence[Sample]) -> list[Sample]:
        """The training images features are extracted from (InReaCh: rotationally aligned copies).

        ``fit`` calls it once, before extraction; callers that extract training features themselves (e.g.
        ``generalad clean``) call it the same way. It may record what it decided (InReaCh's layout).
        """
        return list(samples)

    def _prepare_infer(self, chunk: Sequence[Sample]) -> tuple[list[Sample], Any]:
        """(images to extract from, context for ``_grids_to_maps``) of one inference chunk."""
        return list(chunk), None

    def _grids_to_maps(self, grids: torch.Tensor, context: Any) -> torch.Tensor:
        """Patch grids (N, h, w) → maps (N, S, S) at the working size, smoothed."""
        size = (self.working_size, self.working_size)
        return upsample_maps(grids, size, sigma=self._map_sigma(), radius=self._map_radius(), mode=self._map_mode())

    def _infer_features(self, features) -> tuple[np.ndarray, torch.Tensor]:
        """Return raw image scores (N,) and patch-score grids (N, h, w)."""
        raise NotImplementedError

    def _final_scores(self, scores: np.ndarray, maps: torch.Tensor) -> np.ndarray:
        """Hook: image scores may be derived from the image-size maps (e.g. PatchCore's max of the map)."""
        return scores

    def _map_sigma(self) -> float:
        """Gaussian sigma (pixels at the working resolution) applied to upsampled maps."""
        return 4.0

    def _map_radius(self) -> int | None:
        return None

    def _map_mode(self) -> str:
        """Interpolation from the patch grid to the working size (bilinear; InReaCh: nearest)."""
        return "bilinear"

    def _state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------- fit
    def fit(self, samples: Sequence[Sample], *, calibration: Sequence[Sample] | None = None, progress: bool = False):
        """Fit on normal images; thresholds come from a held-out normal slice (never test data).

        ``calibration`` overrides the held-out slice (e.g. MVTec LOCO ``validation/good``).
        """
        samples = list(samples)
        if not samples:
            raise InputError("no training images to fit on")
        torch.manual_seed(self.config.seed)
        self._progress = progress
        t0 = time.perf_counter()
        if calibration is None:
            train, held = split_holdout(
                samples, self.config.calibration_fraction, self.config.calibration_min, self.config.seed
            )
            source = f"holdout {len(held)} of {len(samples)} training images (seed {self.config.seed})"
        else:
            train, held = samples, list(calibration)
            source = f"{len(held)} given calibration images"
        features = self.extract(self.prepare(train), progress=progress)
        held_features, held_context = self._extract_held(held, progress)
        t_feat = time.perf_counter()
        self._fit_features(features, train, held_out=held_features)
        t_fit = time.perf_counter()
        if not held:  # too few images to hold any out: calibrate on training scores (optimistic)
            held, source = train, f"training images themselves ({len(train)}; optimistic: none could be held out)"
            held_features, held_context = self._extract_held(held, progress)
        del features
        scores, maps = self._scores_and_maps(held_features, held_context)
        self.calibration_ = calibrate(scores, self.config.threshold)
        self.calibration_.source = source
        self.pixel_calibration_ = calibrate_pixels(maps, q=self.config.pixel_quantile, seed=self.config.seed)
        self.train_files_ = [s.path for s in train]
        self.calibration_files_ = [s.path for s in held]
        self.fit_info_ = {
            "n_train": len(train),
            "n_calibration": len(held),
            "seconds_features": round(t_feat - t0, 3),
            "seconds_fit": round(t_fit - t_feat, 3),
            "seconds_total": round(time.perf_counter() - t0, 3),
            **self.method_stats_,
        }
        from generalad import distributed

        if distributed.active() is not None:  # stamped: trained by several processes (docs/SCALE.md §9)
            self.fit_info_["distributed"] = distributed.active().stamp()
        return self

    def _extract_held(self, held: Sequence[Sample], progress: bool):
        """Features (+ inference context) of the held-out normals, extracted once for the method and calibration."""
        if not held:
            return None, None
        source, context = self._prepare_infer(held)
        return self.extract(source, progress=progress), context

    def _scores_and_maps(self, features, context: Any) -> tuple[np.ndarray, torch.Tensor]:
        """(raw image scores (N,) float64, maps (N, S, S) at the working size) from extracted features."""
        scores, grids = self._infer_features(features)
        maps = self._grids_to_maps(grids, context)
        return np.asarray(self._final_scores(scores, maps), dtype=np.float64), maps

    # ----------------------------------------------------------------- inference
    def _check_fitted(self) -> None:
        """Thresholds need the calibration (the last step of fit)."""
        if self.calibration_ is None:
            raise self._not_fitted()

    def _not_fitted(self) -> NotFittedError:
        return NotFittedError(f"{self.name} model is not fitted: call fit() or load a saved model first")

    def infer_batches(
        self, samples: Sequence[Sample], *, use_cache: bool = True, progress: bool = False
    ) -> Iterator[tuple[Sequence[Sample], np.ndarray, torch.Tensor]]:
        """Yield (samples, raw image scores, maps at the working size) chunk by chunk (bounded memory)."""
        self._check_fitted_state()
        samples = list(samples)
        if self._streams_features():
            yield from self._infer_streamed(samples, use_cache, progress)
            return
        for chunk in _chunks(samples, self.infer_chunk):
            source, context = self._prepare_infer(chunk)
            features = self.extract(source, progress=progress, use_cache=use_cache)
            scores, maps = self._scores_and_maps(features, context)
            yield chunk, scores, maps

    def _streams_features(self) -> bool:
        """Whether inference may stream one feature pass over all samples: the images go to the backbone
        as given (no per-chunk ``_prepare_infer`` or ``extract`` of the method's own) and no torchrun group
        shards them."""
        from generalad import distributed

        cls = type(self)
        return (cls._prepare_infer is AnomalyModel._prepare_infer and cls.extract is AnomalyModel.extract
                and distributed.parallel() is None)

    def _infer_streamed(
        self, samples: list[Sample], use_cache: bool, progress: bool
    ) -> Iterator[tuple[Sequence[Sample], np.ndarray, torch.Tensor]]:
        """``infer_batches`` over one feature stream: chunk k is scored while the next batch is decoded, and
        chunk k + 1 starts without waiting for its first decode (measured in docs/RESULTS.md, issue 17)."""
        from generalad.backbones.cache import in_chunks, iter_features

        stream = iter_features(self.backbone(), samples, **self._feature_options(use_cache, progress))
        for start, stop, features in in_chunks(stream, len(samples), self.infer_chunk, self.needs_attention):
            scores, maps = self._scores_and_maps(features, None)
            yield samples[start:stop], scores, maps

    def _check_fitted_state(self) -> None:
        """Inference needs learned state (calibration comes after it inside fit, so it is not required)."""
        if not self._is_fitted():
            raise self._not_fitted()

    def _is_fitted(self) -> bool:
        """True once the method's learned state exists (methods override; the default: calibrated)."""
        return self.calibration_ is not None

    def score(self, samples: Sequence[Sample]) -> np.ndarray:
        """Raw image anomaly scores (higher = more anomalous)."""
        self._check_fitted_state()
        return np.concatenate([s for _, s, _ in self.infer_batches(samples)]) if samples else np.zeros(0)

    def anomaly_maps(self, samples: Sequence[Sample], *, original_size: bool = True) -> list[np.ndarray]:
        """Raw float32 anomaly maps, at each image's original size by default."""
        out: list[np.ndarray] = []
        for chunk, _, maps in self.infer_batches(samples):
            out.extend(self.to_original_size(chunk, maps) if original_size else list(maps.numpy()))
        return out

    @staticmethod
    def to_original_size(chunk: Sequence[Sample], maps: torch.Tensor) -> list[np.ndarray]:
        return [resize_maps(m[None], image_hw(s))[0].numpy() for s, m in zip(chunk, maps)]

    def decide(self, scores: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return np.asarray(scores) > self.calibration_.threshold

    @property
    def pixel_threshold_(self) -> float | None:
        return None if self.pixel_calibration_ is None else float(self.pixel_calibration_.threshold)

    @property
    def threshold_(self) -> float:
        self._check_fitted()
        return float(self.calibration_.threshold)

    def protocol(self) -> dict[str, Any]:
        """Protocol flags stamped into every result (docs/PROTOCOLS.md §6)."""
        return {
            "selection": "none (no training epochs)",
            "threshold_source": self.calibration_.source if self.calibration_ else None,
        }

    # ----------------------------------------------------------------- persistence
    def describe(self) -> dict[str, Any]:
        """What every record and result must state: model, backbone, weights hash, resolution, dtype."""
        from generalad.device import precision_reason

        bb = self.backbone()
        return {
            "model": self.name,
            "backbone": self.config.backbone,
            "weights_sha256": getattr(bb, "weights_sha256", "unknown"),
            "image_size": self.working_size,
            "precision": self.precision,  # resolved: what actually ran
            "precision_setting": self.config.precision,
            **({"precision_reason": precision_reason(self.device)} if self.config.precision == "auto" else {}),
            "device": str(self.device),
        }

    def save(self, directory: str | Path, *, bundle_backbone: bool = False) -> Path:
        """Write ``config.json`` + ``model.safetensors`` atomically (never a pickle).

        ``bundle_backbone``: also write the backbone's weights as ``backbone.safetensors`` (sha256 recorded), so
        the directory loads without the original weights file (``generalad.methods.bundle``).
        """
        self._check_fitted()
        directory = Path(directory)
        meta = {
            "generalad_version": __version__,
            "torch_version": torch.__version__,
            **self.describe(),
            "config": self.config.to_dict(),
            "calibration": self.calibration_.to_dict(),
            "pixel_calibration": self.pixel_calibration_.to_dict(),
            "fit": self.fit_info_,
            "train_files": self.train_files_,
            "calibration_files": self.calibration_files_,
            "data": self.run_info_,
            **self._extra_meta(),
        }
        with AtomicDir(directory) as tmp:
            if bundle_backbone:  # inside the AtomicDir: a half-written bundle never becomes a model directory
                meta[BUNDLE_KEY] = write_bundle(self.backbone(), tmp)
            atomic_save_safetensors(tmp / STATE_FILE, {k: v.contiguous() for k, v in self._state().items()}, {"model": self.name})
            atomic_write_json(tmp / CONFIG_FILE, meta)
        return directory

    # ----------------------------------------------------------------- export (docs/DEPLOY.md)
    def export_module(self) -> torch.nn.Module:
        """The whole inference path as one frozen fp32 module (``generalad.export.graph.InferenceGraph``):
        (B, 3, S, S) images resized and normalised as ``extract`` does → (raw image scores (B,), maps (B, S, S)),
        the values ``infer_batches`` yields. ``generalad export`` traces it to ONNX / OpenVINO."""
        from generalad.export.graph import InferenceGraph

        self._check_fitted_state()
        # no method reads the CLS attention at inference (GeneralAD uses it for training distortions only)
        backbone = self.backbone().export_copy(self.working_size)
        return InferenceGraph(backbone, self._export_head(), self._export_maps(), self._export_score())

    def _export_head(self) -> torch.nn.Module:
        """Module (maps, attention) → (raw image scores (B,), patch grids (B, h, w)): ``_infer_features`` on one batch."""
        raise ConfigError(f"{self.name} models cannot be exported (no export head)")

    def _export_maps(self) -> torch.nn.Module:
        """Grids → maps at the working size, the operator ``_grids_to_maps`` applies (default: ``upsample_maps``)."""
        from generalad.export.graph import SeparableMaps

        size = (self.working_size, self.working_size)
        return SeparableMaps(tuple(self.grid_), size, sigma=self._map_sigma(), radius=self._map_radius(),
                             mode=self._map_mode())

    def _export_score(self) -> torch.nn.Module | None:
        """``_final_scores`` as a module on the maps, or None when the head's scores are final."""
        return None

    def _extra_meta(self) -> dict[str, Any]:
        return {}

    def _load_extra_meta(self, meta: dict[str, Any]) -> None:
        pass

    @classmethod
    def _from_meta(
        cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor], weights: str | None = None, device: str | None = None
    ):
        config = dict(meta["config"])
        if weights is not None:
            config["weights"] = weights
        # the device is where the model runs now, not where it was fitted (a model saved on a GPU loads on a CPU)
        config["device"] = device or "auto"
        model = cls(cls.Config.from_dict(config))
        model.calibration_ = Calibration.from_dict(meta["calibration"])
        model.pixel_calibration_ = PixelCalibration.from_dict(meta["pixel_calibration"])
        model.fit_info_ = meta.get("fit", {})
        model.train_files_ = meta.get("train_files", [])
        model.calibration_files_ = meta.get("calibration_files", [])
        model.run_info_ = meta.get("data", {})
        model._load_extra_meta(meta)
        model._load_state(tensors)
        return model


def read_model_meta(directory: str | Path) -> dict[str, Any]:
    import json

    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise InputError(f"not a generalad model directory (no {CONFIG_FILE}): {directory}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read model config {path}: {err}") from None


def load_model(directory: str | Path, *, weights: str | None = None, device: str | None = None) -> AnomalyModel:
    """Load any saved model by the name recorded in its ``config.json``, onto ``device`` (default: auto)."""
    from generalad.methods import get_method

    meta = read_model_meta(directory)
    state_path = Path(directory) / STATE_FILE
    if not state_path.is_file():
        raise InputError(f"model directory has no {STATE_FILE}: {directory}")
    tensors, _ = load_safetensors(state_path)
    model = get_method(meta["model"])._from_meta(meta, tensors, weights=weights, device=device)
    # An explicit weights file wins over a bundled one; either way a missing file fails here, in one line,
    # not at the first image scored.
    model.backbone_bundle_ = read_bundle(directory, meta) if weights is None else None
    if model.backbone_bundle_ is None:
        check_weights_file(model.config.backbone, model.config.weights, directory, given=weights is not None)
    return model
