import torch
from kornia.color import rgb_to_lab

from aelab.data.color import (
    lab_normalized_to_rgb,
    lab_to_rgb_keeping_lightness,
    rgb_to_lab_normalized,
    unnormalize_lab,
)


def test_round_trip_returns_the_rgb_image():
    rgb = torch.rand(4, 3, 16, 16)
    assert torch.allclose(lab_normalized_to_rgb(rgb_to_lab_normalized(rgb)), rgb, atol=1e-4)


def test_normalisation_maps_the_srgb_gamut_into_the_unit_interval():
    corners = torch.tensor(
        [[r, g, b] for r in (0, 1) for g in (0, 1) for b in (0, 1)], dtype=torch.float32
    )
    lab = rgb_to_lab_normalized(corners.view(8, 3, 1, 1))
    assert lab.min() >= 0 and lab.max() <= 1
    assert torch.allclose(unnormalize_lab(lab), rgb_to_lab(corners.view(8, 3, 1, 1)), atol=1e-4)
    grey = rgb_to_lab_normalized(torch.full((1, 3, 1, 1), 0.5))
    assert torch.allclose(grey[0, 1:].flatten(), torch.tensor([0.5, 0.5]), atol=1e-4)


def test_out_of_gamut_colours_keep_their_lightness():
    lightness = torch.linspace(0.05, 0.95, 10).view(1, 1, 1, 10).expand(1, 1, 4, 10)
    extremes = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]).view(1, 4, 2, 1)
    ab = extremes.permute(0, 2, 1, 3).expand(1, 2, 4, 10)
    rgb = lab_to_rgb_keeping_lightness(torch.cat([lightness, ab], dim=1))
    assert rgb.min() >= 0 and rgb.max() <= 1
    assert torch.allclose(rgb_to_lab_normalized(rgb)[:, :1], lightness, atol=2e-3)
    clipped = lab_normalized_to_rgb(torch.cat([lightness, ab], dim=1))
    assert (rgb_to_lab_normalized(clipped)[:, :1] - lightness).abs().max() > 0.02  # why it exists
