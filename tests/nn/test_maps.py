import pytest
import torch.nn.functional as F
import torch

from generalad.nn.maps import gaussian_blur, gaussian_kernel1d, upsample_maps


def test_kernel_is_normalised_and_radius_respected():
    taps = gaussian_kernel1d(16.0, radius=18)
    assert taps.numel() == 37
    assert abs(float(taps.sum()) - 1.0) < 1e-6


def test_blur_preserves_constant_and_mass_of_impulse():
    const = torch.full((2, 40, 50), 3.0)
    assert torch.allclose(gaussian_blur(const, 4.0), const, atol=1e-5)
    impulse = torch.zeros(1, 41, 41)
    impulse[0, 20, 20] = 1.0
    out = gaussian_blur(impulse, 2.0)
    assert abs(float(out.sum()) - 1.0) < 1e-4
    assert out[0, 20, 20] == out.max()


def test_upsample_shape_and_small_map_blur():
    grid = torch.rand(3, 4, 4)
    out = upsample_maps(grid, (37, 29), sigma=8.0)
    assert out.shape == (3, 37, 29)
    tiny = gaussian_blur(torch.rand(1, 3, 3), 10.0)  # kernel larger than map must not fail
    assert tiny.shape == (1, 3, 3)


def _reference_upsample(grid, size, sigma, radius, mode):
    x = grid.unsqueeze(1)
    x = F.interpolate(x, size=size, mode="nearest") if mode == "nearest" else F.interpolate(
        x, size=size, mode="bilinear", align_corners=False
    )
    return gaussian_blur(x.squeeze(1), sigma, radius)


@pytest.mark.parametrize(
    ("grid_hw", "size", "sigma", "radius", "mode"),
    [
        ((37, 37), (518, 518), 16.0, 18, "bilinear"),  # the paper's parity map
        ((16, 16), (224, 224), 16.0 * 224 / 518, 8, "bilinear"),
        ((28, 20), (200, 150), 4.0, None, "bilinear"),  # non-square, default 4-sigma radius
        ((4, 4), (37, 29), 8.0, None, "bilinear"),  # kernel clipped to the map
        ((28, 28), (224, 224), 0.0, None, "nearest"),
        ((7, 9), (64, 50), 2.0, None, "nearest"),
    ],
)
def test_separable_upsample_equals_interpolate_then_blur(grid_hw, size, sigma, radius, mode):
    grid = torch.randn(3, *grid_hw, generator=torch.Generator().manual_seed(0))
    out = upsample_maps(grid, size, sigma=sigma, radius=radius, mode=mode)
    torch.testing.assert_close(out, _reference_upsample(grid, size, sigma, radius, mode), atol=1e-5, rtol=1e-5)
