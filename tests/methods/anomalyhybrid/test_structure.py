"""Structure maps (docs/methods/anomalyhybrid.md §2): thin edges on boundaries only, pseudo-depth range,
sensor depth from MVTec 3D-AD xyz maps, and one-line errors for unknown or missing sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generalad.data import Sample
from generalad.errors import ConfigError, InputError
from generalad.methods.anomalyhybrid.structure import StructureSources, pseudo_depth, sobel_nms_edges


def _square(s: int = 48) -> torch.Tensor:
    x = torch.full((1, 3, s, s), 0.2)
    x[..., 12:36, 12:36] = 0.8
    return x


def test_edges_are_thin_and_sit_on_the_boundary() -> None:
    e = sobel_nms_edges(_square())[0, 0]
    assert e.shape == (48, 48) and float(e.min()) >= 0 and float(e.max()) == pytest.approx(1.0)
    strong = e > 0.5
    assert not strong[20:28, 20:28].any() and not strong[:6].any()  # flat inside and outside
    row = strong[24]
    assert row[10:14].any() and row[34:38].any()
    assert int(row[8:16].sum()) <= 2  # non-maximum suppression: at most 2 px across the edge


def test_pseudo_depth_is_normalised_and_smooth() -> None:
    d = pseudo_depth(_square())
    assert float(d.min()) == pytest.approx(0.0) and float(d.max()) == pytest.approx(1.0)
    assert float(d[0, 0, 24, 24]) > float(d[0, 0, 2, 2])
    flat = pseudo_depth(torch.full((1, 3, 32, 32), 0.5))
    assert torch.allclose(flat, torch.full_like(flat, 0.5))


def test_sources_validate_and_describe_themselves(tmp_path) -> None:
    with pytest.raises(ConfigError, match="edges must be"):
        StructureSources(edges="canny2")
    with pytest.raises(ConfigError, match="depth must be"):
        StructureSources(depth="midas")
    with pytest.raises(InputError, match="not found"):
        StructureSources(depth=f"onnx:{tmp_path / 'missing.onnx'}").maps(_square())
    src = StructureSources(depth="none")
    maps = src.maps(_square())
    assert maps.shape == (1, 2, 48, 48) and float(maps[:, 0].abs().max()) == 0.0 and not src.uses_depth
    assert "PiDiNet stand-in" in StructureSources().describe()["edges"]
    assert "not depth" in StructureSources().describe()["depth"]


def test_sensor_depth_reads_the_xyz_map(tmp_path) -> None:
    tifffile = pytest.importorskip("tifffile")
    z = np.tile(np.linspace(1.0, 2.0, 40, dtype=np.float32), (32, 1))
    z[5, 5] = 0.0  # a missing point
    xyz = np.stack([np.zeros_like(z), np.zeros_like(z), z], axis=-1)
    tifffile.imwrite(tmp_path / "000.tiff", xyz)
    sample = Sample(str(tmp_path / "000.png"), 0, depth_path=str(tmp_path / "000.tiff"))
    d = StructureSources(depth="sensor").depth_maps(torch.zeros(1, 3, 16, 20), [sample])
    assert d.shape == (1, 1, 16, 20) and float(d.min()) >= 0 and float(d.max()) <= 1
    assert float(d[0, 0, 8, 18]) > float(d[0, 0, 8, 1])  # z grows along x
    with pytest.raises(InputError, match="xyz"):
        StructureSources(depth="sensor").depth_maps(torch.zeros(1, 3, 16, 20), [Sample("a.png", 0)])
