"""Colorization: lightness L in, chrominance a and b out, all in normalised Lab.

With loss=bce or mse the network regresses a and b (two sigmoid outputs). With loss=ce it
classifies each pixel's ab into the quantized bins of aelab.tasks.ab_bins (one logit per bin, at
1/task.ce_stride of the image's side when the network upsamples), and the annealed mean at
task.temperature decodes it.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from aelab.choices import DEFAULT_TEMPERATURE
from aelab.data.color import lab_normalized_to_rgb, unnormalize_lab
from aelab.errors import AelabError
from aelab.tasks import ab_bins, metrics
from aelab.tasks.ab_bins import (
    DEFAULT_STRIDE,
    classifier_logits,
    decode_bins,
    refuse_strided_plugin,
)
from aelab.tasks.base import AutoEncoderTask, OptimizerFactory
from aelab.tasks.losses import LOSSES

log = logging.getLogger("aelab")

DEFAULT_REBALANCE = 0.5  # Zhang et al.'s λ
STRIDES = (1, 2, 4)


class ColorizationTask(AutoEncoderTask):
    name = "colorization"
    color_space = "lab"
    in_channels = 1
    out_channels = 2
    accepted_losses = (*LOSSES, "ce")
    score_names = (
        "ab_mse", "psnr", "ssim", "delta_e", "chroma", "chroma_true",
        "colorfulness", "colorfulness_true", "auc", "auc_rebalanced",
    )  # fmt: skip

    def __init__(
        self,
        model: nn.Module | dict,
        loss: str = "bce",
        optimizer: OptimizerFactory | None = None,
        scheduler: dict | None = None,
        channels_last: bool = True,
        rebalance: float = DEFAULT_REBALANCE,
        temperature: float = DEFAULT_TEMPERATURE,
        ce_stride: int = DEFAULT_STRIDE,
    ) -> None:
        """`rebalance` (λ), `temperature` (T) and `ce_stride` (logits at 1/ce_stride of the image
        size) act with loss=ce; the bins' training prior weighs the rebalanced AuC of every loss."""
        super().__init__(model, loss, optimizer, scheduler, channels_last)
        if ce_stride not in STRIDES:
            raise AelabError(f"task.ce_stride must be one of {list(STRIDES)}, got {ce_stride!r}.")
        if loss == "ce":
            refuse_strided_plugin(self.model, ce_stride)
        self.hparams.update(
            rebalance=float(rebalance), temperature=float(temperature), ce_stride=int(ce_stride)
        )
        self.bins = ab_bins.BinTables(rebalance)
        self.classifies = loss == "ce"

    @classmethod
    def output_channels(cls, loss: str) -> int:
        return ab_bins.bin_count() if loss == "ce" else cls.out_channels

    def target_phrase(self, image_size: int) -> str | None:
        """With loss=ce the 2-channel ab target is predicted as bin logits at 1/ce_stride of the
        image's side (at full size without upsamplings to leave out): their shape, measured."""
        if not self.classifies:
            return None
        training = self.training
        self.eval()  # a measurement: batch norm's running statistics stay as they were
        try:
            with torch.no_grad():
                lightness = torch.zeros(
                    1, self.in_channels, image_size, image_size, device=self.device
                )
                bins, height, width = self(lightness).shape[1:]
        finally:
            self.train(training)
        side = (
            "the image's size"
            if height == image_size
            else f"1/{image_size // height} of the image's side"
        )
        target = self.out_channels * image_size * image_size
        return (
            f"{self.out_channels}×{image_size}×{image_size} = {target:,}-value ab target "
            f"(predicted as {bins} bin logits at {height}×{width}, {side})"
        )

    def make_loss(self, loss: str):
        return self._cross_entropy if loss == "ce" else LOSSES[loss]

    def _cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.bins.cross_entropy(logits, targets)

    def setup(self, stage: str) -> None:
        """The training split's ab prior (cached under data.cache_dir), for the rebalancing
        weights and the rebalanced AuC; without an aelab DataModule the prior stays uniform."""
        datamodule = getattr(self.trainer, "datamodule", None)
        splits = getattr(datamodule, "splits", None)
        if not splits or "train" not in splits:
            log.warning("No training split to draw the ab prior from: rebalancing is uniform.")
            return
        prior = ab_bins.training_prior(
            splits["train"], datamodule.to_model_space, getattr(datamodule, "cache_dir", None)
        )
        self.bins.set_prior(prior)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.contiguous(memory_format=self.memory_format)
        if self.classifies:
            return classifier_logits(self.model, inputs, self.hparams.ce_stride)
        return self.model(inputs)

    def predict_ab(self, logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Normalised ab (B, 2, *size) from the network's logits, whatever the loss."""
        if logits.shape[1] == self.out_channels:  # regression (or the grey baseline)
            return torch.sigmoid(logits.float())
        return decode_bins(logits, self.hparams.temperature, size)

    def split_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return batch[:, :1], batch[:, 1:]

    def compute_scores(
        self, inputs: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor
    ) -> dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        """ab error in normalised units; the rest on the image rebuilt with the true L."""
        predicted_ab = self.predict_ab(logits, targets.shape[-2:])
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
            "colorfulness": metrics.colorfulness(predicted_rgb),
            "colorfulness_true": metrics.colorfulness(true_rgb),
            "auc": metrics.ab_auc(predicted_lab, true_lab),
            "auc_rebalanced": metrics.pooled_ab_auc(
                predicted_lab, true_lab, self.bins.rarity(targets)
            ),
        }

    def baseline_logits(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The grayscale prediction a = b = 0, i.e. normalised ab = 0.5, i.e. logits = 0 (two
        channels: predict_ab reads them as regression logits whatever the loss)."""
        return torch.zeros_like(targets)

    def preview_rows(self, batch: torch.Tensor) -> list[torch.Tensor]:
        lightness = batch[:, :1]
        gray = torch.cat([lightness, torch.full_like(batch[:, 1:], 0.5)], dim=1)
        predicted_ab = self.predict_ab(self(lightness).float(), batch.shape[-2:])
        predicted = torch.cat([lightness, predicted_ab], dim=1)
        return [lab_normalized_to_rgb(image) for image in (gray, predicted, batch)]
