"""AnomalyHybrid as an estimator: normal images → structure maps → generator → generated anomalies → UNet
detector → softmax maps; image score = max of the average-pooled map (docs/methods/anomalyhybrid.md).

The frame's "backbone" here is ``PixelBackbone``: the image itself at the working size, so decoding, the
feature cache and calibration are the shared ones. The generator and the detector are trained in
``_fit_features``; a model file holds both (``generator.*``, ``detector.*``), so a fitted run can generate
(``generalad generate --run``) and can lend its generator to another fit (``--generator RUN``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from generalad.backbones.base import Backbone, Features
from generalad.data import Sample
from generalad.distributed import current_shard, functional_share
from generalad.errors import ConfigError, InputError
from generalad.methods.anomalyhybrid.config import AnomalyHybridConfig
from generalad.methods.anomalyhybrid.detector import DiscriminativeUNet, focal_loss, pooled_max, score_window
from generalad.methods.anomalyhybrid.generate import Generated, depth_anomalies, synthesise
from generalad.methods.anomalyhybrid.manipulate import DEFAULT_AREA, OPERATORS
from generalad.methods.anomalyhybrid.generator import HybridGenerator
from generalad.methods.anomalyhybrid.train_gen import perceptual_network, train_generator
from generalad.methods.base import AnomalyModel, BaseConfig
from generalad.training import LoopConfig, train_loop


class PixelBackbone(Backbone):
    """The identity "backbone": (B, 3, S, S) images in [0, 1] (mean 0, std 1), one map of 3 channels."""

    kind = "pixels"

    def __init__(self) -> None:
        super().__init__(name="pixels", arch="identity", weights_sha256="none (pixels)", weights_path=None,
                         layers=["rgb"], mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), weights_label="none")
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)  # carries the device
        self.channels, self.strides = [3], [1]
        self.freeze()

    def forward(self, x: torch.Tensor, *, with_attention: bool = False) -> Features:
        return Features(maps=[x])


class _BareForward(nn.Module):
    """A module timed like a backbone (``generalad speed``): random (B, 3, S, S) in, whatever out."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def check_image_size(self, size):
        from generalad.backbones.base import as_hw

        return as_hw(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class AnomalyHybrid(AnomalyModel):
    """``AnomalyHybrid().fit(normal_samples)`` — generator + detector, CPU preset by default."""

    name: ClassVar[str] = "anomalyhybrid"
    Config: ClassVar[type[BaseConfig]] = AnomalyHybridConfig

    def __init__(self, config: AnomalyHybridConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.generator_: HybridGenerator | None = None
        self.detectors_: dict[str, DiscriminativeUNet] = {}  # "rgb" and / or "depth" (docs §4)
        self.fusion_stats_: dict[str, tuple[float, float]] = {}  # rgbd: (mean, std) of each map on held-out normals
        self.generator_info_: dict[str, Any] = {}
        self.generated_: Generated | None = None  # the training anomalies of the last fit (not saved)
        self.history_: list[dict[str, Any]] = []

    @property
    def working_size(self) -> int:
        return int(self.hparams.image_size)

    def backbone(self) -> Backbone:
        if self.backbone_ is None:
            self.backbone_ = PixelBackbone().to(self.device)
        return self.backbone_

    def speed_reference(self) -> tuple[str, nn.Module]:
        """The bare forward of the (first) UNet detector: the pixels "backbone" does no work."""
        self._check_fitted_state()
        name = next(iter(self.detectors_))
        return f"detector UNet ({name}, base {self.hparams.det_base})", _BareForward(self.detectors_[name])

    def _is_fitted(self) -> bool:
        return bool(self.detectors_)

    def _train_precision(self) -> str:
        from generalad.device import resolve_precision

        return resolve_precision(self.config.train_precision, self.device)

    # ------------------------------------------------------------------ fit
    def stack(self, images: torch.Tensor, samples: Sequence[Sample]) -> torch.Tensor:
        """The generator's input (N, 5, S, S): ``images`` (N, 3, S, S) ⊕ [depth, edges] from the configured sources."""
        return torch.cat([images, self.hparams.sources().maps(images, samples)], dim=1)

    def extract(self, samples: Sequence[Sample], *, progress: bool = False, use_cache: bool = True):
        """Images (N, 3, S, S) in [0, 1]; depth / rgbd detectors also get the sensor depth (N, 1, S, S)."""
        features = super().extract(samples, progress=progress, use_cache=use_cache)
        if self.hparams.modality != "rgb":
            features.maps.append(self.hparams.sources().depth_maps(features.maps[0], samples))
        return features

    def _fit_features(self, features, samples: Sequence[Sample], *, held_out=None) -> None:
        cfg = self.hparams
        images = features.maps[0]
        self.detectors_, self.history_, stats = {}, [], {}
        if cfg.modality in ("rgb", "rgbd"):
            stack = self.stack(images, samples)
            self.generator_, self.generator_info_ = self._generator(stack)
            self.generated_ = synthesise(
                self.generator_, stack, cfg.n_generated, seed=cfg.seed, operators=cfg.active_operators(),
                regions=cfg.regions, area=cfg.region_area, mask_source=cfg.mask_source, device=self.device,
            )
            self.detectors_["rgb"], history = self._train_detector(images, self.generated_.images, self.generated_.masks)
            self.history_ += [{**h, "detector": "rgb"} for h in history]
            stats["generated"] = self.generated_.stats
        if cfg.modality in ("depth", "rgbd"):
            depth = features.maps[1]
            edited = depth_anomalies(images, depth, cfg.n_generated, seed=cfg.seed, regions=cfg.regions, area=cfg.region_area,
                                     operators=[op for op in cfg.active_operators() if OPERATORS[op] == "depth"])
            self.detectors_["depth"], history = self._train_detector(_rgb(depth), _rgb(edited.images), edited.masks)
            self.history_ += [{**h, "detector": "depth"} for h in history]
            stats["generated_depth"] = edited.stats
        if cfg.modality == "rgbd":
            self.fusion_stats_ = self._fusion_stats(held_out if held_out is not None else features)
        self.method_stats_ = {
            **({"generator": {k: v for k, v in self.generator_info_.items() if k != "history"}} if self.generator_info_ else {}),
            **stats,
            "detectors": sorted(self.detectors_),
            "detector_final_loss": {d: [h for h in self.history_ if h["detector"] == d][-1]["loss"] for d in self.detectors_},
            "detector_parameters": sum(p.numel() for p in next(iter(self.detectors_.values())).parameters()),
            "detector_seconds": round(sum(h["seconds"] for h in self.history_), 1),
            **({"rgbd_statistics": self.fusion_stats_} if self.fusion_stats_ else {}),
            "train_precision": self._train_precision(),
        }

    def _fusion_stats(self, normal_features) -> dict[str, tuple[float, float]]:
        """(mean, std) of each detector's map values on normal images (held-out / validation/good only)."""
        out = {}
        for name, prob in self._maps_per_detector(normal_features).items():
            out[name] = (float(prob.mean()), float(prob.std().clamp_min(1e-6)))
        return out

    def _generator(self, stack: torch.Tensor) -> tuple[HybridGenerator, dict[str, Any]]:
        cfg = self.hparams
        if cfg.generator:
            return load_generator(cfg.generator, expect=cfg, device=self.device)
        decoders = ("depth", "edges") if cfg.sources().uses_depth else ("edges",)
        steps = cfg.gen_steps or max(1, cfg.gen_epochs * (stack.shape[0] // min(cfg.gen_batch, stack.shape[0])))
        perceptual = perceptual_network(cfg.perceptual, cfg.perceptual_weights)
        t0 = time.perf_counter()
        gen, history = train_generator(
            stack, widths=cfg.gen_widths, decoders=decoders, steps=steps, batch_size=cfg.gen_batch, lr=cfg.gen_lr,
            lambdas={"gan": cfg.lambda_gan, "l1": cfg.lambda_l1, "perceptual": cfg.lambda_perceptual,
                     "mask": cfg.lambda_mask, "fusion": cfg.lambda_fusion},
            perceptual=perceptual, seed=cfg.seed, device=self.device, precision=self._train_precision(),
            progress=self._progress,
        )
        info = {"source": "trained in this fit", "steps": steps, "batch": cfg.gen_batch, "widths": list(cfg.gen_widths),
                "decoders": list(decoders), "parameters": sum(p.numel() for p in gen.parameters()),
                "seconds": round(time.perf_counter() - t0, 1), "perceptual": _perceptual_name(perceptual, cfg),
                "structure": cfg.sources().describe(), "history": history}
        return gen, info

    def _train_detector(self, normals: torch.Tensor, gen_images: torch.Tensor, gen_masks: torch.Tensor):
        """Half normal (empty mask) / half generated anomalies per sample, focal loss ([AD], docs §4)."""
        cfg = self.hparams
        device, precision = self.device, self._train_precision()
        gen_masks = gen_masks[:, None].float()
        draw = torch.Generator().manual_seed(cfg.seed)
        from generalad.device import autocast

        def step(model: nn.Module, idx: torch.Tensor):
            # draws for the whole global batch, then this rank's rows (all of them in one process; docs/SCALE.md §9)
            shard = current_shard(idx)
            size = shard.size
            anomalous = shard.take(torch.rand(size, generator=draw) < 0.5)
            n_pick = shard.take(torch.randint(0, normals.shape[0], (size,), generator=draw))
            g_pick = shard.take(torch.randint(0, gen_images.shape[0], (size,), generator=draw))
            b = idx.numel()
            x = torch.where(anomalous.view(b, 1, 1, 1), gen_images[g_pick], normals[n_pick]).to(device)
            m = (gen_masks[g_pick] * anomalous.view(b, 1, 1, 1).float()).to(device)
            with autocast(device, precision):
                logits = model(x)
            loss = functional_share(focal_loss(logits.float(), m), shard)
            loss.backward()
            return loss.detach(), {}

        loop = LoopConfig(epochs=cfg.det_epochs, batch_size=cfg.det_batch, lr=cfg.det_lr, optimizer="adam",
                          schedule="multistep", seed=cfg.seed)
        return train_loop(lambda: DiscriminativeUNet(cfg.det_base), step, cfg.det_samples, loop, device=device,
                          progress=self._progress, desc="detector")

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def _probabilities(self, detector: DiscriminativeUNet, images: torch.Tensor) -> torch.Tensor:
        from generalad.device import autocast

        out = []
        for i in range(0, images.shape[0], self.config.batch_size):
            with autocast(self.device, self._train_precision()):
                logits = detector(images[i : i + self.config.batch_size].to(self.device))
            out.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu())
        return torch.cat(out) if out else torch.zeros(0, self.working_size, self.working_size)

    def _maps_per_detector(self, features) -> dict[str, torch.Tensor]:
        inputs = {"rgb": features.maps[0], "depth": _rgb(features.maps[-1]) if "depth" in self.detectors_ else None}
        return {name: self._probabilities(det, inputs[name]) for name, det in self.detectors_.items()}

    def _infer_features(self, features) -> tuple[np.ndarray, torch.Tensor]:
        maps = self._maps_per_detector(features)
        if len(maps) == 1:
            prob = next(iter(maps.values()))
        else:  # RGBD: average of the maps standardised with normal-image statistics (docs §4)
            prob = sum((maps[k] - m) / s for k, (m, s) in self.fusion_stats_.items()) / len(maps)
        return self._pooled(prob), prob

    def _pooled(self, maps: torch.Tensor) -> np.ndarray:
        return pooled_max(maps, score_window(self.working_size)).double().numpy()

    def _grids_to_maps(self, grids: torch.Tensor, context: Any) -> torch.Tensor:
        return grids  # the softmax map is already at the working size (no smoothing, as [AD])

    def _final_scores(self, scores: np.ndarray, maps: torch.Tensor) -> np.ndarray:
        return self._pooled(maps)

    def _export_head(self) -> torch.nn.Module:
        from generalad.methods.anomalyhybrid.export import DetectorHead

        if set(self.detectors_) != {"rgb"}:
            raise ConfigError(f"only RGB AnomalyHybrid detectors export (this model has {', '.join(self.detectors_)}): "
                              "the graph takes images, not sensor depth")
        return DetectorHead(self.detectors_["rgb"], score_window(self.working_size))

    def _export_maps(self) -> torch.nn.Module:
        from generalad.export.graph import Identity2

        return Identity2()  # the softmax map is already at the working size (as _grids_to_maps)

    def describe(self) -> dict[str, Any]:
        cfg = self.hparams
        return {**super().describe(), "perceptual_network": self.generator_info_.get("perceptual", cfg.perceptual),
                "structure": cfg.sources().describe()}

    def protocol(self) -> dict[str, Any]:
        cfg = self.hparams
        return {
            **super().protocol(),
            "selection": f"last step (generator), last epoch (detector, {cfg.det_epochs})",
            "preset": cfg.preset,
            "image_size": cfg.image_size,
            "generator": self.generator_info_.get("source"),
            "structure": cfg.sources().describe(),
            "anomalies": f"{cfg.n_generated} generated local anomalies ({', '.join(cfg.active_operators())}; "
                         f"{', '.join(cfg.regions)} regions of {_area_words(cfg.region_area)}; mask {cfg.mask_source})",
            "evaluation": "trained on normals + generated anomalies only; the full test set is evaluated",
            "image_score": f"max of the {score_window(cfg.image_size)}x{score_window(cfg.image_size)} average-pooled map",
        }

    # ------------------------------------------------------------------ persistence
    def _state(self) -> dict[str, torch.Tensor]:
        state = {f"detector_{d}.{k}": v for d, det in self.detectors_.items() for k, v in det.state_dict().items()}
        if self.generator_ is not None:
            state.update({f"generator.{k}": v for k, v in self.generator_.state_dict().items()})
        return state

    def _load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        cfg = self.hparams
        self.detectors_ = {}
        for name in ("rgb", "depth"):
            part = _prefixed(tensors, f"detector_{name}.")
            if part:
                detector = DiscriminativeUNet(cfg.det_base)
                detector.load_state_dict(part)
                self.detectors_[name] = detector.to(self.device).eval()
        if any(k.startswith("generator.") for k in tensors):
            self.generator_ = _generator_from(tensors, self.generator_info_).to(self.device).eval()

    def _extra_meta(self) -> dict[str, Any]:
        return {"generator_info": self.generator_info_, "history": self.history_, "rgbd_statistics": self.fusion_stats_}

    def _load_extra_meta(self, meta: dict[str, Any]) -> None:
        self.generator_info_ = meta.get("generator_info", {})
        self.history_ = meta.get("history", [])
        self.fusion_stats_ = {k: tuple(v) for k, v in meta.get("rgbd_statistics", {}).items()}


def _rgb(depth: torch.Tensor) -> torch.Tensor:
    """(N, 1, S, S) depth → (N, 3, S, S): the UNet's three input channels."""
    return depth.expand(-1, 3, -1, -1)


def _perceptual_name(perceptual, cfg: AnomalyHybridConfig) -> str:
    sha = getattr(perceptual.backbone, "weights_sha256", "unknown")
    return f"{cfg.perceptual} (LPIPS-like, stages {', '.join(perceptual.backbone.layers)}; weights sha256 {sha[:12]})"


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _generator_from(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> HybridGenerator:
    gen = HybridGenerator(info["widths"], info["decoders"])
    gen.load_state_dict(_prefixed(tensors, "generator."))
    return gen


def load_generator(run: str | Path, *, expect: AnomalyHybridConfig | None = None,
                   device: torch.device | str = "cpu") -> tuple[HybridGenerator, dict[str, Any]]:
    """The generator held by a fitted anomalyhybrid run, and its record; ``expect``: refuse other sizes/sources."""
    from generalad.io import load_safetensors
    from generalad.methods.base import STATE_FILE, read_model_meta

    meta = read_model_meta(run)
    if meta.get("model") != "anomalyhybrid":
        raise InputError(f"{run} is a {meta.get('model')!r} run; a generator comes from an anomalyhybrid run")
    info = dict(meta.get("generator_info", {}))
    if expect is not None:
        theirs = AnomalyHybridConfig.from_dict({**meta["config"], "device": "cpu"}).resolved()
        for field in ("image_size", "edges", "depth"):
            if getattr(theirs, field) != getattr(expect, field):
                raise ConfigError(f"generator {run} was trained with {field}={getattr(theirs, field)!r}, "
                                  f"this fit uses {getattr(expect, field)!r}")
    tensors, _ = load_safetensors(Path(run) / STATE_FILE)
    gen = _generator_from(tensors, info).to(device).eval()
    info = {**info, "source": f"reused from {run}", "history": []}
    return gen, info


def _area_words(area: tuple[float, float] | None) -> str:
    if area is None:
        return f"{100 * DEFAULT_AREA[0]:g}-{100 * DEFAULT_AREA[1]:g} % of the image"
    return f"{100 * area[0]:g}-{100 * area[1]:g} % of the image, log-uniform"


def generate_from_run(run: str | Path, samples: Sequence[Sample], n: int, out: str | Path, *, seed: int = 0,
                      kinds: Sequence[str] = ("local",), mask_source: str | None = None,
                      device: str | None = None, progress: bool = False) -> dict[str, Any]:
    """``generalad generate``: ``n`` anomalies over ``samples`` with the generator of a fitted run → MVTec folder."""
    from generalad.methods import load_model
    from generalad.methods.anomalyhybrid.generate import KINDS, diversity, write_folder

    if not samples:
        raise InputError("no normal images to generate from")
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ConfigError(f"unknown anomaly kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)} (--kinds)")
    model = load_model(run, device=device)
    if not isinstance(model, AnomalyHybrid):
        raise InputError(f"{run} is a {model.name!r} run; generation needs an anomalyhybrid run")
    if model.generator_ is None:
        raise InputError(f"{run} holds no generator (modality {model.hparams.modality!r} trains on edited depth maps only)")
    cfg = model.hparams
    images = model.extract(samples, progress=progress).maps[0]
    stack = model.stack(images, samples)
    generated = synthesise(model.generator_, stack, n, seed=seed, operators=cfg.active_operators(), regions=cfg.regions,
                           area=cfg.region_area,
                           kinds=kinds, mask_source=mask_source or cfg.mask_source, device=model.device)
    perceptual = perceptual_network(cfg.perceptual, cfg.perceptual_weights)
    record = {"generator_run": str(run), "n_sources": len(samples), "image_size": cfg.image_size,
              "structure": cfg.sources().describe(), "generator": model.generator_info_.get("source"),
              "diversity_lpips_like": round(diversity(generated.images, perceptual, seed=seed), 4),
              "diversity_network": _perceptual_name(perceptual, cfg)}
    write_folder(out, generated, record)
    return {"out": str(out), "n": len(generated), **{k: record[k] for k in ("diversity_lpips_like",)},
            **{k: generated.stats[k] for k in ("drawn", "rejected", "mask_fraction_mean")}}


def generated_validation(run: str | Path, normals: Sequence[Sample], out_dir: str | Path, *, n: int | None = None,
                         seed: int = 0) -> list[Sample]:
    """A labelled validation set from normal images only (docs/methods/anomalyhybrid.md §8): ``normals``
    (label 0) plus ``n`` (default 2 per normal, at least 20) anomalies generated from them with the generator of
    ``run`` (label 1, with masks), written under ``out_dir``. No test image is read."""
    from generalad.data.mvtec import mvtec_masks, read_test_split

    normals = list(normals)
    if not normals:
        raise InputError("generated validation needs held-out normal images (calibration_fraction > 0)")
    folder = Path(out_dir) / "generated"
    generate_from_run(run, normals, n or max(20, 2 * len(normals)), folder, seed=seed)
    anomalies = read_test_split(folder, "generated", mvtec_masks(folder))  # test/<kind>/ + ground_truth/<kind>/
    return [*normals, *[dataclasses.replace(s, split="validation") for s in anomalies]]
