"""What Lightning leaves out of a checkpoint for an exact resume, and what a resume must carry
over: random states, flushed logs, checkpoint paths that follow the run dir, CSV rows."""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger


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


class CheckpointPathsInRunDir(L.Callback):
    """ModelCheckpoint's state names its files relative to its dirpath in every checkpoint, and
    they are read back into the dirpath of the run that loads it, so a run dir moved between a
    stop and its resume keeps its best checkpoint and score (ModelCheckpoint would drop the score
    and keep the old absolute path of best.ckpt)."""

    PATHS = ("best_model_path", "kth_best_model_path", "last_model_path")

    def on_save_checkpoint(self, trainer: L.Trainer, task: L.LightningModule, checkpoint) -> None:
        for _, state in _checkpoint_states(trainer, checkpoint):
            state.update(_moved(state, Path(state["dirpath"]), Path(".")))

    def on_load_checkpoint(self, trainer: L.Trainer, task: L.LightningModule, checkpoint) -> None:
        """A checkpoint of another run dir (train.py ckpt_path=) names files this run does not
        have: the new run keeps its own best.ckpt and score from its own epochs."""
        for callback, state in _checkpoint_states(trainer, checkpoint):
            if not _in_dir(trainer.ckpt_path, callback.dirpath):
                state.clear()
                state.update(callback.state_dict())
                continue
            saved_in = Path(state.get("dirpath") or callback.dirpath)
            state.update(_moved(state, saved_in, Path(callback.dirpath)))


def _in_dir(path, directory) -> bool:
    return path is None or Path(path).resolve().parent == Path(directory).resolve()


def _checkpoint_states(trainer: L.Trainer, checkpoint: dict) -> list[tuple[ModelCheckpoint, dict]]:
    """Each ModelCheckpoint of the trainer with its state in the checkpoint (if it has one)."""
    states = checkpoint.get("callbacks") or {}
    return [
        (callback, states[callback.state_key])
        for callback in trainer.checkpoint_callbacks
        if isinstance(callback, ModelCheckpoint)
        and callback.dirpath
        and isinstance(states.get(callback.state_key), dict)
        and "dirpath" in states[callback.state_key]
    ]


def _moved(state: dict, old: Path, new: Path) -> dict:
    """The state's file paths and dirpath moved from dir `old` to dir `new`."""

    def move(path):
        if not path:
            return path
        try:
            return str(new / (old / path).relative_to(old))
        except ValueError:  # a file outside the dirpath: left as it is
            return path

    moved = {key: move(state[key]) for key in CheckpointPathsInRunDir.PATHS if key in state}
    if isinstance(state.get("best_k_models"), dict):
        moved["best_k_models"] = {move(k): v for k, v in state["best_k_models"].items()}
    return {**moved, "dirpath": str(new)}


def keep_csv_rows(loggers: list) -> None:
    """A resumed run's CSVLogger goes on with the rows the run logged before its stop: Lightning's
    CSV writer deletes an existing metrics.csv when it starts, so its rows are read first and
    logged again through the writer (before anything new), in their order and with their steps."""
    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as file:
            rows = list(csv.DictReader(file))
        writer = logger.experiment  # created now: this deletes the file
        for row in rows:
            values = {key: value for key, value in row.items() if key != "step" and value != ""}
            writer.log_metrics(values, step=int(row["step"]) if row.get("step") else None)
        writer.save()
