"""What Lightning leaves out of a checkpoint for an exact resume: random states, flushed logs."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


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
