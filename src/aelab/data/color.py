"""CIE Lab with the one normalisation both losses accept: every channel mapped into [0, 1].

L ∈ [0, 100] is divided by 100. a and b are mapped by (ab + 128) / 256, so any colour of the
sRGB gamut (|a|, |b| < 128) lands strictly inside (0, 1) and BCE targets are valid; a = b = 0,
grey, sits at 0.5. The conversion always runs in float32: kornia's Lab is not accurate in half.
"""

from __future__ import annotations

import torch
from kornia.color import lab_to_rgb, rgb_to_lab

L_SCALE = 100.0
AB_OFFSET = 128.0
AB_SCALE = 256.0


def rgb_to_lab_normalized(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] → normalised Lab (B, 3, H, W) in [0, 1]."""
    with torch.autocast(device_type=rgb.device.type, enabled=False):
        lab = rgb_to_lab(rgb.float())
    return torch.cat([lab[:, :1] / L_SCALE, (lab[:, 1:] + AB_OFFSET) / AB_SCALE], dim=1)


def lab_normalized_to_rgb(lab_normalized: torch.Tensor) -> torch.Tensor:
    """Normalised Lab (B, 3, H, W) → RGB in [0, 1], clipped to the displayable range."""
    lab = unnormalize_lab(lab_normalized.float())
    with torch.autocast(device_type=lab.device.type, enabled=False):
        return lab_to_rgb(lab, clip=True)


def unnormalize_lab(lab_normalized: torch.Tensor) -> torch.Tensor:
    """Normalised Lab → Lab in its own units (L in [0, 100], a and b around 0), for ΔE."""
    return torch.cat(
        [lab_normalized[:, :1] * L_SCALE, lab_normalized[:, 1:] * AB_SCALE - AB_OFFSET], dim=1
    )


def lab_to_rgb_keeping_lightness(lab_normalized: torch.Tensor, steps: int = 12) -> torch.Tensor:
    """Normalised Lab → RGB in [0, 1] whose L is the given L, for colours outside the sRGB gamut too.

    Clipping an out-of-gamut colour changes its lightness; instead each pixel's chroma is scaled
    down (same L, same hue) by bisection until it fits. Grey (chroma 0) is always in gamut.
    """
    lab = unnormalize_lab(lab_normalized.float())
    lightness, ab = lab[:, :1], lab[:, 1:]

    def in_gamut(scale: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=lab.device.type, enabled=False):
            rgb = lab_to_rgb(torch.cat([lightness, ab * scale], dim=1), clip=False)
        return ((rgb >= -1e-4) & (rgb <= 1 + 1e-4)).all(dim=1, keepdim=True)

    low = torch.zeros_like(lightness)
    high = torch.ones_like(lightness)
    fits = in_gamut(high)
    for _ in range(steps):
        middle = (low + high) / 2
        ok = in_gamut(middle)
        low, high = torch.where(ok, middle, low), torch.where(ok, high, middle)
    scale = torch.where(fits, torch.ones_like(low), low)
    with torch.autocast(device_type=lab.device.type, enabled=False):
        return lab_to_rgb(torch.cat([lightness, ab * scale], dim=1), clip=True)
