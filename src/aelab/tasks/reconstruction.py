"""Reconstruction: the image is both the input and the target."""

from __future__ import annotations

import torch

from aelab.tasks import metrics
from aelab.tasks.base import AutoEncoderTask


class ReconstructionTask(AutoEncoderTask):
    name = "reconstruction"
    color_space = "rgb"
    in_channels = 3
    out_channels = 3
    score_names = ("bce", "mse", "psnr", "ssim")

    def split_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return batch, batch

    def compute_scores(
        self, inputs: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        prediction = torch.sigmoid(logits)
        return {
            "bce": metrics.bce(logits, targets),
            "mse": metrics.mse(prediction, targets),
            "psnr": metrics.psnr(prediction, targets),
            "ssim": metrics.ssim(prediction, targets),
        }

    def preview_rows(self, batch: torch.Tensor) -> list[torch.Tensor]:
        return [batch, torch.sigmoid(self(batch))]
