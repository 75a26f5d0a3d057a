"""One live process per run dir: an flock on RUN_DIR/.aelab.lock, held for the process's life.

The kernel releases an flock when its process ends, however it ends (SIGKILL too), so a lock that
can be taken belongs to nobody alive: no heartbeat or pid check is needed. The file names its
holder (pid, host, purpose, start) for the message a second process gets. On a file system
without flock, aelab warns and goes on unclaimed: a lock that outlives a killed process would need
the liveness guesses that flock makes unnecessary, and default run dirs are unique anyway.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from aelab.errors import AelabError
from aelab.runtime import created

LOCK_NAME = ".aelab.lock"
NO_FLOCK = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP}  # a file system without flock


class RunDirInUse(AelabError):
    """Another live process holds the run dir."""


_held: dict[Path, int] = {}  # lock file → its descriptor, open (and locked) while held


def lock_path(run_dir: Path) -> Path:
    return created.absolute(run_dir) / LOCK_NAME


def claim(run_dir: Path, purpose: str, refuse_if: Callable[[], None] | None = None) -> None:
    """Create run_dir if needed and hold its lock for this process's life, or raise RunDirInUse
    (another process holds it) or AelabError (the dir cannot be made or written).

    `refuse_if` runs once the lock is ours and before anything is written, so a check on the
    dir's contents cannot race another start."""
    path = lock_path(run_dir)
    if path in _held:
        return
    for _ in range(10):  # again if a refused start removed the file between our open and lock
        fd = open_lock(path, purpose)
        if fd is not None:
            break
    else:
        raise RunDirInUse(f"{path} keeps being removed while this process claims it.")
    try:
        if refuse_if is not None:
            refuse_if()
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose}
        holder["since"] = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    _held[path] = fd


def open_lock(path: Path, purpose: str) -> int | None:
    """The lock file's descriptor, locked by this process; None if the file was removed
    meanwhile. The dir and the file, where this process creates them, are recorded."""
    try:
        created.make_dir(path.parent)
        fd = create_or_open(path)
    except OSError as error:  # a file in the way, a dir this user cannot write
        raise AelabError(unusable_dir_message(path.parent, error)) from None
    if fd is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = read_holder(fd)
        os.close(fd)
        raise RunDirInUse(in_use_message(path, holder, purpose)) from None
    except OSError as error:
        if error.errno not in NO_FLOCK:
            os.close(fd)
            raise AelabError(unusable_dir_message(path.parent, error)) from None
        print(
            f"\naelab: warning: the file system of {path.parent} has no flock, so aelab cannot "
            "refuse a second process in this dir (a simultaneous start, or a resume of a run "
            "that is still alive); make sure there is none.\n",
            file=sys.stderr,
        )
    with contextlib.suppress(FileNotFoundError):
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            return fd
    os.close(fd)
    return None


def create_or_open(path: Path) -> int | None:
    """The lock file opened, recorded if this process created it; None if it went meanwhile."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):  # removed between the two opens
            return os.open(path, os.O_RDWR)
        return None
    created.record(path)
    return fd


def release(run_dir: Path) -> None:
    """Give up this process's claim on run_dir, if it holds one (a sweep's job that ended)."""
    fd = _held.pop(lock_path(run_dir), None)
    if fd is not None:
        os.close(fd)


def release_all() -> None:
    for path in list(_held):
        release(path.parent)


def read_holder(fd: int) -> dict:
    """The holder the lock file names; {} for one still being written."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def in_use_message(path: Path, holder: dict, purpose: str) -> str:
    run_dir, pid, host = path.parent, holder.get("pid"), holder.get("host")
    who = (
        f"process {pid} on host {host} (a {holder.get('purpose', 'run')} started "
        f"{holder.get('since', 'at an unknown time')})"
        if pid
        else "another process that is starting right now"
    )
    refused = "resume it" if purpose == "resume" else "start a run there"
    return (
        f"{run_dir} is in use by {who}, which holds {path}; two processes in one dir would mix "
        f"their logs and checkpoints, so this one does not {refused}. Wait for that process to "
        f"finish, or stop it (kill {pid or 'PID'} on {host or 'its host'}; SIGTERM saves "
        f"last.ckpt) and then continue it with python train.py resume={run_dir}; to start a "
        "new run instead, choose another hydra.run.dir."
    )


def unusable_dir_message(directory: Path, error: OSError) -> str:
    """A run, sweep or eval dir that cannot be made or written: the path and the reason."""
    reason = error.strerror or type(error).__name__
    where = f" ({error.filename})" if error.filename not in (None, str(directory)) else ""
    return (
        f"{directory} cannot be used as an output dir: {reason}{where}. It must be a directory "
        "this user can create and write (not an existing file, nor inside one). Choose another "
        "with hydra.run.dir=DIR (hydra.sweep.dir=DIR for -m), or leave it at its default, a new "
        "dir under outputs/."
    )
