"""DINOv2 ViTs through timm, with key conversion and an explicit CLS→patch attention (docs/methods/generalad.md §2).

Weights files may use three key layouts; all are converted to timm's before a strict load:

- official DINOv2 (``cls_token``, ``pos_embed`` with a CLS slot, ``register_tokens``, ``mask_token``),
- timm (``reg_token``; for register models ``pos_embed`` has no CLS slot and the CLS position is folded
  into ``cls_token``),
- Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (``embeddings.*``, ``encoder.layer.N.*`` with
  separate query/key/value).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from generalad.backbones.base import IMAGENET_MEAN, IMAGENET_STD, RANDOM_INIT, Backbone, Features, as_hw
from generalad.backbones.weights import (
    build_and_load,
    download_weights,
    load_state_dict_file,
    resolve_weights,
    sha256_file,
    weights_label,
)
from generalad.errors import ConfigError

# generalad name → timm model (pretrained tag kept: it names the hub repo we download from)
VIT_MODELS = {
    "dinov2_vits14": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_vitb14": "vit_base_patch14_dinov2.lvd142m",
    "dinov2_vitl14": "vit_large_patch14_dinov2.lvd142m",
    "dinov2_vits14_reg4": "vit_small_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitb14_reg4": "vit_base_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitl14_reg4": "vit_large_patch14_reg4_dinov2.lvd142m",
}
_LAYOUT_HINT = "a .pth/.safetensors file (official DINOv2, timm or Hugging Face layout)"


# ----------------------------------------------------------------------------------------- key conversion
def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """"hf", "dinov2" (official) or "timm"."""
    if any(k.removeprefix("dinov2.").startswith(("embeddings.", "encoder.layer.")) for k in sd):
        return "hf"
    if "mask_token" in sd or "register_tokens" in sd:
        return "dinov2"
    return "timm"


_HF_RENAMES = [  # (HF pattern, official DINOv2 name); q/k/v are fused separately
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.mask_token", "mask_token"),
    (r"embeddings\.register_tokens", "register_tokens"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
]
_HF_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)")


def hf_to_dinov2(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face Dinov2Model keys → official DINOv2 keys, fusing query/key/value into one qkv.

    Keys it does not know (a classifier head, a SwiGLU MLP) keep their names, so the strict load reports them.
    """
    if all(k.startswith("dinov2.") for k in sd if not k.startswith("classifier.")):  # *ForImageClassification
        sd = {k.removeprefix("dinov2."): v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        m = _HF_QKV.fullmatch(key)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        for pattern, repl in _HF_RENAMES:
            if re.fullmatch(pattern, key):
                key = re.sub(pattern, repl, key)
                break
        out[key] = value
    for (block, kind), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:  # timm's qkv rows are [q; k; v]
            out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
        else:  # incomplete: leave under the HF names for the error message
            out.update({f"encoder.layer.{block}.attention.attention.{p}.{kind}": v for p, v in parts.items()})
    return out


def dinov2_to_timm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official DINOv2 keys → timm keys (what timm's own ``_convert_dinov2`` does, done here explicitly).

    The mask token is training-only. Register models: timm gives neither CLS nor registers a position slot
    (``no_embed_class``), so the CLS position is folded into ``cls_token``; the sums are identical.
    """
    out = {k: v for k, v in sd.items() if k != "mask_token"}
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
        pos = out.pop("pos_embed")
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    return out


def _fit_pos_embed(sd: dict[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Resample a position table trained at another grid (e.g. 16x16 at 224 px) to the model's native grid."""
    pos = sd.get("pos_embed")
    if pos is None or model.pos_embed is None or pos.shape == model.pos_embed.shape:
        return sd
    n_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    side = math.isqrt(pos.shape[1] - n_prefix)
    if side * side != pos.shape[1] - n_prefix or pos.shape[-1] != model.pos_embed.shape[-1]:
        return sd  # not a square grid of the right width: the strict load reports the shape
    sd = dict(sd)
    sd["pos_embed"] = resample_abs_pos_embed(
        pos.float(), new_size=list(model.patch_embed.grid_size), old_size=[side, side], num_prefix_tokens=n_prefix
    )
    return sd


def convert_vit_state_dict(sd: Mapping[str, torch.Tensor], model: VisionTransformer) -> dict[str, torch.Tensor]:
    """Any supported layout → the timm keys of ``model``."""
    layout = detect_layout(sd)
    if layout == "hf":
        sd, layout = hf_to_dinov2(sd), "dinov2"
    if layout == "dinov2":
        sd = dinov2_to_timm(sd)
    return _fit_pos_embed(dict(sd), model)


# ----------------------------------------------------------------------------------------- attention
def cls_patch_attention(attn: torch.nn.Module, y: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """CLS row of softmax(q·Kᵀ/sqrt(d)) per head, over ALL tokens, patch columns kept (not renormalised).

    ``attn`` is a timm ``Attention`` and ``y`` its input (``norm1`` of the block input), (B, T, D). Only the
    CLS query is projected, so this costs one K projection, not a (T, T) matrix per head.
    Returns (B, heads, T - num_prefix_tokens) in float32.
    """
    if not hasattr(attn, "qkv") or not hasattr(attn, "head_dim"):
        raise ConfigError(f"CLS attention needs a timm Attention with a fused qkv, got {type(attn).__name__}")
    B, T, _ = y.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    width = heads * head_dim
    w, b = attn.qkv.weight, attn.qkv.bias
    q = F.linear(y[:, :1], w[:width], None if b is None else b[:width])  # CLS is token 0 in timm
    k = F.linear(y, w[width : 2 * width], None if b is None else b[width : 2 * width])
    q = attn.q_norm(q.view(B, 1, heads, head_dim).transpose(1, 2))  # (B, H, 1, d)
    k = attn.k_norm(k.view(B, T, heads, head_dim).transpose(1, 2))  # (B, H, T, d)
    with torch.autocast(y.device.type, enabled=False):  # softmax logits in fp32 even under bf16 autocast
        logits = (q.float() * attn.scale) @ k.float().transpose(-2, -1)  # (B, H, 1, T)
        probs = logits.softmax(dim=-1)
    return probs[:, :, 0, num_prefix_tokens:]


# ----------------------------------------------------------------------------------------- backbone
class ViTBackbone(Backbone):
    """Patch tokens of chosen blocks (each through the final LayerNorm) as (B, D, h, w) maps."""

    kind = "vit"

    def __init__(
        self,
        model: VisionTransformer,
        *,
        name: str,
        arch: str = "",
        weights_sha256: str = RANDOM_INIT,
        weights_path: str | None = None,
        layers: Sequence[str] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if not getattr(model, "dynamic_img_size", False):
            raise ValueError("ViTBackbone needs a timm VisionTransformer built with dynamic_img_size=True")
        depth = len(model.blocks)
        layers = list(layers) if layers else [f"blocks.{depth - 1}"]
        super().__init__(
            name=name, arch=arch, weights_sha256=weights_sha256, weights_path=weights_path, layers=layers,
            mean=mean, std=std, weights_label=weights_label(weights_sha256),
        )
        self.model = model
        self.block_ids = [self._block_index(layer, depth) for layer in layers]
        self.num_heads = model.blocks[-1].attn.num_heads
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.embed_dim = int(model.embed_dim)
        self.strides = [self.patch_size] * len(layers)
        self.channels = [self.embed_dim] * len(layers)
        self.freeze()

    def _block_index(self, layer: str, depth: int) -> int:
        m = re.fullmatch(r"blocks\.(\d+)", layer)
        if not m or int(m[1]) >= depth:
            raise ConfigError(
                f"unknown layer {layer!r} for {self.name} (--layers); choose blocks.0 … blocks.{depth - 1}"
            )
        return int(m[1])

    def check_image_size(self, size: int | Sequence[int]) -> tuple[int, int]:
        h, w = as_hw(size)
        p = self.patch_size
        if h % p or w % p:
            near = "x".join(str(max(p, round(v / p) * p)) for v in (h, w))
            raise ConfigError(
                f"image size {h}x{w} is not a multiple of {self.name}'s patch size {p}: "
                f"pass --image-size as a multiple of {p} (e.g. {near})"
            )
        return h, w

    def forward(self, x: torch.Tensor, *, with_attention: bool = False) -> Features:
        h, w = self.check_image_size(tuple(x.shape[-2:]))
        h, w = h // self.patch_size, w // self.patch_size
        m = self.model
        # The steps of VisionTransformer.forward_features, unrolled so we can stop early and read the last block.
        x = m.patch_embed(x)
        x = m._pos_embed(x)
        x = m.patch_drop(x)
        x = m.norm_pre(x)
        last = max(self.block_ids)
        taken: dict[int, torch.Tensor] = {}
        attention = None
        for i, block in enumerate(m.blocks[: last + 1]):
            if with_attention and i == last:
                attention = cls_patch_attention(block.attn, block.norm1(x), self.num_prefix_tokens)
            x = block(x)
            if i in self.block_ids:
                taken[i] = self._to_map(m.norm(x), h, w)
        return Features(maps=[taken[i] for i in self.block_ids], attention=attention)

    def export_copy(self, size: int | Sequence[int]) -> "ViTBackbone":
        """A deep copy whose position table is already resampled to ``size``'s patch grid.

        timm resamples the table (bicubic, antialias) in every forward and, when exporting, on purpose keeps
        that step in the graph; OpenVINO evaluates the resulting Resize differently (ViT-S/14 features off by
        ~4 % relative, measured). Resampled here once, with the same call the forward makes, the graph's
        Resize is an identity (old grid = new grid) and every runtime agrees with torch.
        """
        h, w = self.check_image_size(size)
        grid = (h // self.patch_size, w // self.patch_size)
        clone = copy.deepcopy(self)
        m = clone.model
        table = resample_abs_pos_embed(m.pos_embed, new_size=grid, old_size=m.patch_embed.grid_size,
                                       num_prefix_tokens=0 if m.no_embed_class else m.num_prefix_tokens)
        m.pos_embed = torch.nn.Parameter(table.detach(), requires_grad=False)
        m.patch_embed.grid_size = grid
        return clone

    def _to_map(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        patches = tokens[:, self.num_prefix_tokens :]  # drop CLS and registers
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[-1], h, w)

    def describe(self) -> dict:
        return {**super().describe(), "num_prefix_tokens": self.num_prefix_tokens, "embed_dim": self.embed_dim}


def _timm_factory(arch: str):
    return lambda: timm.create_model(arch, pretrained=False, dynamic_img_size=True, num_classes=0)


def create_dinov2(
    name: str,
    *,
    weights: str | None = None,
    layers: Sequence[str] | None = None,
    expected_sha256: str | None = None,
    cache_dir: str | None = None,
) -> ViTBackbone:
    """A DINOv2 ViT by generalad name; ``weights``: a file, ``None`` (download / cache) or ``"random"``."""
    arch = VIT_MODELS[name]
    factory = _timm_factory(arch)
    if weights == "random":
        return ViTBackbone(factory(), name=name, arch=arch, layers=layers)
    path = resolve_weights(name, weights, expected_sha256=expected_sha256)
    if path is None:  # timm's hub copy of the official weights (timm layout, safetensors)
        hub = timm.models.get_pretrained_cfg(arch).hf_hub_id
        url = f"https://huggingface.co/{hub}/resolve/main/model.safetensors"
        path = download_weights(name, url, cache_dir=cache_dir, hint=_LAYOUT_HINT)
    sd = load_state_dict_file(path)
    model = build_and_load(factory, lambda m: convert_vit_state_dict(sd, m), path, name)
    return ViTBackbone(
        model, name=name, arch=arch, weights_sha256=sha256_file(path), weights_path=str(path), layers=layers
    )
