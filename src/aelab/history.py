"""RUN/history.jsonl: a run's per-epoch numbers in one file that no configured logger owns.

Every run writes it, whichever loggers it has (TensorBoard, CSV, MLflow or none), and the report
reads its curves from it. It is a Lightning logger added beside the configured ones, so it gets
exactly what they get: every value logged with its epoch (train and val metrics, the epoch's
seconds, its lr), one JSON object per epoch, keyed by the epoch. A resumed run reads the file back
and goes on: an epoch logged again (resumed mid-epoch, or from a checkpoint older than the file)
replaces its row instead of adding one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

FILE_NAME = "history.jsonl"
LEFT_OUT = ("test/",)  # the final test scores are metrics.json's; the history is training's


class EpochHistory(Logger):
    """Writes RUN/history.jsonl: {"epoch", "step", metric: value, ...} per epoch."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__()
        self.path = Path(run_dir) / FILE_NAME
        self.rows = {row["epoch"]: row for row in read_history(self.path)}

    @property
    def name(self) -> str:
        return "history"

    @property
    def version(self) -> str:
        return ""

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """The config is the run's .hydra/config.yaml."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if (
            "epoch" not in metrics
        ):  # per-step values (LearningRateMonitor's): no epoch to file under
            return
        epoch = int(metrics["epoch"])
        values = {k: float(v) for k, v in metrics.items() if k != "epoch" and not _left_out(k)}
        if not values:
            return
        row = self.rows.setdefault(epoch, {"epoch": epoch})
        row.update(values)
        if step is not None:
            row["step"] = max(int(step), row.get("step", -1))
        self.save()

    @rank_zero_only
    def save(self) -> None:
        """The whole file, replaced at once: a kill leaves the old file or the new one."""
        if not self.rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = (json.dumps(_ordered(row)) + "\n" for _, row in sorted(self.rows.items()))
        partial = self.path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
        partial.write_text("".join(lines))
        os.replace(partial, self.path)


def _ordered(row: dict) -> dict:
    """epoch and step first, then the metrics by name."""
    first = {key: row[key] for key in ("epoch", "step") if key in row}
    return {**first, **{key: row[key] for key in sorted(row) if key not in first}}


def _left_out(key: str) -> bool:
    return key.startswith(LEFT_OUT)


def read_history(path: Path) -> list[dict]:
    """The rows of a history.jsonl, in epoch order; [] without one. A line that is not a row
    (a file cut by a full disk) ends the rows read."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            break
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            break
        rows.append(row)
    return sorted(rows, key=lambda row: row["epoch"])


class EpochLearningRate(L.Callback):
    """Logs `train/lr` per epoch: the learning rate the epoch's first step trained with (of the
    first parameter group), for every logger, with or without a scheduler."""

    def __init__(self) -> None:
        self._lr: float | None = None

    def on_train_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self._lr = _learning_rate(trainer)  # a run resumed mid-epoch starts no epoch

    def on_train_epoch_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self._lr = _learning_rate(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        if self._lr is not None:
            task.log("train/lr", self._lr, on_epoch=True)


def _learning_rate(trainer: L.Trainer) -> float | None:
    optimizers = trainer.optimizers
    return float(optimizers[0].param_groups[0]["lr"]) if optimizers else None
