"""Checkpoint files that a kill during a save cannot leave half-written."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

TEMPORARY = re.compile(r"^\..+\.tmp(\d+)$")  # .NAME.tmpPID, as temporary_path spells it


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint beside its target, fsync it, rename it into place.

    A kill during a save leaves the previous file whole. Lightning's own save goes through an
    fsspec transaction that writes to the system temp dir and then moves the file; when that dir
    is on another file system the move is a copy, which a kill can cut short.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_temporaries(path.parent)
        temporary = temporary_path(path)
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
            sync_directory(path.parent)
        finally:
            temporary.unlink(missing_ok=True)


def remove_temporaries(directory: Path) -> list[Path]:
    """Remove what killed saves left (.NAME.tmpPID of a process that is gone)."""
    removed = []
    for entry in directory.iterdir() if directory.is_dir() else []:
        match = TEMPORARY.match(entry.name)
        if match and int(match[1]) != os.getpid() and not process_exists(int(match[1])):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; no such pid
        return False
    except PermissionError:  # another user's
        return True
    return True


def sync_directory(directory: Path) -> None:
    """Make a rename in directory survive a crash of the machine, not only of the process."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems refuse to sync a directory
        pass
    finally:
        os.close(descriptor)
