"""Training losses on the network's logits; targets are always in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy, computed from logits for numerical stability."""
    return F.binary_cross_entropy_with_logits(logits, target)


def mse_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the sigmoid output, i.e. of the predicted image."""
    return F.mse_loss(torch.sigmoid(logits), target)


LOSSES = {"bce": bce_loss, "mse": mse_loss}
