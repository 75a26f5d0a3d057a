"""One live process per run dir: a lock file in the dir, locked for the process's life.

The claim is atomic: an flock on RUN_DIR/.aelab.lock, taken before anything else is written there
and released by the kernel when the process ends, however it ends. The file also names its holder
(pid, host, start), for the message a second process gets and for file systems whose locks do not
reach other hosts: there a lock naming another host counts while its holder refreshes it (every
HEARTBEAT_SECONDS) and is taken for a dead run's once STALE_SECONDS pass without a refresh. On a
file system without flock, the file's creation (O_EXCL) decides between simultaneous starts.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aelab.errors import AelabError

LOCK_NAME = ".aelab.lock"
HEARTBEAT_SECONDS = 60
STALE_SECONDS = 600  # 10 minutes without a refresh: another host's holder is taken for dead
NO_FLOCK = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP}  # a file system without flock


class RunDirInUse(AelabError):
    """Another live process holds the run dir."""


@dataclass
class RunLock:
    """A held claim on a run dir; release() gives it up (the process's end does too)."""

    path: Path
    fd: int
    owner: int = field(default_factory=os.getpid)
    stop: threading.Event = field(default_factory=threading.Event)
    closing: threading.Lock = field(default_factory=threading.Lock)

    def release(self, remove_if_alone: bool = False) -> None:
        """Give the dir up; with `remove_if_alone`, a dir that holds nothing but the lock goes."""
        if os.getpid() != self.owner:
            return  # a forked child shares the lock; its end is not the run's
        with self.closing:
            if self.stop.is_set():
                return
            self.stop.set()
            _held.pop(self.path, None)
            with contextlib.suppress(OSError):
                if remove_if_alone and os.listdir(self.path.parent) == [LOCK_NAME]:
                    self.path.unlink()  # while still locked: a waiting start sees it gone
                    self.path.parent.rmdir()
            with contextlib.suppress(OSError):  # a clean end leaves no holder to wait on
                os.ftruncate(self.fd, 0)
            os.close(self.fd)

    def refresh_until_released(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            with self.closing:
                if self.stop.is_set():
                    return
                try:
                    os.utime(self.fd)
                except OSError:
                    return


_held: dict[Path, RunLock] = {}


def lock_path(run_dir: Path) -> Path:
    return Path(os.path.abspath(run_dir)) / LOCK_NAME


def claim(
    run_dir: Path,
    purpose: str,
    takeover: bool = False,
    refuse_if: Callable[[], None] | None = None,
) -> RunLock:
    """Create run_dir if needed and hold its lock for this process's life, or raise RunDirInUse.

    `takeover` (a requeued SLURM job, whose earlier self is gone) ignores a holder named in the
    file, but never a lock a live process holds. `refuse_if` runs once the lock is ours and
    before anything is written, so a check on the dir's contents cannot race another start.
    """
    path = lock_path(run_dir)
    if path in _held:
        return _held[path]
    for _ in range(10):  # again when a refused start removed the file between open and lock
        opened = open_and_lock(path, run_dir, purpose)
        if opened is not None:
            break
    else:
        raise RunDirInUse(f"{path} keeps being removed while this process claims it.")
    fd, locked = opened
    try:
        holder = read_holder(fd)
        if holder and not takeover and holder_may_live(holder, os.fstat(fd).st_mtime, locked):
            raise RunDirInUse(in_use_message(run_dir, path, holder, purpose))
        if refuse_if is not None:
            refuse_if()
        write_holder(fd, purpose)
    except BaseException:
        os.close(fd)
        raise
    held = RunLock(path, fd)
    _held[path] = held
    threading.Thread(target=held.refresh_until_released, name="aelab-run-lock", daemon=True).start()
    return held


def open_and_lock(path: Path, run_dir: Path, purpose: str) -> tuple[int, bool] | None:
    """The lock file's descriptor, locked, and whether the lock is an flock (else this process
    created the file); None if the file was removed meanwhile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, created = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        try:
            fd, created = os.open(path, os.O_RDWR), False
        except FileNotFoundError:
            return None
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locked = True
    except BlockingIOError:
        holder = read_holder(fd)
        os.close(fd)
        raise RunDirInUse(in_use_message(run_dir, path, holder, purpose)) from None
    except OSError as error:
        if error.errno not in NO_FLOCK:
            os.close(fd)
            raise
        locked = created
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd, locked


def release(run_dir: Path) -> None:
    """Give up this process's claim on run_dir, if it holds one."""
    held = _held.get(lock_path(run_dir))
    if held is not None:
        held.release()


@atexit.register
def release_all() -> None:
    """At exit: every claim given up, and a dir this process claimed but wrote nothing to removed
    (a start refused after its claim leaves no dir behind)."""
    for held in list(_held.values()):
        held.release(remove_if_alone=True)


def read_holder(fd: int) -> dict:
    """The holder the lock file names; {} for none (a clean end) or one still being written."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def write_holder(fd: int, purpose: str) -> None:
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "purpose": purpose,
        "process_start": process_start(os.getpid()),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
    os.fsync(fd)


def holder_may_live(holder: dict, refreshed: float, locked: bool) -> bool:
    """Whether the process the lock file names may still run, once the lock is ours."""
    if holder.get("host") != socket.gethostname():
        return time.time() - refreshed < STALE_SECONDS
    if locked:
        return False  # a live process on this host would still hold the flock
    started, recorded = process_start(holder.get("pid")), holder.get("process_start")
    return started is not None and (started == -1 or recorded in (None, -1) or started == recorded)


def process_start(pid) -> int | None:
    """When process `pid` started, in clock ticks since boot (tells a reused pid apart); None if
    there is no such process, -1 if it lives but its start cannot be read (no /proc)."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # another user's live process
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return -1


def in_use_message(run_dir: Path, path: Path, holder: dict, purpose: str) -> str:
    pid, host = holder.get("pid"), holder.get("host")
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
        "new run instead, choose another hydra.run.dir. A lock that names another host stops "
        f"counting {STALE_SECONDS // 60} minutes after its holder last refreshed it (it does "
        f"every {HEARTBEAT_SECONDS} s while it lives); delete {path} only if you know it is gone."
    )


def discard_unused_run_dir(output_dir: Path) -> None:
    """Remove a run dir that holds only what Hydra wrote before we refused the config (and the
    dir's claim, aelab.runtime.run_lock)."""
    if output_dir.is_dir() and all(
        p.name in (".hydra", LOCK_NAME) or p.suffix == ".log" for p in output_dir.iterdir()
    ):
        shutil.rmtree(output_dir, ignore_errors=True)
