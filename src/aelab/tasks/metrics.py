"""Per-image scores, averaged over a split: the same numbers whatever loss trained the model.

Every score is computed per image and averaged over images, so psnr is the mean of per-image
psnr (not the psnr of the mean error) and every split size weighs each image equally; the one
exception, the rebalanced AuC, pools pixels over the split (pooled_ab_auc).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric

MAX_PSNR_DB = 100.0  # a perfect image has infinite psnr; cap it so means stay finite
AUC_MAX_ERROR = 150.0  # Zhang et al.'s AuC: ab error thresholds from 0 to 150


def float32(score: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """The score computed in float32 outside any autocast, whatever precision the caller runs in."""

    @functools.wraps(score)
    def in_float32(*images: torch.Tensor, **options) -> torch.Tensor:
        with torch.autocast(device_type=images[0].device.type, enabled=False):
            return score(*(image.float() for image in images), **options)

    return in_float32


@float32
def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)


@float32
def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction - target).square().flatten(1).mean(1)


@float32
def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image psnr in dB for images in [0, 1]."""
    error = mse(prediction, target).clamp_min(10 ** (-MAX_PSNR_DB / 10))
    return -10 * torch.log10(error)


@float32
def ssim(
    prediction: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Per-image SSIM for images in [0, 1], equal to torchmetrics' default SSIM.

    Same Gaussian window, constants, reflect padding and full-image mean as torchmetrics, but the
    window is applied as two 1-D convolutions: on 32×32 images this is several times faster, and
    it runs every validation epoch.
    """
    channels = prediction.shape[1]
    coords = torch.arange(window, dtype=torch.float32, device=prediction.device) - (window - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).repeat(5 * channels, 1, 1, 1)
    pad = (window - 1) // 2
    x, y = prediction, target
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    stacked = F.pad(stacked, (pad, pad, pad, pad), mode="reflect")
    blurred = F.conv2d(stacked, kernel.view(-1, 1, 1, window), groups=5 * channels)
    blurred = F.conv2d(blurred, kernel.view(-1, 1, window, 1), groups=5 * channels)
    mu_x, mu_y, xx, yy, xy = blurred.split(channels, dim=1)
    var_x, var_y = (xx - mu_x**2).clamp_min(0), (yy - mu_y**2).clamp_min(0)
    cov = xy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.flatten(1).mean(1)


@float32
def delta_e76(lab_prediction: torch.Tensor, lab_target: torch.Tensor) -> torch.Tensor:
    """Per-image mean CIE76 ΔE: the Euclidean distance in Lab units, per pixel."""
    return (lab_prediction - lab_target).square().sum(1).sqrt().flatten(1).mean(1)


@float32
def chroma(lab: torch.Tensor) -> torch.Tensor:
    """Per-image mean chroma √(a² + b²): how colourful, whatever the hue."""
    return lab[:, 1:].square().sum(1).sqrt().flatten(1).mean(1)


@float32
def colorfulness(rgb: torch.Tensor) -> torch.Tensor:
    """Per-image colourfulness of Hasler and Süsstrunk (2003) on 0-255 sRGB: σ_rgyb + 0.3·μ_rgyb
    with rg = R − G and yb = (R + G)/2 − B (0 for a grey image)."""
    red, green, blue = (rgb * 255).unbind(1)
    rg, yb = (red - green).flatten(1), (0.5 * (red + green) - blue).flatten(1)
    spread = (rg.var(1, unbiased=False) + yb.var(1, unbiased=False)).sqrt()
    return spread + 0.3 * (rg.mean(1).square() + yb.mean(1).square()).sqrt()


@float32
def ab_auc(
    lab_prediction: torch.Tensor, lab_target: torch.Tensor, pixel_weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-image AuC (%) of the curve 'fraction of pixels whose ab error is within t' over
    t ∈ [0, 150], normalised to 100 %: a pixel contributes max(0, 1 − error/150).
    With pixel_weight (B, H, W) the fraction is weighted (class-rebalanced AuC)."""
    error = (lab_prediction[:, 1:] - lab_target[:, 1:]).square().sum(1).sqrt()
    within = (1 - error / AUC_MAX_ERROR).clamp_min(0).flatten(1)
    if pixel_weight is None:
        return 100 * within.mean(1)
    weight = pixel_weight.flatten(1)
    return 100 * (within * weight).sum(1) / weight.sum(1)


def pooled_ab_auc(
    lab_prediction: torch.Tensor, lab_target: torch.Tensor, pixel_weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted AuC per image with each image's total pixel weight: averaged with those
    weights (ScoreMeans does), it is the AuC over every pixel of the split, as Zhang et al. pool
    it, so that rare colours weigh by their pixels, not by the images they are in."""
    auc = ab_auc(lab_prediction, lab_target, pixel_weight)
    return auc, pixel_weight.float().flatten(1).sum(1)


class WeightedMean(Metric):
    """Σ value·weight / Σ weight over every update (and every rank): MeanMetric without its
    NaN check, which syncs with the GPU per update, and which with nan_strategy="disable" drops
    the weights (torchmetrics 1.9)."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        weight = torch.ones_like(value) if weight is None else weight
        self.total += (value * weight).sum()
        self.weight += weight.sum()

    def compute(self) -> torch.Tensor:
        return self.total / self.weight


class ScoreMeans(nn.Module):
    """One mean per score name, so Lightning can log, reduce across ranks and reset them."""

    def __init__(self, names: Iterable[str]) -> None:
        super().__init__()
        self.means = nn.ModuleDict({name: WeightedMean() for name in names})

    def update(self, scores: dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Each score per image, or (per image, weight per image) for a weighted mean."""
        for name, values in scores.items():
            if isinstance(values, tuple):
                values, weight = values
                self.means[name].update(values.detach().float(), weight.detach().float())
            else:
                self.means[name].update(values.detach().float())

    def items(self):
        return self.means.items()
