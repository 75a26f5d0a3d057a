"""Stop on a signal during training with a checkpoint of the last whole step."""

from __future__ import annotations

import logging
import signal
from contextlib import ExitStack
from pathlib import Path

import lightning as L

from aelab.runtime.stops import LISTENER, TrainingInterrupted, listening

log = logging.getLogger(__name__)


class SaveOnSignal(L.Callback):
    """During training a stop signal (aelab.runtime.stops: SIGTERM, SIGINT, SIGUSR1 from
    `sbatch --signal=USR1@120`, SIGUSR2 from submitit) waits for the current step to finish;
    then last.ckpt is saved and TrainingInterrupted raised, and aelab.runtime.requeue has the job
    requeued where a scheduler runs it. A signal that comes after the last step (during the last
    validation) saves and stops when training ends. Outside training the listener stops at once.

    Under DDP the ranks agree every `sync_every_n_steps` steps whether any of them got a signal
    (a `kill` reaches one process only), and then all save and stop at the same step.
    """

    def __init__(self, dirpath: str, sync_every_n_steps: int = 10) -> None:
        self.dirpath = Path(dirpath)
        self.sync_every_n_steps = max(int(sync_every_n_steps), 1)
        self._step_before = -1
        self._own_listening: ExitStack | None = None

    def on_train_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        if LISTENER.depth == 0:  # a Trainer of the user's own, outside aelab's runs
            self._own_listening = ExitStack()
            self._own_listening.enter_context(listening())
        LISTENER.wait()  # after Lightning's own SIGTERM handler, which this replaces

    def on_train_batch_start(self, trainer: L.Trainer, task, batch, batch_idx: int) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, task, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self._step_before:
            return  # inside an accumulation window: its gradients are in no checkpoint
        if trainer.world_size > 1 and trainer.global_step % self.sync_every_n_steps:
            return
        self._stop_if_signalled(trainer)

    def on_train_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        try:
            self._stop_if_signalled(trainer)
            LISTENER.act()
        finally:
            self.on_exception(trainer, task, None)

    def on_exception(self, trainer: L.Trainer, task, exception: BaseException | None) -> None:
        """Its own listening ends with training, before Lightning puts back what it replaced."""
        if self._own_listening is not None:
            self._own_listening.close()
            self._own_listening = None

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        received = LISTENER.received is not None
        if trainer.world_size > 1:
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received:
            return
        signum = LISTENER.received or signal.SIGTERM  # another rank's signal
        checkpoint = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(checkpoint, weights_only=False)  # the whole state, for resume=
        log.info("%s: saved %s", signal.Signals(signum).name, checkpoint)
        raise TrainingInterrupted(signum, checkpoint)
