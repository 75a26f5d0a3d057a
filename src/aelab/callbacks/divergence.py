"""Stop at the first non-finite loss, before a checkpoint stores broken weights."""

from __future__ import annotations

import math

import lightning as L
import torch

from aelab.errors import AelabError


class TrainingDiverged(AelabError):
    """The training loss became NaN or infinite; no checkpoint holds the broken weights."""


class StopOnDivergence(L.Callback):
    """Stops at the first NaN or infinite training loss, naming its epoch and step.

    Checkpoint callbacks run after every other callback, so raising here keeps the broken weights
    out of every checkpoint. On the CPU each step is checked; on an accelerator the finiteness
    flags stay on the device and are read (one host sync) every `check_every_n_steps` steps and
    before the epoch's checkpoint, so set it to the step-checkpoint cadence. Under DDP the ranks
    check together, at that cadence, so that all of them stop at the same step.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        self.check_every_n_steps = max(int(check_every_n_steps), 1)
        self._pending: list[tuple[torch.Tensor, int, int, int]] = []
        self._saved = False  # whether any checkpoint of this run holds finite weights

    def on_train_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self._saved = trainer.ckpt_path is not None  # a resumed run's checkpoint is one

    def on_train_batch_end(self, trainer: L.Trainer, task, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        where = (trainer.current_epoch, batch_idx, trainer.global_step)
        if loss.device.type == "cpu" and trainer.world_size == 1:
            if not math.isfinite(loss.item()):  # one float read, nothing to wait for: every step
                raise self._diverged_at(*where)
            return
        self._pending.append((torch.isfinite(loss.detach()), *where))
        if trainer.global_step % self.check_every_n_steps == 0:
            self._check(trainer)

    def on_validation_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self._check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, task: L.LightningModule, checkpoint) -> None:
        """The last line of defence: a step can turn the weights non-finite while its loss, computed
        before the step, was still finite; such weights never reach a checkpoint file."""
        self._check(trainer)
        broken = [name for name, value in task.named_parameters() if not value.isfinite().all()]
        if broken:
            raise TrainingDiverged(
                f"The weights became NaN or infinite by step {trainer.global_step} (epoch "
                f"{trainer.current_epoch}; {', '.join(broken[:3])}). The run stopped without "
                f"saving them; {self._checkpoints()}. Lower optimizer.lr (the default is 1e-3)."
            )
        self._saved = True

    def on_train_epoch_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: L.Trainer) -> None:
        """Collective under DDP: every rank calls it at the same points, pending flags or not."""
        pending, self._pending = self._pending, []
        flags = [flag for flag, *_ in pending]
        finite = torch.stack(flags).cpu() if flags else torch.ones(1, dtype=torch.bool)
        all_finite = bool(finite.all())
        if trainer.world_size > 1:
            all_finite = trainer.strategy.reduce_boolean_decision(all_finite, all=True)
        if all_finite:
            return
        if bool(finite.all()):
            raise TrainingDiverged(
                f"The training loss became NaN or infinite on another DDP rank by step "
                f"{trainer.global_step} (epoch {trainer.current_epoch}); that rank's log names "
                "the step. Lower optimizer.lr (the default is 1e-3)."
            )
        _, epoch, batch, step = pending[int((~finite).nonzero()[0])]
        raise self._diverged_at(epoch, batch, step)

    def _checkpoints(self) -> str:
        if self._saved:
            return "its checkpoints hold the last finite weights, saved before that step"
        return "no checkpoint was written yet, so there is nothing to resume from"

    def _diverged_at(self, epoch: int, batch: int, step: int) -> TrainingDiverged:
        return TrainingDiverged(
            f"The training loss became NaN or infinite at step {step} (epoch {epoch}, batch "
            f"{batch} of that epoch). The run stopped; {self._checkpoints()}. Lower optimizer.lr "
            "(the default is 1e-3), or check the data for broken images."
        )
