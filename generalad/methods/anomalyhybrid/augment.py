"""Self-supervised training pairs for the generator (docs/methods/anomalyhybrid.md §3).

From one normal image stack ``x = RGB ⊕ depth ⊕ edges`` (B, 5, S, S) the reference is ``x`` after a global
augmentation and the target (structure maps + ground-truth RGB) is the *same* augmentation followed by a
**local thin-plate-spline warp** inside a random box (p = 0.99): the generator learns to copy the reference
where the structures agree (M ≈ 0) and to repaint where the target's structure differs (M ≈ 1). With
probability ``p_global`` the target gets its own global augmentation instead (appearance onto another
layout: the global-anomaly mode). Global augmentations: resize–translate–pad (scale 0.8–1, zero padding)
and horizontal / vertical flips (p = ½ each).

All randomness comes from the ``torch.Generator`` passed in: same seed → same pairs.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class PairConfig:
    p_tps: float = 0.99  # [SH]'s "percentage" 0.99, read as the probability of the local warp
    tps_points: tuple[int, int] = (3, 5)  # control grid k × k, k drawn in this range (inclusive)
    tps_box: tuple[float, float] = (0.2, 0.5)  # box side / image side
    tps_shift: float = 0.35  # max displacement of an inner control point, in control-grid cells
    scale: tuple[float, float] = (0.8, 1.0)  # resize–translate–pad
    p_global: float = 0.2  # target gets an independent global augmentation (ours, [D])
    change_threshold: float = 0.05  # |target − reference| above this (any channel) counts as changed


def _uniform(gen: torch.Generator, lo: float, hi: float, n: int = 1) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def identity_grid(b: int, h: int, w: int) -> torch.Tensor:
    """(B, H, W, 2) sampling grid in [-1, 1] (x, y), align_corners=True convention."""
    ys, xs = torch.linspace(-1, 1, h), torch.linspace(-1, 1, w)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).expand(b, h, w, 2).clone()


def _tps_kernel(r2: torch.Tensor) -> torch.Tensor:
    return 0.5 * r2 * torch.log(r2.clamp_min(1e-12))  # U(r) = r² log r = ½ r² log r²


def tps_displacement(ctrl: torch.Tensor, shift: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Thin-plate-spline interpolation of control displacements ``shift`` (n, 2) at ``points`` (m, 2) → (m, 2)."""
    n = ctrl.shape[0]
    k = _tps_kernel(torch.cdist(ctrl, ctrl) ** 2)
    p = torch.cat([torch.ones(n, 1), ctrl], dim=1)
    a = torch.zeros(n + 3, n + 3)
    a[:n, :n], a[:n, n:], a[n:, :n] = k, p, p.t()
    rhs = torch.cat([shift, torch.zeros(3, 2)])
    coef = torch.linalg.solve(a + 1e-6 * torch.eye(n + 3), rhs)
    u = _tps_kernel(torch.cdist(points, ctrl) ** 2)
    return u @ coef[:n] + torch.cat([torch.ones(len(points), 1), points], dim=1) @ coef[n:]


def local_tps_flow(h: int, w: int, box: tuple[int, int, int, int], k: int, shift: torch.Tensor) -> torch.Tensor:
    """Displacement field (H, W, 2) in normalised units, non-zero only inside ``box`` = (y0, x0, bh, bw).

    ``shift`` (k·k, 2): displacement of each control point in normalised box units; border control points
    are forced to 0 and a sin² taper makes the field vanish on the box border, so nothing outside moves.
    """
    y0, x0, bh, bw = box
    t = torch.linspace(0, 1, k)
    cy, cx = torch.meshgrid(t, t, indexing="ij")
    ctrl = torch.stack([cx.flatten(), cy.flatten()], dim=1)
    inner = ((ctrl > 0) & (ctrl < 1)).all(dim=1, keepdim=True)
    py, px = torch.meshgrid(torch.linspace(0, 1, bh), torch.linspace(0, 1, bw), indexing="ij")
    pts = torch.stack([px.flatten(), py.flatten()], dim=1)
    disp = tps_displacement(ctrl, shift * inner, pts).view(bh, bw, 2)
    taper = (torch.sin(torch.pi * py) * torch.sin(torch.pi * px)) ** 2
    flow = torch.zeros(h, w, 2)
    # box units → normalised image units ([-1, 1] spans the image: 2 / (size - 1) per pixel)
    scale = torch.tensor([2.0 * (bw - 1) / max(w - 1, 1), 2.0 * (bh - 1) / max(h - 1, 1)])
    flow[y0 : y0 + bh, x0 : x0 + bw] = disp * taper[..., None] * scale
    return flow


def local_tps(x: torch.Tensor, gen: torch.Generator, cfg: PairConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp each image of ``x`` (B, C, H, W) inside a random box (prob ``p_tps``); returns (warped, box masks (B, 1, H, W))."""
    b, _, h, w = x.shape
    flows, boxes = torch.zeros(b, h, w, 2), torch.zeros(b, 1, h, w)
    for i in range(b):  # one small TPS solve per image (≤ 27 unknowns); the warp itself is one grid_sample
        if float(torch.rand(1, generator=gen)) >= cfg.p_tps:
            continue
        k = int(torch.randint(cfg.tps_points[0], cfg.tps_points[1] + 1, (1,), generator=gen))
        bh = max(k + 1, int(h * float(_uniform(gen, *cfg.tps_box))))
        bw = max(k + 1, int(w * float(_uniform(gen, *cfg.tps_box))))
        y0 = int(torch.randint(0, h - bh + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, w - bw + 1, (1,), generator=gen))
        shift = (torch.rand(k * k, 2, generator=gen) * 2 - 1) * cfg.tps_shift / (k - 1)
        flows[i] = local_tps_flow(h, w, (y0, x0, bh, bw), k, shift)
        boxes[i, 0, y0 : y0 + bh, x0 : x0 + bw] = 1.0
    grid = identity_grid(b, h, w) + flows
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True), boxes


def global_aug(x: torch.Tensor, gen: torch.Generator, cfg: PairConfig) -> torch.Tensor:
    """Resize–translate–pad (zeros) and flips, drawn per image; one grid_sample for the batch."""
    b = x.shape[0]
    s = _uniform(gen, *cfg.scale, n=b)
    tx, ty = (1 - s) * (torch.rand(b, generator=gen) * 2 - 1), (1 - s) * (torch.rand(b, generator=gen) * 2 - 1)
    fx = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    fy = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = fx / s, fy / s  # output → input coordinates: zoom out by s, flip
    theta[:, 0, 2], theta[:, 1, 2] = -tx / s, -ty / s
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def make_pairs(x: torch.Tensor, gen: torch.Generator, cfg: PairConfig) -> dict[str, torch.Tensor]:
    """Reference and target stacks (B, 5, S, S), the changed pixels and the warp boxes (B, 1, S, S) of one batch."""
    ref = global_aug(x, gen, cfg)
    independent = torch.rand(x.shape[0], generator=gen) < cfg.p_global
    tgt = ref.clone()
    if bool(independent.any()):
        tgt[independent] = global_aug(x[independent], gen, cfg)
    tgt, boxes = local_tps(tgt, gen, cfg)
    return {"reference": ref, "target": tgt, "changed": changed_pixels(ref, tgt, cfg.change_threshold), "boxes": boxes}


def changed_pixels(ref: torch.Tensor, tgt: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, 1, S, S) float: where any channel of the target differs from the reference by more than
    ``threshold``, grown by one pixel — what the fusion map should mark. A warp box over a flat region
    changes nothing there, so the box itself is not the target."""
    diff = (tgt - ref).abs().amax(dim=1, keepdim=True) > threshold
    return F.max_pool2d(diff.float(), 3, stride=1, padding=1)
