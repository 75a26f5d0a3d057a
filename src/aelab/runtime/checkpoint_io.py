"""Checkpoint files that a kill during a save cannot leave half-written, and the last.ckpt before
the newest kept beside it (last.ckpt.prev), for a resume to fall back on if last.ckpt is damaged."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

KEEPS_PREVIOUS = "last.ckpt"
PREVIOUS_SUFFIX = ".prev"
TEMPORARY = re.compile(r"^\..+\.tmp(\d+)$")  # .NAME.tmpPID, as temporary_path spells it


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def previous_path(path: Path) -> Path:
    return path.with_name(path.name + PREVIOUS_SUFFIX)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write a checkpoint beside its target, fsync it, rename it into place; last.ckpt's earlier
    version stays as last.ckpt.prev (renamed, not copied: the run keeps two files, not one).

    A kill during a save leaves the previous file whole. Lightning's own save goes through an
    fsspec transaction that writes to the system temp dir and then moves the file; when that dir
    is on another file system the move is a copy, which a kill can cut short.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_temporaries(path.parent)
        temporary, link = temporary_path(path), None
        try:
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            if path.name == KEEPS_PREVIOUS and path.is_file():
                link = link_current(path)
            os.replace(temporary, path)
            if link is not None:
                os.replace(link, previous_path(path))
            sync_directory(path.parent)
        finally:
            temporary.unlink(missing_ok=True)
            if link is not None:
                link.unlink(missing_ok=True)

    def remove_checkpoint(self, path) -> None:
        """Lightning removes a superseded checkpoint here; its .prev goes with it."""
        super().remove_checkpoint(path)
        previous_path(Path(path)).unlink(missing_ok=True)


def link_current(path: Path) -> Path | None:
    """A second name (a hard link) for path's current file, renamed to path.prev once the new
    file is in place, so that .prev is never the file path names. Without hard links the file
    becomes .prev at once (None), and only .prev exists until the new file is in place."""
    link = temporary_path(previous_path(path))
    try:
        os.link(path, link)
    except OSError:
        os.replace(path, previous_path(path))
        return None
    return link


def remove_temporaries(directory: Path, every: bool = False) -> list[Path]:
    """Remove what killed saves left (.NAME.tmpPID): those whose process is gone, or, with
    `every` (a caller that holds the run dir's lock), all but this process's own."""
    removed = []
    for entry in directory.iterdir() if directory.is_dir() else []:
        match = TEMPORARY.match(entry.name)
        if not match or int(match[1]) == os.getpid():
            continue
        if every or not process_exists(int(match[1])):
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
