"""Colorization: lightness L in, chrominance a and b out, all in normalised Lab."""

from __future__ import annotations

import torch

from aelab.data.color import lab_normalized_to_rgb, unnormalize_lab
from aelab.tasks import metrics
from aelab.tasks.base import AutoEncoderTask


class ColorizationTask(AutoEncoderTask):
    name = "colorization"
    color_space = "lab"
    in_channels = 1
    out_channels = 2
    score_names = ("ab_mse", "psnr", "ssim", "delta_e", "chroma", "chroma_true")

    def split_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return batch[:, :1], batch[:, 1:]

    def compute_scores(
        self, inputs: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """ab error in normalised units; the rest on the image rebuilt with the true L."""
        predicted_ab = torch.sigmoid(logits)
        predicted = torch.cat([inputs, predicted_ab], dim=1)
        truth = torch.cat([inputs, targets], dim=1)
        predicted_rgb, true_rgb = lab_normalized_to_rgb(predicted), lab_normalized_to_rgb(truth)
        predicted_lab, true_lab = unnormalize_lab(predicted), unnormalize_lab(truth)
        return {
            "ab_mse": metrics.mse(predicted_ab, targets),
            "psnr": metrics.psnr(predicted_rgb, true_rgb),
            "ssim": metrics.ssim(predicted_rgb, true_rgb),
            "delta_e": metrics.delta_e76(predicted_lab, true_lab),
            "chroma": metrics.chroma(predicted_lab),
            "chroma_true": metrics.chroma(true_lab),
        }

    def baseline_logits(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The grayscale prediction a = b = 0, i.e. normalised ab = 0.5, i.e. logits = 0."""
        return torch.zeros_like(targets)

    def preview_rows(self, batch: torch.Tensor) -> list[torch.Tensor]:
        lightness = batch[:, :1]
        gray = torch.cat([lightness, torch.full_like(batch[:, 1:], 0.5)], dim=1)
        predicted = torch.cat([lightness, torch.sigmoid(self(lightness).float())], dim=1)
        return [lab_normalized_to_rgb(image) for image in (gray, predicted, batch)]
