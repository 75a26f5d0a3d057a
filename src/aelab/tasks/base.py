"""What both tasks share: the step, the loss, per-epoch logging, metrics and the optimizer.

A task only says how a batch splits into (inputs, targets), which scores it reports and how its
preview rows look; everything else lives here.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import lightning as L
import torch
from torch import nn

from aelab.errors import AelabError
from aelab.metrics import ScoreMeans
from aelab.models import ConvAutoEncoder
from aelab.tasks.losses import LOSSES

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class AutoEncoderTask(L.LightningModule):
    name: str = ""
    color_space: str = "rgb"  # what the DataModule must deliver for this task
    in_channels: int = 3
    out_channels: int = 3
    score_names: tuple[str, ...] = ()

    def __init__(
        self,
        model: ConvAutoEncoder,
        loss: str = "bce",
        optimizer: OptimizerFactory | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise AelabError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}.")
        if (model.in_channels, model.out_channels) != (self.in_channels, self.out_channels):
            raise AelabError(
                f"The {self.name} task needs a network with {self.in_channels} input and "
                f"{self.out_channels} output channels, got {model.in_channels} and "
                f"{model.out_channels}; leave model.in_channels/out_channels to the task config."
            )
        self.save_hyperparameters(ignore=["model", "optimizer"], logger=False)
        # channels_last: oneDNN's fast convolution layout on the CPU (about 1.6× here, see
        # scripts/benchmark.py); inputs are converted in forward, so callers need not care.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format)
        self.loss_fn = LOSSES[loss]
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=1e-3)
        self.scores = nn.ModuleDict(
            {stage: ScoreMeans(self.score_names) for stage in ("val", "test")}
        )

    # What a task defines ------------------------------------------------------------------------
    def split_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) from a batch in the task's colour space."""
        raise NotImplementedError

    def compute_scores(
        self, inputs: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-image scores (each a (B,) tensor) named as in score_names."""
        raise NotImplementedError

    def preview_rows(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """RGB image rows (each (B, 3, H, W) in [0, 1]) that show what the model does."""
        raise NotImplementedError

    # Shared ---------------------------------------------------------------------------------
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of inputs in the task's colour space."""
        return self.model(inputs.contiguous(memory_format=self.memory_format))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        inputs, targets = self.split_batch(batch)
        loss = self.loss_fn(self(inputs), targets)
        self.log(
            "train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(batch)
        )
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: torch.Tensor, stage: str) -> None:
        inputs, targets = self.split_batch(batch)
        logits = self(inputs)
        loss = self.loss_fn(logits, targets)
        self.log(f"{stage}/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(batch))
        means = self.scores[stage]
        means.update(self.compute_scores(inputs, targets, logits))
        for name, metric in means.items():
            self.log(f"{stage}/{name}", metric, on_epoch=True, batch_size=len(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Plain-typed facts that let predict.py rebuild the network with weights_only loading."""
        checkpoint["aelab"] = {
            "task": self.name,
            "loss": self.hparams.loss,
            "model": self.model.config(),
        }
