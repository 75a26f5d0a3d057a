"""Callbacks for what a run shows while it trains: preview grids and throughput."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import make_grid, save_image

log = logging.getLogger(__name__)


class PreviewImages(L.Callback):
    """Every validation epoch: the task's preview rows for the same first val images.

    The grid goes to TensorBoard (one image per epoch, with a step slider) and to preview.png in
    the run dir, which always shows the latest epoch, enlarged (nearest) so 32-pixel images can
    be seen without zooming.
    """

    def __init__(self, count: int = 8, output_dir: str | None = None, png_scale: int = 4) -> None:
        self.count, self.output_dir, self.png_scale = count, output_dir, png_scale

    def on_validation_epoch_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.count <= 0:
            return
        datamodule = trainer.datamodule
        images = datamodule.splits["val"][: self.count].to(task.device)
        with torch.no_grad():
            rows = task.preview_rows(datamodule.to_model_space(images))
        grid = make_grid(torch.cat(rows).float().clamp(0, 1).cpu(), nrow=len(images), padding=1)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/preview", grid, global_step=trainer.current_epoch)
        if self.output_dir:
            enlarged = F.interpolate(grid[None], scale_factor=self.png_scale, mode="nearest")[0]
            save_image(enlarged, Path(self.output_dir) / "preview.png")


class EpochTimer(L.Callback):
    """Seconds per epoch (training plus validation) and training images per second.

    images/s counts only the training part of the epoch, up to the start of validation, so it
    measures the training path, not the evaluation that follows it. A checkpoint carries the time
    spent so far in the current epoch, so an epoch resumed mid-way counts the time before the kill
    plus the time after the resume (Lightning calls no on_train_epoch_start for it).
    """

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.images_per_second: list[float] = []
        self._start: float | None = None  # None between epochs
        self._train_end: float | None = None
        self._epoch = 0
        self._resumed: dict = {}

    def state_dict(self) -> dict:
        """In every checkpoint, so a resumed run's timing.json covers the epochs before the kill."""
        now = time.perf_counter()
        in_epoch = self._start is not None
        return {
            "epoch_seconds": self.epoch_seconds,
            "images_per_second": self.images_per_second,
            "epoch": self._epoch,
            "epoch_elapsed": now - self._start if in_epoch else None,
            "train_elapsed": (
                self._train_end - self._start if in_epoch and self._train_end is not None else None
            ),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.epoch_seconds = list(state_dict["epoch_seconds"])
        self.images_per_second = list(state_dict["images_per_second"])
        # Older checkpoints lack the partial epoch: its time then counts from the resume.
        self._resumed = {
            "epoch": state_dict.get("epoch"),
            "epoch_elapsed": state_dict.get("epoch_elapsed", 0.0),
            "train_elapsed": state_dict.get("train_elapsed"),
        }

    def on_train_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        """A resumed epoch's clock starts where the checkpoint left it; a new epoch resets it."""
        now, resumed, self._resumed = time.perf_counter(), self._resumed, {}
        if not resumed or resumed["epoch_elapsed"] is None:  # not resumed, or between epochs
            return
        elapsed, train_elapsed = resumed["epoch_elapsed"], resumed["train_elapsed"]
        if resumed["epoch"] not in (None, trainer.current_epoch):
            # Saved at its last batch: Lightning skips that epoch's end and the next one's start.
            rate = self._record(trainer, elapsed, train_elapsed or elapsed)
            times = {"train/epoch_seconds": elapsed, "train/images_per_sec": rate}
            for logger in trainer.loggers:
                logger.log_metrics({**times, "epoch": resumed["epoch"]}, trainer.global_step - 1)
            self._start, self._train_end, self._epoch = now, None, trainer.current_epoch
            return
        self._start = now - elapsed
        self._train_end = None if train_elapsed is None else self._start + train_elapsed

    def on_train_epoch_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self._start, self._train_end = time.perf_counter(), None
        self._epoch = trainer.current_epoch

    def on_validation_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        if not trainer.sanity_checking and self._start is not None and self._train_end is None:
            self._train_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        if self._start is None:  # an epoch that ended before the checkpoint it resumed from
            return
        end = time.perf_counter()
        seconds, train_seconds = end - self._start, (self._train_end or end) - self._start
        self._start, self._train_end = None, None
        rate = self._record(trainer, seconds, train_seconds)
        task.log("train/epoch_seconds", seconds, on_epoch=True, sync_dist=True)  # ranks' mean
        task.log("train/images_per_sec", rate, on_epoch=True, sync_dist=True)
        log.info("epoch %d: %.1f s, %.0f training images/s", trainer.current_epoch, seconds, rate)

    def _record(self, trainer: L.Trainer, seconds: float, train_seconds: float) -> float:
        images = min(  # every rank's images under DDP: the run's rate, not one device's
            len(trainer.datamodule.splits["train"]),
            trainer.num_training_batches * trainer.datamodule.batch_size * trainer.world_size,
        )
        rate = images / train_seconds
        self.epoch_seconds.append(seconds)
        self.images_per_second.append(rate)
        return rate
