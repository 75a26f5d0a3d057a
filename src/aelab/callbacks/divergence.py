"""Stop a run whose training loss became NaN or infinite, or exploded, before a checkpoint stores
the broken weights."""

from __future__ import annotations

from collections import deque
from typing import Any

import lightning as L
import torch

from aelab.errors import AelabError

LOWER_LR = "Lower optimizer.lr (the default is 1e-3)"


class TrainingDiverged(AelabError):
    """The training loss became NaN, infinite or exploded; no checkpoint holds the broken weights."""


class StopOnDivergence(L.Callback):
    """Stops at the first NaN or infinite training loss, or at a loss that exploded, naming its
    epoch and step.

    Exploded: the mean loss over the latest step and the steps before it, at least `min_images`
    training images, lies above `explosion_factor` × the run's reference, the same mean over its
    first steps (with batches of `min_images` or more: the first step's loss, before any update).
    A ratio, so one factor fits every loss's scale (BCE near 0.69, MSE near 0.06, loss=ce near 5
    at the start); means over `min_images` images, so a batch of a few easy or hard images moves
    neither side. Explosions rise by orders of magnitude; a healthy run stays near its start, and a
    fine-tune's fresh optimizer jolts it by ten-odd times at most (docs/reliability.md).
    `explosion_factor: null` turns the rule off.

    Checkpoint callbacks run after every other callback, so raising here keeps the broken weights
    out of every checkpoint. On the CPU each step is checked; on an accelerator the flags stay on
    the device and are read (one host sync) every `check_every_n_steps` steps and before the
    epoch's checkpoint, so set it to the step-checkpoint cadence. Under DDP the ranks check
    together, at that cadence, so that all of them stop at the same step.
    """

    def __init__(
        self,
        check_every_n_steps: int = 1,
        explosion_factor: float | None = 1000.0,
        min_images: int = 64,
    ) -> None:
        self.check_every_n_steps = max(int(check_every_n_steps), 1)
        self.explosion_factor, self.min_images = explosion_factor, max(int(min_images), 1)
        self._pending: list[tuple] = []  # (finite, exploded, mean loss, epoch, batch, step)
        self._saved = False  # whether any checkpoint of this run holds finite weights
        self._reference: torch.Tensor | float | None = None
        self._window: deque[tuple[torch.Tensor, int]] = deque()  # (loss × images, images)

    def state_dict(self) -> dict[str, Any]:
        """The reference travels in every checkpoint: a resumed run keeps its start's bar."""
        return {"reference": None if self._reference is None else float(self._reference)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._reference = state_dict.get("reference")

    def on_train_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self._saved = trainer.ckpt_path is not None  # a resumed run's checkpoint is one

    def on_train_batch_end(self, trainer: L.Trainer, task, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        loss = loss.detach()
        exploded, mean = self._exploded(loss, batch.shape[0] if torch.is_tensor(batch) else 1)
        where = (trainer.current_epoch, batch_idx, trainer.global_step)
        self._pending.append((torch.isfinite(loss), exploded, mean, *where))
        free = loss.device.type == "cpu" and trainer.world_size == 1  # no device to wait for
        if free or trainer.global_step % self.check_every_n_steps == 0:
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
                f"saving them; {self._checkpoints()}. {LOWER_LR}."
            )
        self._saved = True

    def on_train_epoch_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self._check(trainer)

    def _exploded(self, loss: torch.Tensor, images: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Whether the mean loss of the latest `min_images` images or more lies above the bar, and
        that mean; the first such mean is the reference. On the loss's device: no host sync."""
        window = self._window
        window.append((loss * images, images))
        while len(window) > 1 and sum(n for _, n in window) - window[0][1] >= self.min_images:
            window.popleft()  # the window still holds min_images without its oldest step
        count = sum(n for _, n in window)
        mean = sum(total for total, _ in window) / count
        no = torch.zeros((), dtype=torch.bool, device=loss.device)
        if self.explosion_factor is None or count < self.min_images:
            return no, mean
        if self._reference is None:
            self._reference = mean
            return no, mean
        return mean > self.explosion_factor * self._reference, mean

    def _check(self, trainer: L.Trainer) -> None:
        """Collective under DDP: every rank calls it at the same points, pending flags or not."""
        pending, self._pending = self._pending, []
        if pending:
            finite = torch.stack([entry[0] for entry in pending]).cpu()
            exploded = torch.stack([entry[1] for entry in pending]).cpu()
            bad = ~finite | exploded
        else:
            bad = torch.zeros(1, dtype=torch.bool)
        all_good = not bool(bad.any())
        if trainer.world_size > 1:
            all_good = trainer.strategy.reduce_boolean_decision(all_good, all=True)
        if all_good:
            return
        if not bool(bad.any()):
            raise TrainingDiverged(
                f"The training loss became NaN or infinite, or exploded, on another DDP rank by "
                f"step {trainer.global_step} (epoch {trainer.current_epoch}); that rank's log "
                f"names the step. {LOWER_LR}."
            )
        index = int(bad.nonzero()[0])
        _, _, mean, epoch, batch, step = pending[index]
        if not bool(finite[index]):
            raise self._diverged_at(epoch, batch, step)
        raise self._exploded_at(float(mean), epoch, batch, step)

    def _checkpoints(self, held: str = "the last finite weights") -> str:
        if self._saved:
            return f"its checkpoints hold {held}, saved before that step"
        return "no checkpoint was written yet, so there is nothing to resume from"

    def _diverged_at(self, epoch: int, batch: int, step: int) -> TrainingDiverged:
        return TrainingDiverged(
            f"The training loss became NaN or infinite at step {step} (epoch {epoch}, batch "
            f"{batch} of that epoch). The run stopped; {self._checkpoints()}. {LOWER_LR}, "
            "or check the data for broken images."
        )

    def _exploded_at(self, loss: float, epoch: int, batch: int, step: int) -> TrainingDiverged:
        reference = float(self._reference)
        return TrainingDiverged(
            f"The training loss rose to {loss:.4g} at step {step} (epoch {epoch}, batch {batch} "
            f"of that epoch), {loss / reference:.3g}× the {reference:.4g} the run started from, "
            f"above callbacks.divergence.explosion_factor={self.explosion_factor:g}: the run "
            f"diverged. The run stopped; {self._checkpoints('the weights')}. {LOWER_LR}, or, for "
            "a run that should go on, raise callbacks.divergence.explosion_factor (null: off)."
        )
