"""Per-image scores, averaged over a split: the same numbers whatever loss trained the model.

Every score is computed per image and averaged over images, so psnr is the mean of per-image
psnr (not the psnr of the mean error) and every split size weighs each image equally.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.functional.image import structural_similarity_index_measure

MAX_PSNR_DB = 100.0  # a perfect image has infinite psnr; cap it so means stay finite


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction - target).square().flatten(1).mean(1)


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image psnr in dB for images in [0, 1]."""
    error = mse(prediction, target).clamp_min(10 ** (-MAX_PSNR_DB / 10))
    return -10 * torch.log10(error)


def ssim(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return structural_similarity_index_measure(
        prediction.float(), target.float(), data_range=1.0, reduction="none"
    )


def delta_e76(lab_prediction: torch.Tensor, lab_target: torch.Tensor) -> torch.Tensor:
    """Per-image mean CIE76 ΔE: the Euclidean distance in Lab units, per pixel."""
    return (lab_prediction - lab_target).square().sum(1).sqrt().flatten(1).mean(1)


def chroma(lab: torch.Tensor) -> torch.Tensor:
    """Per-image mean chroma √(a² + b²): how colourful, whatever the hue."""
    return lab[:, 1:].square().sum(1).sqrt().flatten(1).mean(1)


class ScoreMeans(nn.Module):
    """One MeanMetric per score name, so Lightning can log, reduce across ranks and reset them."""

    def __init__(self, names: Iterable[str]) -> None:
        super().__init__()
        self.means = nn.ModuleDict({name: MeanMetric() for name in names})

    def update(self, scores: dict[str, torch.Tensor]) -> None:
        for name, values in scores.items():
            self.means[name].update(values.detach().float())

    def items(self):
        return self.means.items()
