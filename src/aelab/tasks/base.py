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
from torchmetrics import MeanMetric

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
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise AelabError(f"loss must be one of {sorted(LOSSES)}, got {loss!r}.")
        if (model.in_channels, model.out_channels) != (self.in_channels, self.out_channels):
            raise AelabError(
                f"The {self.name} task needs a network with {self.in_channels} input and "
                f"{self.out_channels} output channels, got {model.in_channels} and "
                f"{model.out_channels}; build it with {type(self).__name__}.in_channels/out_channels."
            )
        if gradient_clip_val is not None and not (
            isinstance(gradient_clip_val, (int, float)) and gradient_clip_val >= 0
        ):
            raise AelabError(
                f"task.gradient_clip_val must be a number ≥ 0 (0 or null: no clipping), got "
                f"{gradient_clip_val!r}; e.g. task.gradient_clip_val=1.0."
            )
        if gradient_clip_algorithm not in ("norm", "value"):
            raise AelabError(
                f"task.gradient_clip_algorithm must be 'norm' (clip the gradients' total norm) or "
                f"'value' (clip each element), got {gradient_clip_algorithm!r}."
            )
        self.save_hyperparameters(ignore=["model", "optimizer"], logger=False)
        # The step below backpropagates and steps the optimizer itself. Lightning's automatic
        # optimization runs the same operations inside layers of closures, optimizer wrappers and
        # hooks that cost about 0.16 ms per step here, 1 % of a CPU step (README, Throughput).
        # What that costs in features: clipping lives here (gradient_clip_val), not in the Trainer;
        # Lightning then neither accumulates gradients nor steps LR schedulers, and no longer calls
        # the on_before_zero_grad, optimizer_zero_grad, optimizer_step and
        # configure_gradient_clipping hooks.
        self.automatic_optimization = False
        self.gradient_clip_val, self.gradient_clip_algorithm = (
            gradient_clip_val,
            gradient_clip_algorithm,
        )
        # channels_last: oneDNN's fast convolution layout on the CPU (about 1.6× here, see
        # scripts/benchmark.py); inputs are converted in forward, so callers need not care.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format)
        self.loss_fn = LOSSES[loss]
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=1e-3)
        stages = ("val", "test")
        self.scores = nn.ModuleDict({stage: ScoreMeans(self.score_names) for stage in stages})
        self.baseline_scores = nn.ModuleDict({s: ScoreMeans(self.score_names) for s in stages})
        # Metrics, not plain tensors, so that under DDP the epoch's loss is the mean over every
        # rank's images (what best.ckpt is chosen by), not the mean of per-rank means.
        self.losses = nn.ModuleDict({stage: MeanMetric(nan_strategy="disable") for stage in stages})
        # The epoch's training loss, summed (a buffer, so it follows the model to its device).
        self.register_buffer("_loss_sum", torch.zeros(()), persistent=False)
        self._loss_images = 0

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

    def baseline_logits(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """Logits of a trivial predictor a model must beat, scored beside it; None for no baseline."""
        return None

    # Shared ---------------------------------------------------------------------------------
    def __setattr__(self, name: str, value) -> None:
        # Lightning sets _current_fx_name around every hook call, about 44 times per training step;
        # it is never a parameter, buffer or submodule, so nn.Module's checks for those (about
        # 70 µs per step here, measured with a no-op model) are skipped for it.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of inputs in the task's colour space."""
        return self.model(inputs.contiguous(memory_format=self.memory_format))

    def on_train_epoch_start(self) -> None:
        self._loss_sum.zero_()
        self._loss_images = 0

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """The step Lightning's automatic optimization takes, in the same order (so the same
        weights): forward, loss, backward, optimizer step (precision plugin and hooks included)."""
        inputs, targets = self.split_batch(batch)
        loss = self.loss_fn(self(inputs), targets)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        # Summed here and logged once per epoch: self.log on every step is Lightning's largest
        # per-step cost on this tiny network (scripts/benchmark.py), and only the mean is shown.
        self._loss_sum.add_(loss.detach(), alpha=len(batch))
        self._loss_images += len(batch)
        return loss  # for the callbacks' outputs["loss"] (StopOnDivergence)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Where Lightning clips in automatic optimization: after a mixed-precision unscale."""
        if self.gradient_clip_val:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=self.gradient_clip_val,
                gradient_clip_algorithm=self.gradient_clip_algorithm,
            )

    def on_train_epoch_end(self) -> None:
        if self._loss_images:
            # Summed over the ranks under DDP, so the mean is over every image of the epoch.
            totals = torch.stack([self._loss_sum, self._loss_sum.new_tensor(self._loss_images)])
            loss_sum, images = self.trainer.strategy.reduce(totals, reduce_op="sum")
            self.log("train/loss", loss_sum / images, prog_bar=True, sync_dist=True)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: torch.Tensor, stage: str) -> None:
        inputs, targets = self.split_batch(batch)
        logits = self(inputs).float()  # scores in float32 even under bf16 autocast
        self.losses[stage].update(self.loss_fn(logits, targets), weight=len(batch))
        self.log(f"{stage}/loss", self.losses[stage], on_epoch=True, prog_bar=True)
        self._log_scores(stage, self.scores[stage], self.compute_scores(inputs, targets, logits))
        baseline = self.baseline_logits(inputs, targets)
        if baseline is not None and (stage == "test" or self.current_epoch == 0):  # once per run
            scores = self.compute_scores(inputs, targets, baseline)
            self._log_scores(f"{stage}/baseline", self.baseline_scores[stage], scores)

    def _log_scores(self, prefix: str, means: ScoreMeans, scores: dict[str, torch.Tensor]) -> None:
        means.update(scores)
        batch_size = len(next(iter(scores.values())))
        for name, metric in means.items():
            self.log(f"{prefix}/{name}", metric, on_epoch=True, batch_size=batch_size)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.parameters())

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A run saved when aelab still used automatic optimization counted its optimizer steps
        there; moved over, its global step (step checkpoints, max_steps) continues on resume."""
        loops = checkpoint.get("loops", {}).get("fit_loop", {})
        automatic = loops.get("epoch_loop.automatic_optimization.optim_progress")
        manual = loops.get("epoch_loop.manual_optimization.optim_step_progress")
        if automatic and manual and not manual["total"]["completed"]:
            loops["epoch_loop.manual_optimization.optim_step_progress"] = automatic["optimizer"][
                "step"
            ]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Plain-typed facts that let predict.py rebuild the network with weights_only loading."""
        checkpoint["aelab"] = {
            "task": self.name,
            "loss": self.hparams.loss,
            "model": self.model.config(),
        }
