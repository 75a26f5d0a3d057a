"""What both tasks share: the step, the loss, per-epoch logging, metrics and the optimizer.

A task only says how a batch splits into (inputs, targets), which scores it reports and how its
preview rows look; everything else lives here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from aelab.choices import CLASSIFICATION_LOSSES
from aelab.config.trusted import trusting
from aelab.errors import AelabError
from aelab.models.checkpoint import read_checkpoint
from aelab.models.network import build_network, channels, network_spec
from aelab.tasks.losses import LOSSES
from aelab.tasks.metrics import ScoreMeans

OptimizerFactory = Callable[..., torch.optim.Optimizer]


class AutoEncoderTask(L.LightningModule):
    name: str = ""
    color_space: str = "rgb"  # what the DataModule must deliver for this task
    in_channels: int = 3
    out_channels: int = 3
    score_names: tuple[str, ...] = ()
    accepted_losses: tuple[str, ...] = tuple(LOSSES)

    def __init__(
        self,
        model: nn.Module | dict,
        loss: str = "bce",
        optimizer: OptimizerFactory | None = None,
        scheduler: dict | None = None,
        channels_last: bool = True,
    ) -> None:
        """`model` is the network, or its spec ({"_target_": class, **arguments}, as saved in a
        checkpoint's hyperparameters: aelab.models.network); `scheduler` is Lightning's lr_scheduler dict with a factory under "scheduler"."""
        super().__init__()
        if loss in CLASSIFICATION_LOSSES and loss not in self.accepted_losses:
            raise AelabError(
                f"loss={loss} (classification over quantized ab) is for task=colorization only; "
                f"the {self.name} task takes loss={' or loss='.join(self.accepted_losses)}."
            )
        if loss not in self.accepted_losses:
            raise AelabError(f"loss must be one of {list(self.accepted_losses)}, got {loss!r}.")
        if not isinstance(model, nn.Module):
            model = build_network(model)
        spec = network_spec(model)
        out_channels = self.output_channels(loss)
        if channels(spec) != (self.in_channels, out_channels):
            given_in, given_out = channels(spec)
            raise AelabError(
                f"The {self.name} task with loss={loss} needs a network with {self.in_channels} "
                f"input and {out_channels} output channels, got {given_in} and {given_out}; "
                f"build it with {type(self).__name__}.in_channels and output_channels(loss)."
            )
        # Plain types only, so load_from_checkpoint rebuilds the task even under weights_only.
        self.save_hyperparameters(
            {"model": spec, "loss": loss, "channels_last": channels_last}, logger=False
        )
        # channels_last: oneDNN's fast convolution layout on the CPU (docs/performance.md);
        # LBFGS flattens gradients with view(), which needs them contiguous.
        optimizer_class = getattr(optimizer, "func", None)
        if isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.LBFGS):
            channels_last = False
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format)
        self.loss_fn = self.make_loss(loss)
        self.optimizer_factory = optimizer or partial(torch.optim.Adam, lr=1e-3)
        self.scheduler_config = dict(scheduler) if scheduler else None
        stages = ("val", "test")
        self.scores = nn.ModuleDict({stage: ScoreMeans(self.score_names) for stage in stages})
        self.baseline_scores = nn.ModuleDict({s: ScoreMeans(self.score_names) for s in stages})
        # Metrics, not plain tensors, so that under DDP the epoch's loss is the mean over every
        # rank's images (what best.ckpt is chosen by), not the mean of per-rank means.
        self.losses = nn.ModuleDict({stage: MeanMetric(nan_strategy="disable") for stage in stages})
        # The epoch's training loss, summed on the device: no host sync per step.
        self.register_buffer("_loss_sum", torch.zeros(()), persistent=False)
        self._loss_images = 0
        self._step_loss: tuple[torch.Tensor, int] | None = None  # the batch not yet in the sum
        self._loss_epoch: int | None = None  # the epoch of a sum loaded from a checkpoint

    # What a task defines ------------------------------------------------------------------------
    @classmethod
    def output_channels(cls, loss: str) -> int:
        """The network's output channels for this loss (what runtime.train.build builds)."""
        return cls.out_channels

    def target_phrase(self, image_size: int) -> str | None:
        """What the start line calls the target when the network's output is not it as such;
        None: the output, out_channels at the image's size, is the target."""
        return None

    def make_loss(self, loss: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """loss(logits, targets) → a scalar; called once the module is initialised."""
        return LOSSES[loss]

    def split_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) from a batch in the task's colour space."""
        raise NotImplementedError

    def compute_scores(
        self, inputs: torch.Tensor, targets: torch.Tensor, logits: torch.Tensor
    ) -> dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        """Per-image scores (each a (B,) tensor, or (scores, weights) for a weighted mean) named
        as in score_names."""
        raise NotImplementedError

    def preview_rows(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """RGB image rows (each (B, 3, H, W) in [0, 1]) that show what the model does."""
        raise NotImplementedError

    def baseline_logits(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
        """Logits of a trivial predictor a model must beat, scored beside it; None for no baseline."""
        return None

    # Shared ---------------------------------------------------------------------------------
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of inputs in the task's colour space."""
        return self.model(inputs.contiguous(memory_format=self.memory_format))

    def on_train_start(self) -> None:
        """Resumed from a step checkpoint of an epoch's last batch, Lightning goes on to the next
        epoch without that epoch's end hooks: its loss goes to the loggers here, and its sum is
        dropped so that it does not count in the next epoch."""
        loaded_epoch, self._loss_epoch = self._loss_epoch, None
        if loaded_epoch is None or loaded_epoch == self.current_epoch:
            return
        if self._loss_images:
            loss = (self._loss_sum / self._loss_images).item()  # the ranks' total, on rank zero
            for logger in self.loggers:
                logger.log_metrics(
                    {"train/loss": loss, "epoch": loaded_epoch}, step=self.global_step - 1
                )
        self._loss_sum.zero_()
        self._loss_images, self._step_loss = 0, None

    def on_train_epoch_start(self) -> None:
        self._loss_sum.zero_()
        self._loss_images, self._step_loss = 0, None

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        inputs, targets = self.split_batch(batch)
        loss = self.loss_fn(self(inputs), targets)
        # LBFGS calls this several times per batch: the last call's loss is the batch's.
        self._step_loss = (loss.detach(), len(batch))
        return loss

    def on_train_batch_end(self, outputs: dict, batch: torch.Tensor, batch_idx: int) -> None:
        """Once per batch; this runs after the callbacks' hook, where step checkpoints are saved,
        so on_save_checkpoint counts a batch not yet added here."""
        if self._step_loss is not None:
            loss, images = self._step_loss
            self._loss_sum.add_(loss, alpha=images)
            self._loss_images += images
            self._step_loss = None

    def on_train_epoch_end(self) -> None:
        if self._loss_images:
            # Summed over the ranks under DDP, so the mean is over every image of the epoch.
            totals = torch.stack([self._loss_sum, self._loss_sum.new_tensor(self._loss_images)])
            loss_sum, images = self.trainer.strategy.reduce(totals, reduce_op="sum")
            self.log("train/loss", loss_sum / images, prog_bar=True, sync_dist=True)
        # Zeroed here too, so a checkpoint saved at the epoch's end carries no partial sum.
        self._loss_sum.zero_()
        self._loss_images, self._step_loss = 0, None

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: torch.Tensor, stage: str) -> None:
        inputs, targets = self.split_batch(batch)
        logits = self(inputs)
        # The loss and every score in float32: under bf16 autocast SSIM's convolutions lose digits.
        with torch.autocast(device_type=logits.device.type, enabled=False):
            inputs, targets, logits = inputs.float(), targets.float(), logits.float()
            self.losses[stage].update(self.loss_fn(logits, targets), weight=len(batch))
            scores = self.compute_scores(inputs, targets, logits)
            baseline = self.baseline_logits(inputs, targets)
            if baseline is not None and (stage == "test" or self.current_epoch == 0):  # once a run
                baseline_scores = self.compute_scores(inputs, targets, baseline.float())
            else:
                baseline_scores = None
        self.log(f"{stage}/loss", self.losses[stage], on_epoch=True, prog_bar=True)
        self._log_scores(stage, self.scores[stage], scores)
        if baseline_scores is not None:
            self._log_scores(f"{stage}/baseline", self.baseline_scores[stage], baseline_scores)

    def _log_scores(self, prefix: str, means: ScoreMeans, scores: dict[str, torch.Tensor]) -> None:
        means.update(scores)
        first = next(iter(scores.values()))
        batch_size = len(first[0] if isinstance(first, tuple) else first)
        for name, metric in means.items():
            self.log(f"{prefix}/{name}", metric, on_epoch=True, batch_size=batch_size)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        """The optimizer alone, or Lightning's dict form with the scheduler's interval, frequency
        and monitor; a scheduler's `total_steps` left unset is the run's own (OneCycleLR)."""
        optimizer = self.optimizer_factory(self.parameters())
        if not self.scheduler_config:
            return optimizer
        settings = dict(self.scheduler_config)
        factory = settings.pop("scheduler")
        given = getattr(factory, "keywords", {})
        if "total_steps" in inspect.signature(factory).parameters and not (
            given.get("total_steps") or given.get("epochs")
        ):
            factory = partial(factory, total_steps=self.trainer.estimated_stepping_batches)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": factory(optimizer), **settings},
        }

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path,
        map_location=None,
        hparams_file=None,
        strict=None,
        weights_only: bool | None = None,
        trusted_modules: tuple[str, ...] = (),
        **kwargs,
    ):
        """Lightning's, with the file read as data: aelab.models.checkpoint.read_checkpoint refuses a
        pickle that would run code, and hyperparameters that name code aelab does not, first;
        `trusted_modules` names the modules of your own networks it may build (a plug-in's)."""
        if weights_only is False:
            raise AelabError(
                "load_from_checkpoint reads aelab checkpoints as tensors and plain values only "
                "(weights_only=True): they hold nothing else, and a checkpoint from elsewhere "
                "could run code when unpickled. Leave weights_only out."
            )
        with trusting(trusted_modules):
            read_checkpoint(checkpoint_path)
            try:
                return super().load_from_checkpoint(
                    checkpoint_path, map_location, hparams_file, strict, weights_only=True, **kwargs
                )
            except (
                AelabError
            ) as error:  # settings the task refuses: say which checkpoint holds them
                raise AelabError(f"{checkpoint_path}: {error}") from None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        partial_epoch = checkpoint.get("aelab_epoch_loss")
        if partial_epoch and self.global_rank == 0:  # the ranks' total: rank zero carries it
            self._loss_sum.fill_(partial_epoch["sum"])
            self._loss_images = int(partial_epoch["images"])
        else:
            self._loss_sum.zero_()
            self._loss_images = 0
        self._step_loss = None
        self._loss_epoch = partial_epoch["epoch"] if partial_epoch else None
        if "gradient_clip_val" in checkpoint.get("hyper_parameters", {}):
            raise AelabError(
                "This checkpoint was saved by an aelab version whose task stepped the optimizer "
                "itself (manual optimization); Lightning keeps that run's step count where "
                "automatic optimization does not read it, so a resume would restart its step "
                "count, step checkpoints and schedulers at 0. Start a new run from its weights "
                "instead: python train.py init_weights=PATH (same model overrides), or evaluate it "
                "with python eval.py ckpt_path=PATH; in Python, "
                "aelab.models.checkpoint.load_network(PATH, TASK) gives its network."
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Plain-typed facts that let predict.py rebuild the network with weights_only loading,
        and the epoch's training loss so far, so a resumed epoch logs the whole epoch's mean."""
        checkpoint["aelab"] = {
            "task": self.name,
            "loss": self.hparams.loss,
            "model": network_spec(self.model),
        }
        loss_sum, images = self._loss_sum.detach().clone(), self._loss_images
        if self._step_loss is not None:  # saved from a callback's on_train_batch_end
            loss_sum.add_(self._step_loss[0], alpha=self._step_loss[1])
            images += self._step_loss[1]
        totals = torch.stack([loss_sum, loss_sum.new_tensor(images)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank saves together (Lightning's rule), so every rank's part is summed here.
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        loss_sum, images = totals.tolist()
        checkpoint["aelab_epoch_loss"] = {
            "epoch": self.current_epoch,
            "sum": loss_sum,
            "images": int(images),
        }
