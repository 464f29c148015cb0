"""RD4AD (``rd``) and ARD (``ard``) as estimators: frozen CNN teacher (cached) → trained OCBE + student
decoder → Σ_k (1 − cos) maps, Gaussian σ = 4 px, image score = max of the map (docs/methods/ard.md).

The modules live in ``modules`` / ``attention``, the loss, maps and training step in ``core``; this file
connects them to the teacher, the feature cache, calibration, model selection and the model file.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from generalad.data import Sample, read_mask
from generalad.errors import ConfigError
from generalad.methods.base import AnomalyModel, BaseConfig
from generalad.methods.rd import core
from generalad.methods.rd.config import TEACHERS, ARDConfig, RDConfig, student_spec
from generalad.methods.rd.modules import Student, StudentSpec
from generalad.metrics import PixelMetrics, image_auroc, resize_masks
from generalad.nn.maps import gaussian_blur

#: the official code evaluates (and overwrites its checkpoint) every 10 epochs
EVAL_EVERY = 10


class ReverseDistillation(AnomalyModel):
    """``ReverseDistillation(backbone="efficientnet_lite0").fit(train)`` — RD4AD, the faithful baseline."""

    name: ClassVar[str] = "rd"
    Config: ClassVar[type[BaseConfig]] = RDConfig

    def __init__(self, config: RDConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.student_: Student | None = None
        self.history_: list[dict[str, Any]] = []
        self.selection_: str = "last epoch"
        self._test_for_selection: list[Sample] | None = None
        self._monitor: list[Sample] | None = None
        self._held_samples: list[Sample] = []

    @property
    def working_size(self) -> int:
        return int(self.hparams.image_size)

    def _backbone_layers(self) -> list[str] | None:
        return self.config.layers or list(TEACHERS[self.config.backbone][0])

    def _is_fitted(self) -> bool:
        return self.student_ is not None

    def _train_precision(self) -> str:
        from generalad.device import resolve_precision

        return resolve_precision(self.config.train_precision, self.device)

    # ------------------------------------------------------------------ fit
    def fit(self, samples: Sequence[Sample], *, calibration=None, progress: bool = False,
            select_on_test: Sequence[Sample] | None = None, monitor: Sequence[Sample] | None = None):
        """``select_on_test``: the official protocol (test every 10 epochs, best kept) — parity only, stamped.

        ``monitor``: labelled samples (e.g. synthetic defects on held-out training normals) evaluated every
        10 epochs into ``history_`` — a validation curve; it never changes which weights are kept.
        """
        if select_on_test and self.config.selection == "generated":
            raise ConfigError(f"{self.name}: --select-on-test and selection='generated' both pick the epoch; choose one")
        self._test_for_selection = list(select_on_test) if select_on_test else None
        self._monitor = list(monitor) if monitor else None
        try:
            return super().fit(samples, calibration=calibration, progress=progress)
        finally:
            self._test_for_selection = self._monitor = None

    def _extract_held(self, held: Sequence[Sample], progress: bool):
        self._held_samples = list(held)  # selection="generated" builds its validation set from these
        return super()._extract_held(held, progress)

    def _generated_validation(self) -> list[Sample] | None:
        """Held-out normals + anomalies generated from them (selection="generated"), or None."""
        if self.config.selection != "generated":
            return None
        import tempfile

        from generalad.methods.anomalyhybrid.estimator import generated_validation

        self._generated_dir = tempfile.TemporaryDirectory(prefix="generalad-val-")
        return generated_validation(self.config.validation_generator, self._held_samples, self._generated_dir.name,
                                    seed=self.config.seed)

    def _fit_features(self, features, samples: Sequence[Sample], *, held_out=None) -> None:
        cfg = self.hparams
        spec = student_spec(self.config.backbone, tuple(m.shape[1] for m in features.maps))
        precision = self._train_precision()
        generated = self._generated_validation()
        callbacks = [c for c in (self._evaluator(self._monitor, "monitor", select=False),
                                 self._evaluator(generated, "generated", select=True),
                                 self._evaluator(self._test_for_selection, "test", select=True)) if c]
        best: dict[str, Any] = {"auroc": -1.0, "epoch": -1, "state": None}
        checks: dict[int, dict[str, Any]] = {}  # epoch → {"monitor": ..., "test": ...}, merged into the history

        def on_epoch(epoch: int, student: Student) -> None:
            last = epoch + 1 == cfg.epochs
            if (epoch + 1) % EVAL_EVERY and not last:
                return
            for evaluate, key, select in callbacks:
                result = evaluate(student)
                checks.setdefault(epoch, {})[key] = result
                value = _selection_value(key, result)
                if select and value > best["auroc"]:  # ties → earliest
                    best.update(auroc=value, epoch=epoch, state=copy.deepcopy(student.state_dict()), key=key,
                                result=result)

        self.student_, self.history_ = core.train_student(
            features.maps, spec, cfg, device=self.device, precision=precision,
            on_epoch=on_epoch if callbacks else None, progress=self._progress,
        )
        for epoch, extra in checks.items():
            self.history_[epoch].update(extra)
        self.selection_ = self._selection_label(cfg, best, generated or [])
        if generated:
            self._generated_dir.cleanup()
        self.method_stats_ = {
            "epochs_run": len(self.history_),
            "final_loss": self.history_[-1]["loss"],
            "selection": self.selection_,
            "train_precision": precision,
            "student_parameters": sum(p.numel() for p in self.student_.parameters()),
            "seconds_per_epoch": round(float(np.mean([h["seconds"] for h in self.history_])), 3),
        }

    def _evaluator(self, samples: list[Sample] | None, key: str, select: bool):
        """(evaluate(student) -> {"image_auroc", "pixel_auroc"?}, key, select) over ``samples``, or None."""
        if not samples:
            return None
        feats = self.extract(samples).maps  # the teacher runs once; each check is a student forward
        labels = np.array([s.label for s in samples])
        size = (self.working_size, self.working_size)
        masks = (np.concatenate([resize_masks(read_mask(s)[None], size) for s in samples])
                 if any(s.mask_paths for s in samples) else None)

        def evaluate(student: Student) -> dict[str, float]:
            maps = self._grids_to_maps(self._distances(student, feats), None)
            out = {"image_auroc": round(float(image_auroc(maps.flatten(1).amax(1).numpy(), labels)), 4)}
            if masks is not None:
                out["pixel_auroc"] = round(float(PixelMetrics(size).update(maps.numpy(), masks).compute()["pixel_auroc"]), 4)
            return out

        return evaluate, key, select

    def _selection_label(self, cfg: RDConfig, best: dict[str, Any], generated: Sequence[Sample] = ()) -> str:
        if best["state"] is None:
            return f"last epoch ({cfg.epochs})"
        self.student_.load_state_dict(best["state"])
        if best["key"] == "generated":
            r = best["result"]
            n_anomalous = sum(s.label for s in generated)
            return (f"generated validation ({len(generated) - n_anomalous} held-out normals + {n_anomalous} generated "
                    f"anomalies, generator "
                    f"{cfg.validation_generator}; no test data): epoch {best['epoch']} of {cfg.epochs}, "
                    f"image / pixel AUROC {r['image_auroc']} / {r.get('pixel_auroc')}")
        return (f"test (paper parity, oracle_test_every{EVAL_EVERY}): epoch {best['epoch']} of {cfg.epochs}, "
                f"test image AUROC {best['auroc']}")

    # ------------------------------------------------------------------ inference
    def _distances(self, student: Student, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Unblurred distance maps (N, S, S) of ``student`` on teacher maps."""
        return core.student_maps(student, maps, batch_size=self.config.batch_size, device=self.device,
                                 precision=self._train_precision(), size=(self.working_size, self.working_size))

    def _infer_features(self, features) -> tuple[np.ndarray, torch.Tensor]:
        dist = self._distances(self.student_, features.maps)
        # raw score = max of the unblurred map; the image score is the max of the blurred one (_final_scores)
        return dist.flatten(1).amax(dim=1).double().numpy(), dist

    def _grids_to_maps(self, grids: torch.Tensor, context: Any) -> torch.Tensor:
        """The distance maps are already at the working size: only the Gaussian (σ = ``map_sigma``) remains."""
        return gaussian_blur(grids, self.config.map_sigma)

    def _final_scores(self, scores: np.ndarray, maps: torch.Tensor) -> np.ndarray:
        return maps.flatten(1).amax(dim=1).double().numpy()

    def _export_head(self) -> torch.nn.Module:
        from generalad.methods.rd.export import RDHead

        return RDHead(self.student_, (self.working_size, self.working_size))

    def _export_maps(self) -> torch.nn.Module:
        """``gaussian_blur(σ = map_sigma)`` at the working size as one separable operator (identity interpolation)."""
        from generalad.export.graph import SeparableMaps

        size = (self.working_size, self.working_size)
        return SeparableMaps(size, size, sigma=self.config.map_sigma, radius=None, mode="bilinear")

    def _export_score(self) -> torch.nn.Module | None:
        from generalad.export.graph import MaxOfMap

        return MaxOfMap()

    def protocol(self) -> dict[str, Any]:
        cfg = self.hparams
        learned = self.fit_info_
        return {
            **super().protocol(),
            "selection": self.selection_,
            "preset": cfg.preset,
            "epochs": cfg.epochs,
            "image_size": cfg.image_size,
            "teacher_layers": self._backbone_layers(),
            "loss": cfg.loss,
            "lr": cfg.lr,
            "betas": list(cfg.betas),
            "attention": cfg.attention if cfg.attn_at != "none" else None,
            "attn_at": cfg.attn_at,
            "image_score": "max of the map (Gaussian σ = %g px)" % cfg.map_sigma,
            "train_precision": learned.get("train_precision", self._train_precision()),
        }

    # ------------------------------------------------------------------ persistence
    def _state(self) -> dict[str, torch.Tensor]:
        state = {f"student.{k}": v for k, v in self.student_.state_dict().items()}
        state["teacher_channels"] = torch.tensor(self.student_.spec.channels, dtype=torch.int64)
        return state

    def _load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        cfg = self.hparams
        spec: StudentSpec = student_spec(self.config.backbone, tuple(int(c) for c in tensors["teacher_channels"].tolist()))
        student = Student(spec, attention=cfg.attention, attn_at=cfg.attn_at, reduction=cfg.reduction)
        student.load_state_dict({k.removeprefix("student."): v for k, v in tensors.items() if k.startswith("student.")})
        self.student_ = student.to(self.device).eval()

    def _extra_meta(self) -> dict[str, Any]:
        return {"selection": self.selection_, "history": self.history_}

    def _load_extra_meta(self, meta: dict[str, Any]) -> None:
        self.selection_ = meta.get("selection", "unknown")
        self.history_ = meta.get("history", [])


def _selection_value(key: str, result: dict[str, float]) -> float:
    """What a selecting check maximises: test image AUROC (parity), or the mean of image and pixel AUROC on the
    generated validation set (the pixel term rewards localisation, which generated masks make measurable)."""
    if key == "generated" and "pixel_auroc" in result:
        return (result["image_auroc"] + result["pixel_auroc"]) / 2
    return result["image_auroc"]


class ARD(ReverseDistillation):
    """``ARD(backbone="efficientnet_lite0").fit(train)`` — RD4AD with CBAM in the one-class embedding."""

    name: ClassVar[str] = "ard"
    Config: ClassVar[type[BaseConfig]] = ARDConfig
