"""What keeps a run recoverable: whole checkpoints with everything an exact resume needs, a
checkpoint when the scheduler says stop, and a stop at the first non-finite loss.

The data position lives in ImageDataModule.state_dict and the loop position in Lightning's own
loop state; these pieces add what Lightning leaves out.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from aelab.errors import AelabError
from aelab.requeue import stop_signals

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint beside its target, fsync it, rename it into place.

    A kill during a save leaves the previous file whole. Lightning's own save goes through an
    fsspec transaction that writes to the system temp dir and then moves the file; when that dir
    is on another file system the move is a copy, which a kill can cut short.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)


class RandomStates(L.Callback):
    """Saves the torch, CUDA, numpy and Python random states in every checkpoint, and restores them
    on resume, so whatever draws random numbers after a resume draws the same ones.

    Plain types and tensors only, so checkpoints still load with torch.load(weights_only=True).
    """

    def state_dict(self) -> dict[str, Any]:
        name, keys, position, has_gauss, cached_gauss = np.random.get_state()
        version, internal, gauss = random.getstate()
        # The generators' words as tensors, not as ~1,250 Python ints: the checkpoint's pickler
        # makes a call per object, and this halves the objects in a step checkpoint.
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
            "numpy": [
                name,
                torch.from_numpy(keys.astype(np.int64)),
                position,
                has_gauss,
                cached_gauss,
            ],
            "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Also from checkpoints that stored the words as lists of ints."""
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        name, keys, position, has_gauss, cached_gauss = state_dict["numpy"]
        np.random.set_state(
            (name, np.array(_ints(keys), dtype=np.uint32), position, has_gauss, cached_gauss)
        )
        version, internal, gauss = state_dict["python"]
        random.setstate((version, _ints(internal), gauss))


def _ints(words: torch.Tensor | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(words.tolist() if isinstance(words, torch.Tensor) else words)


class FlushLogsWithCheckpoints(L.Callback):
    """Writes the loggers' buffers to disk with every checkpoint (TensorBoard flushes only every
    two minutes), so after a kill the curves hold every value logged before the last checkpoint."""

    def on_save_checkpoint(self, trainer: L.Trainer, task: L.LightningModule, checkpoint) -> None:
        for logger in trainer.loggers:
            logger.save()


class TrainingInterrupted(Exception):
    """A stop signal arrived; last.ckpt holds the step it stopped after."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(f"{signal.Signals(signum).name} received; saved {checkpoint}")


class TrainingDiverged(AelabError):
    """The training loss became NaN or infinite; no checkpoint holds the broken weights."""


class SaveOnSignal(L.Callback):
    """On SIGTERM (a scheduler's stop), SIGUSR1 (`sbatch --signal=USR1@120`, SLURM's warning before
    the time limit) or SIGUSR2 (submitit's): finish the current step, save last.ckpt, and stop with
    TrainingInterrupted; aelab.requeue then has the job requeued where a scheduler runs it.

    The handler only records the signal; the save happens between steps, where the state is whole.
    Under DDP the ranks agree every `sync_every_n_steps` steps whether any of them got a signal
    (a `kill` reaches one process only), and then all save and stop at the same step.
    """

    def __init__(
        self,
        dirpath: str,
        signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1", "SIGUSR2"),
        sync_every_n_steps: int = 10,
    ) -> None:
        self.dirpath, self.signals = Path(dirpath), tuple(signals)
        self.sync_every_n_steps = max(int(sync_every_n_steps), 1)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def on_train_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        """Installed here, after Lightning's own SIGTERM handler, which it replaces: Lightning's
        would end the run at its next check without a checkpoint (exit status 0)."""
        self.received = None
        if threading.current_thread() is threading.main_thread():
            for name in stop_signals(self.signals):
                number = signal.Signals[name]
                self._previous[number] = signal.signal(number, self._receive)

    def _receive(self, signum: int, frame: Any) -> None:
        self.received = signum

    def on_train_batch_end(self, trainer: L.Trainer, task, outputs, batch, batch_idx: int) -> None:
        received = self.received is not None
        if trainer.world_size > 1:
            if trainer.global_step % self.sync_every_n_steps:
                return
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received:
            return
        signum = self.received or signal.SIGTERM  # another rank's signal
        checkpoint = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(checkpoint)
        log.info("%s: saved %s", signal.Signals(signum).name, checkpoint)
        raise TrainingInterrupted(signum, checkpoint)

    def teardown(self, trainer: L.Trainer, task: L.LightningModule, stage: str) -> None:
        for number, handler in self._previous.items():
            if signal.getsignal(number) == self._receive:
                signal.signal(number, handler)
        self._previous = {}


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
                "saving them; its checkpoints hold the last finite weights. Lower optimizer.lr "
                "(the default is 1e-3)."
            )

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

    @staticmethod
    def _diverged_at(epoch: int, batch: int, step: int) -> TrainingDiverged:
        return TrainingDiverged(
            f"The training loss became NaN or infinite at step {step} (epoch {epoch}, batch "
            f"{batch} of that epoch). The run stopped; its checkpoints hold the last weights "
            "saved before that step. Lower optimizer.lr (the default is 1e-3), or check the data "
            "for broken images."
        )
