"""Generation of (anomalous image, mask) pairs with a trained generator (docs/methods/anomalyhybrid.md §5).

``synthesise(gen, stack, n, seed=...)`` draws ``n`` requests over the normal stack (N, 5, S, S):

* local (default): base image I, an operator of ``manipulate.OPERATORS`` inside a region R on the object;
  the decoder of that operator's map repaints I's appearance onto the edited structure. The image is
  ``A_out`` inside ``dilate(R)`` and I, pixel-exact, outside; the mask is ``1[M > 0.5] ∩ dilate(R)``
  (``mask_source="fusion"``) or R (``"region"``). A request whose mask covers less than 10 % of R (the
  generator changed nothing visible) is rejected and redrawn, up to 8 draws per anomaly asked for; fewer
  accepted than asked is recorded (``accepted``), fewer than a tenth is an error.
* global: the appearance of image X on the structure of image Y (another normal image); mask 1[M > 0.5].

Same generator, stack and seed → identical images and masks. ``write_folder`` lays them out as MVTec AD
(``test/<kind>/NNN.png``, ``ground_truth/<kind>/NNN_mask.png``) with a contact sheet and a JSON record.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from generalad.errors import InputError
from generalad.methods.anomalyhybrid.generator import HybridGenerator
from generalad.methods.anomalyhybrid.manipulate import OPERATORS, apply_operator, foreground, region

KINDS = ("local", "global")
MIN_COVER = 0.1  # a local request must change (M > 0.5) at least this fraction of its region
MAX_DRAWS = 8  # requests drawn per anomaly asked for, at most; fewer than n/10 accepted is an error


@dataclasses.dataclass
class Generated:
    images: torch.Tensor  # (n, 3, S, S) float32 in [0, 1]
    masks: torch.Tensor  # (n, S, S) bool
    kinds: list[str]  # operator name, or "global"
    bases: list[int]  # index of the reference image in the stack
    stats: dict[str, Any]

    def __len__(self) -> int:
        return len(self.kinds)


@dataclasses.dataclass
class _Request:
    base: int
    kind: str
    decoder: str
    target: np.ndarray  # (2, S, S) target structure
    region: np.ndarray | None  # (S, S) bool; None for global requests


def _draw(rng: np.random.Generator, stack_np: np.ndarray, objects: list[np.ndarray], operators: Sequence[str],
          regions: Sequence[str], kinds: Sequence[str], decoders: Sequence[str], area: tuple[float, float] | None) -> _Request:
    n = stack_np.shape[0]
    base = int(rng.integers(0, n))
    other = (base + 1 + int(rng.integers(0, n - 1))) % n if n > 1 else base
    if rng.choice(list(kinds)) == "global":
        return _Request(base, "global", str(rng.choice(list(decoders))), stack_np[other, 3:].copy(), None)
    op = str(rng.choice(list(operators)))
    r = region(str(rng.choice(list(regions))), stack_np.shape[-1], rng, objects[base], area)
    target = apply_operator(op, stack_np[base, 3:], r, rng, donor=stack_np[other, 3:])
    return _Request(base, op, OPERATORS[op], target, r)


@torch.inference_mode()
def synthesise(gen: HybridGenerator, stack: torch.Tensor, n: int, *, seed: int = 0,
               operators: Sequence[str] = tuple(OPERATORS), regions: Sequence[str] = ("ellipse", "perlin"),
               kinds: Sequence[str] = ("local",), mask_source: str = "fusion", area: tuple[float, float] | None = None,
               batch_size: int = 16, device: torch.device | str = "cpu") -> Generated:
    """``n`` accepted (image, mask) pairs from ``stack`` (N, 5, S, S) in [0, 1]; see the module docstring."""
    if stack.shape[0] < 1:
        raise InputError("generation needs at least one normal image")
    decoders = list(gen.decoders)
    operators = [op for op in operators if OPERATORS[op] in decoders]
    rng = np.random.default_rng(seed)
    stack_np = stack.float().numpy()
    objects = [foreground(img[:3].transpose(1, 2, 0)) for img in stack_np]
    dilate = max(1, stack.shape[-1] // 32)
    images, masks, out_kinds, bases = [], [], [], []
    drawn = rejected = 0
    while len(out_kinds) < n and drawn < MAX_DRAWS * n + batch_size:

        reqs = [_draw(rng, stack_np, objects, operators, regions, kinds, decoders, area) for _ in range(batch_size)]
        drawn += len(reqs)
        idx = torch.tensor([r.base for r in reqs])
        ref = stack[idx].float().to(device)
        target = torch.from_numpy(np.stack([r.target for r in reqs])).to(device)
        out = gen(ref[:, :3], ref[:, 3:], target, decoders)
        for i, req in enumerate(reqs):
            image = out[req.decoder]["image"][i].float().cpu()
            fused = out[req.decoder]["fusion"][i, 0].float().cpu().numpy() > 0.5
            if req.region is None:
                mask = fused
            else:
                grown = ndimage.binary_dilation(req.region, iterations=dilate)
                keep = torch.from_numpy(grown)[None]
                image = torch.where(keep, image, ref[i, :3].cpu())
                mask = (fused & grown) if mask_source == "fusion" else req.region
                if (fused & grown).sum() < MIN_COVER * req.region.sum():
                    rejected += 1
                    continue
            if len(out_kinds) < n:
                images.append(image)
                masks.append(torch.from_numpy(np.ascontiguousarray(mask)))
                out_kinds.append(req.kind)
                bases.append(req.base)
    if len(out_kinds) < max(1, n // 10):
        raise InputError(f"the generator changed too little: {rejected} of {drawn} local anomalies had "
                         f"M > 0.5 on under {MIN_COVER:.0%} of their region (train it longer, or mask_source='region')")
    stats = {"requested": n, "accepted": len(out_kinds), "drawn": drawn, "rejected": rejected, "mask_source": mask_source, "seed": seed,
             "kinds": sorted(set(out_kinds)), "operators": list(operators), "regions": list(regions),
             "mask_fraction_mean": round(float(torch.stack(masks).float().mean()), 5)}
    return Generated(torch.stack(images), torch.stack(masks), out_kinds, bases, stats)


def _uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def contact_sheet(generated: Generated, *, columns: int = 6, limit: int = 24) -> np.ndarray:
    """uint8 sheet: per pair the image and the image with its mask's outline in red, the kind above."""
    from PIL import Image, ImageDraw

    from generalad.report import _contour, _font

    count = min(limit, len(generated))
    s = generated.images.shape[-1]
    rows = (count + columns - 1) // columns
    cap = 12
    sheet = Image.new("RGB", (columns * (2 * s + 4), rows * (s + cap + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(10)
    for k in range(count):
        image = _uint8(generated.images[k])
        outlined = image.copy()
        outlined[_contour(generated.masks[k].numpy(), 1)] = (255, 0, 0)
        x, y = (k % columns) * (2 * s + 4), (k // columns) * (s + cap + 4)
        sheet.paste(Image.fromarray(image), (x, y + cap))
        sheet.paste(Image.fromarray(outlined), (x + s, y + cap))
        draw.text((x + 2, y), generated.kinds[k], fill=(0, 0, 0), font=font)
    return np.asarray(sheet)


def write_folder(out: str | Path, generated: Generated, record: dict[str, Any]) -> Path:
    """MVTec-style folder (written atomically): test/<kind>/NNN.png, ground_truth/<kind>/NNN_mask.png,
    contact_sheet.png, generation.json."""
    from generalad.io import AtomicDir, atomic_write_json
    from generalad.report import save_mask_png, save_png

    counters: dict[str, int] = {}
    with AtomicDir(Path(out)) as tmp:
        for image, mask, kind in zip(generated.images, generated.masks, generated.kinds):
            i = counters[kind] = counters.get(kind, -1) + 1
            save_png(tmp / "test" / kind / f"{i:03d}.png", _uint8(image))
            save_mask_png(tmp / "ground_truth" / kind / f"{i:03d}_mask.png", mask.numpy())
        save_png(tmp / "contact_sheet.png", contact_sheet(generated))
        atomic_write_json(tmp / "generation.json", {**record, **generated.stats, "counts": counters})
    return Path(out)


def diversity(images: torch.Tensor, perceptual, *, pairs: int = 200, seed: int = 0) -> float:
    """Mean LPIPS-like distance (perceptual network features, no learned weights) over random image pairs."""
    g = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    a, b = torch.randint(0, n, (pairs,), generator=g), torch.randint(0, n, (pairs,), generator=g)
    keep = a != b
    with torch.no_grad():
        d = torch.cat([perceptual.distance(images[a[keep][i:i + 32]], images[b[keep][i:i + 32]])
                       for i in range(0, int(keep.sum()), 32)])
    return float(d.mean())


def depth_anomalies(images: torch.Tensor, depth: torch.Tensor, n: int, *, seed: int = 0,
                    operators: Sequence[str] = ("bump", "dent", "depth_patch"),
                    regions: Sequence[str] = ("ellipse", "perlin"), area: tuple[float, float] | None = None) -> Generated:
    """Depth-level anomalies for a depth detector: the sensor depth (N, 1, S, S) edited inside R, mask R.

    Our stand-in for [P]'s depth-level generator (docs §3): bumps and dents are already anomalous depth.
    Regions sit on the object found in the RGB ``images`` (N, 3, S, S).
    """
    operators = [op for op in operators if OPERATORS[op] == "depth"] or ["bump", "dent"]
    rng = np.random.default_rng(seed)
    rgb, d = images.float().numpy(), depth.float().numpy()
    objects = [foreground(img.transpose(1, 2, 0)) for img in rgb]
    out, masks, kinds, bases = [], [], [], []
    for _ in range(n):
        base = int(rng.integers(0, len(d)))
        donor = int(rng.integers(0, len(d)))
        op = str(rng.choice(list(operators)))
        r = region(str(rng.choice(list(regions))), d.shape[-1], rng, objects[base], area)
        maps = np.concatenate([d[base], np.zeros_like(d[base])])
        edited = apply_operator(op, maps, r, rng, donor=np.concatenate([d[donor], np.zeros_like(d[donor])]))
        out.append(torch.from_numpy(edited[:1]))
        masks.append(torch.from_numpy(r))
        kinds.append(op)
        bases.append(base)
    stats = {"requested": n, "seed": seed, "operators": list(operators), "mask_source": "region",
             "mask_fraction_mean": round(float(torch.stack(masks).float().mean()), 5)}
    return Generated(torch.stack(out), torch.stack(masks), kinds, bases, stats)
