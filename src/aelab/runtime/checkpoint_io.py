"""Checkpoint files that a kill during a save cannot leave half-written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


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
