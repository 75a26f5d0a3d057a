"""Test-only hooks that send this process a stop signal in a chosen phase of a run; given on the
command line as +callbacks.stop._target_=tests.stop_phases.SignalInPhase (or a logger, for the
phase that writes the results). Not collected by pytest."""

from __future__ import annotations

import os
import signal

import lightning as L
from lightning.pytorch.loggers import CSVLogger


def send(name: str) -> None:
    os.kill(os.getpid(), signal.Signals[name])


class SignalInPhase(L.Callback):
    """`phase`: build (the callbacks being built), setup (Lightning's setup of fit), fit (after training step `at_step`), validation (epoch 0's validation),
    last_validation (the last epoch's validation), test."""

    def __init__(self, phase: str, signal: str = "SIGTERM", at_step: int = 2) -> None:
        self.phase, self.signal, self.at_step = phase, signal, at_step
        if phase == "build":
            send(signal)

    def setup(self, trainer, task, stage) -> None:
        if self.phase == "setup" and stage == "fit":
            send(self.signal)

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx) -> None:
        if self.phase == "fit" and trainer.global_step == self.at_step:
            send(self.signal)

    def on_validation_batch_end(self, trainer, task, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx != 0:
            return
        last = trainer.current_epoch == trainer.max_epochs - 1
        if self.phase == ("last_validation" if last else "validation"):
            send(self.signal)

    def on_test_batch_end(self, trainer, task, outputs, batch, batch_idx, dataloader_idx=0):
        if self.phase == "test" and batch_idx == 0:
            send(self.signal)


class SignalWhileWritingResults(CSVLogger):
    """A logger that sends the signal when the run writes its results (its hparams and test
    scores, after testing)."""

    def __init__(self, save_dir: str, signal: str = "SIGTERM") -> None:
        super().__init__(save_dir, name="stop", version="")
        self.signal = signal

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status == "success":
            send(self.signal)
