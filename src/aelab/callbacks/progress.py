"""The training progress bar, with its epoch and total also in an epoch resumed part-way."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf


class EpochProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, which names the epoch and sets the batch total when an epoch starts.

    A run resumed inside an epoch gets no on_train_epoch_start for it, where Lightning's bar shows
    `Training: 160/?`; this one shows `Epoch 3: 160/625` from the start of training, and counts its
    speed from the first batch it trains, not from the epoch's start. The logger's version
    (`v_num`, the last 4 letters of the run's name in TensorBoard) is left out.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._resumed_epoch = False  # an epoch that started before this fit

    @property
    def train_description(self) -> str:
        return f"Epoch {self.trainer.current_epoch}"

    def on_train_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        super().on_train_start(trainer, task)
        self.train_progress_bar.total = convert_inf(self.total_train_batches)
        self._resumed_epoch = True  # until Lightning starts an epoch itself

    def on_train_epoch_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self._resumed_epoch = False
        super().on_train_epoch_start(trainer, task)

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx: int) -> None:
        if self._resumed_epoch:  # the batches before batch_idx were trained before the resume
            self.train_progress_bar.initial = batch_idx
            self._resumed_epoch = False
        super().on_train_batch_end(trainer, task, outputs, batch, batch_idx)

    def get_metrics(self, trainer: L.Trainer, task: L.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, task)
        metrics.pop("v_num", None)
        return metrics
