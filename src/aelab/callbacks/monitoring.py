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
    measures the training path, not the evaluation that follows it.
    """

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.images_per_second: list[float] = []
        self._start = 0.0
        self._train_end: float | None = None

    def state_dict(self) -> dict[str, list[float]]:
        """In every checkpoint, so a resumed run's timing.json covers the epochs before the kill."""
        return {"epoch_seconds": self.epoch_seconds, "images_per_second": self.images_per_second}

    def load_state_dict(self, state_dict: dict[str, list[float]]) -> None:
        self.epoch_seconds = list(state_dict["epoch_seconds"])
        self.images_per_second = list(state_dict["images_per_second"])

    def on_train_epoch_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self._start, self._train_end = time.perf_counter(), None

    def on_validation_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        if not trainer.sanity_checking and self._train_end is None:
            self._train_end = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        end = time.perf_counter()
        seconds = end - self._start
        images = min(  # every rank's images under DDP: the run's rate, not one device's
            len(trainer.datamodule.splits["train"]),
            trainer.num_training_batches * trainer.datamodule.batch_size * trainer.world_size,
        )
        rate = images / ((self._train_end or end) - self._start)
        self.epoch_seconds.append(seconds)
        self.images_per_second.append(rate)
        task.log("train/epoch_seconds", seconds, on_epoch=True, sync_dist=True)  # ranks' mean
        task.log("train/images_per_sec", rate, on_epoch=True, sync_dist=True)
        log.info("epoch %d: %.1f s, %.0f training images/s", trainer.current_epoch, seconds, rate)
