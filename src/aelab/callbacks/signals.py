"""Stop on a scheduler's signal with a checkpoint of the last whole step."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L

from aelab.runtime.requeue import stop_signals

log = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """A stop signal arrived; last.ckpt holds the step it stopped after."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(f"{signal.Signals(signum).name} received; saved {checkpoint}")


class SaveOnSignal(L.Callback):
    """On SIGTERM (a scheduler's stop), SIGUSR1 (`sbatch --signal=USR1@120`, SLURM's warning before
    the time limit) or SIGUSR2 (submitit's): finish the current step, save last.ckpt, and stop with
    TrainingInterrupted; aelab.runtime.requeue then has the job requeued where a scheduler runs it.

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
        self._step_before = -1

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

    def on_train_batch_start(self, trainer: L.Trainer, task, batch, batch_idx: int) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, task, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self._step_before:
            return  # inside an accumulation window: its gradients are in no checkpoint
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
