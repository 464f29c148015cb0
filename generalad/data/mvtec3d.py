"""MVTec 3D-AD layout: RGB images plus organised point clouds (xyz TIFFs) and per-image ground truth.

```
<root>/train/good/{rgb,xyz}/NNN.{png,tiff}
<root>/validation/good/{rgb,xyz}/NNN.{png,tiff}       (normal-only)
<root>/test/<type>/{rgb,xyz,gt}/NNN.{png,tiff,png}     <type> "good" = normal (its gt/ masks are all zero)
```
A sample is its RGB image (``Sample.path``, read by ``read_image`` like any 2-D dataset) and its xyz map
(``Sample.depth_path``), matched by stem, case-insensitively, ``.tiff`` or ``.tif``; anomalous test images get
``gt/<stem>.png`` as their mask. A missing xyz map or mask is a broken download and an error naming the path.

An xyz map is float32 (H, W, 3): the x, y, z camera coordinates of the point seen at each pixel, with missing
points stored as (0, 0, 0). ``depth_from_xyz`` turns it into a per-image normalised, in-painted depth image.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import tifffile
from scipy.ndimage import distance_transform_edt

from generalad.data._fs import absolute, files_by_lower_name, require_dir, require_images, subdirs
from generalad.data.images import _one_line, _require_file
from generalad.data.sample import Dataset, Sample, sort_samples
from generalad.errors import ConfigError, InputError

NORMAL = "good"
_XYZ_EXTENSIONS = (".tiff", ".tif")  # ".tiff" first: the canonical MVTec 3D-AD name wins
# tifffile raises TiffFileError (a ValueError) for bad headers and ValueError for truncated strips.
_TIFF_ERRORS = (OSError, ValueError, EOFError, KeyError, IndexError, TypeError, struct.error, zlib.error)


def _xyz_for(index: dict[str, Path], folder: Path, image: Path) -> str:
    """The xyz map of ``image`` in ``folder`` (``index`` = files_by_lower_name(folder)), or InputError."""
    for ext in _XYZ_EXTENSIONS:
        hit = index.get(f"{image.stem}{ext}".lower())
        if hit is not None:
            return str(hit)
    raise InputError(f"xyz map not found for {image}: expected {folder / (image.stem + '.tiff')}")


def _gt_for(index: dict[str, Path], folder: Path, image: Path) -> tuple[str, ...]:
    hit = index.get(f"{image.stem}.png".lower())
    if hit is None:
        raise InputError(f"mask not found for {image}: expected {folder / (image.stem + '.png')}")
    return (str(hit),)


def _read_type_dir(type_dir: Path, category: str, split: str) -> list[Sample]:
    """Every ``type_dir/rgb`` image with its xyz map; anomalous ones (type not "good") with their gt mask."""
    defect = type_dir.name
    label = 0 if defect.lower() == NORMAL else 1
    xyz_dir, gt_dir = type_dir / "xyz", type_dir / "gt"
    xyz_index = files_by_lower_name(xyz_dir)
    gt_index = files_by_lower_name(gt_dir) if label else {}
    return [
        Sample(
            str(image), label, defect, _gt_for(gt_index, gt_dir, image) if label else (), category, split,
            depth_path=_xyz_for(xyz_index, xyz_dir, image),
        )
        for image in require_images(type_dir / "rgb")
    ]


def _read_test(root: Path, category: str) -> list[Sample]:
    test_dir = require_dir(root / "test")
    samples = [s for type_dir in subdirs(test_dir) for s in _read_type_dir(type_dir, category, "test")]
    if not samples:
        raise InputError(f"no images found in {test_dir}")
    return sort_samples(samples)


def read_mvtec3d(root: str | Path) -> Dataset:
    """Read one MVTec 3D-AD category folder (e.g. ``mvtec_3d_anomaly_detection/bagel``).

    Train is ``train/good``, validation ``validation/good`` (empty when absent), test every ``test/<type>``;
    every sample carries ``depth_path``; the calibration folder is not read.
    """
    root = require_dir(absolute(root))
    category = root.name
    validation_dir = root / "validation" / NORMAL
    return Dataset(
        name="mvtec3d",
        category=category,
        root=str(root),
        train=sort_samples(_read_type_dir(root / "train" / NORMAL, category, "train")),
        test=_read_test(root, category),
        validation=sort_samples(_read_type_dir(validation_dir, category, "validation"))
        if validation_dir.is_dir()
        else [],
        has_masks=True,
    )


def read_xyz(path: str | Path) -> np.ndarray:
    """float32 (H, W, 3) xyz map of one MVTec 3D-AD TIFF; one-line InputError naming the file on any failure."""
    path = Path(path)
    _require_file(path, "xyz map")
    try:
        xyz = np.asarray(tifffile.imread(path))
    except _TIFF_ERRORS as err:
        raise InputError(f"cannot decode xyz map {path}: {_one_line(err)}") from err
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise InputError(f"cannot read xyz map {path}: array shape {xyz.shape} is not (H, W, 3)")
    if not (np.issubdtype(xyz.dtype, np.floating) or np.issubdtype(xyz.dtype, np.integer)):
        raise InputError(f"cannot read xyz map {path}: unsupported dtype {xyz.dtype}")
    return xyz.astype(np.float32, copy=False)


def _resize(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (align_corners=False, antialiased when shrinking, as images are) float resize to (H, W)."""
    import torch  # lazy: reading a dataset does not need torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(depth))[None, None]
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0]
    return np.clip(out.numpy(), 0.0, 1.0)


def depth_from_xyz(
    xyz: np.ndarray, size: tuple[int, int] | None = None, *, where: str = "<xyz array>"
) -> np.ndarray:
    """Depth image float32 (H, W) in [0, 1] from an xyz map (H, W, 3); ``size`` = (H, W) resizes bilinearly.

    Depth is the z channel, the distance along the sensor's optical axis: larger z = farther from the sensor.
    It is kept as is (not inverted), so after normalisation 0 is the nearest and 1 the farthest valid point of
    THIS image (min → 0, max → 1; a constant z → 0.5). A point is invalid when z == 0 (MVTec 3D-AD's mark for a
    missing point) or z is not finite; invalid pixels take the value of the nearest valid pixel (Euclidean).
    No background-plane removal is done. ``where`` names the source in errors; no valid point is an InputError.
    """
    xyz = np.asarray(xyz)
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise InputError(f"cannot read xyz map {where}: array shape {xyz.shape} is not (H, W, 3)")
    z = xyz[:, :, 2].astype(np.float32)
    invalid = ~np.isfinite(z) | (z == 0)
    if invalid.all():
        raise InputError(f"xyz map {where} has no valid point (every z is 0 or not finite)")
    lo, hi = float(z[~invalid].min()), float(z[~invalid].max())
    depth = (z - lo) / np.float32(hi - lo) if hi > lo else np.full_like(z, 0.5)
    if invalid.any():
        rows, cols = distance_transform_edt(invalid, return_distances=False, return_indices=True)
        depth = depth[rows, cols]  # each invalid pixel → its nearest valid one; valid pixels map to themselves
    depth = np.clip(depth, 0.0, 1.0).astype(np.float32)
    if size is None or tuple(size) == depth.shape:
        return depth
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"depth size must be (H, W) with positive sides, got {size}")
    return _resize(depth, (int(size[0]), int(size[1])))


def read_depth(sample: Sample, size: tuple[int, int] | None = None) -> np.ndarray:
    """``depth_from_xyz`` of the sample's xyz map: float32 (H, W) in [0, 1], or ``size`` = (H, W)."""
    if not sample.depth_path:
        raise InputError(f"sample {sample.path} has no xyz map (not an MVTec 3D-AD sample)")
    return depth_from_xyz(read_xyz(sample.depth_path), size, where=sample.depth_path)
