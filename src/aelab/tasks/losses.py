"""Training losses on the network's logits; targets are always in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aelab.choices import REGRESSION_LOSSES


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy, computed from logits for numerical stability."""
    return F.binary_cross_entropy_with_logits(logits, target)


def mse_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the sigmoid output, i.e. of the predicted image."""
    return F.mse_loss(torch.sigmoid(logits), target)


def soft_cross_entropy(
    logits: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, pixel_weight: torch.Tensor
) -> torch.Tensor:
    """Mean over pixels of pixel_weight × cross-entropy against a sparse soft target.

    logits (B, Q, H, W); the target of each pixel puts weight[:, k] on class index[:, k]
    (both (B, K, H, W), K ≪ Q, weights summing to 1); pixel_weight (B, H, W).
    """
    log_probabilities = torch.log_softmax(logits.float(), dim=1)
    per_pixel = -(log_probabilities.gather(1, index) * weight).sum(1)
    return (per_pixel * pixel_weight).mean()


LOSSES = dict(zip(REGRESSION_LOSSES, (bce_loss, mse_loss), strict=True))
