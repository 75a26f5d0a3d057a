"""A stop signal in any phase of a run ends it as an interruption that a resume continues.

One listener per process (signal handlers are the process's): entered when a job starts
(aelab.runtime.cli, before torch loads) and again by aelab.runtime.lifecycle.guarded around the
run. The handler records the signal, then either raises TrainingInterrupted at once, or, while a
stop must wait for a whole state (before the run has started, during training), leaves the stop
to whoever waits: guarded's start, or SaveOnSignal after the current step. Setup, testing and
writing results need no save: a resume does them again from last.ckpt (or from the start).
Torch-free, so that it can listen before torch is imported.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")


class TrainingInterrupted(BaseException):
    """A stop signal arrived; `checkpoint` is the last.ckpt saved for it, if one was. Like
    KeyboardInterrupt not an Exception, so no `except Exception` on its way (Hydra's
    instantiate, a data loader's) turns it into an error."""

    def __init__(self, signum: int, checkpoint: Path | None = None) -> None:
        self.signum, self.checkpoint = signum, checkpoint
        saved = f"; saved {checkpoint}" if checkpoint else ""
        super().__init__(f"{signal.Signals(signum).name} received{saved}")


def stop_signals() -> tuple[str, ...]:
    """The signals that stop a run. Under submitit on SLURM not SIGTERM: a preemption sends
    SIGTERM and then submitit's SIGUSR2, and only the latter's handler requeues the job."""
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
        return tuple(name for name in SIGNALS if name != "SIGTERM")
    return SIGNALS


class StopListener:
    """Records stop signals; raises TrainingInterrupted from the handler unless `waiting`."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.waiting = True  # until a run has started, a stop waits for it (guarded's start)
        self.previous: dict[int, Any] = {}
        self.depth = 0

    def handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        if not self.waiting:
            self.waiting = True  # once: the run is ending, later signals are only recorded
            raise TrainingInterrupted(signum)

    def install(self) -> None:
        """Put the handler in place again, over any a library set in between (Lightning's SIGTERM
        handler would end training at its next check, without a checkpoint)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for name in stop_signals():
            number = signal.Signals[name]
            previous = signal.signal(number, self.handle)
            self.previous.setdefault(number, previous)

    def wait(self) -> None:
        """From now on a stop waits for its owner to act on `received`."""
        self.waiting = True
        self.install()

    def act(self) -> None:
        """From now on a stop is immediate; one that came while waiting stops here."""
        self.waiting = False
        if self.received is not None:
            self.waiting = True
            raise TrainingInterrupted(self.received)

    def previous_handler(self, signum: int) -> Any:
        """The handler that was there before this listener (submitit's requeue, say)."""
        return self.previous.get(signum, signal.getsignal(signum))


LISTENER = StopListener()


@contextmanager
def listening() -> Iterator[StopListener]:
    """The listener in place for the block (nested blocks share it); the handlers that were there
    before are back after the outermost block, and a recorded signal is forgotten."""
    if LISTENER.depth == 0:
        LISTENER.received, LISTENER.waiting = None, True
        LISTENER.install()
    LISTENER.depth += 1
    try:
        yield LISTENER
    finally:
        LISTENER.depth -= 1
        if LISTENER.depth == 0:
            if threading.current_thread() is threading.main_thread():
                for number, handler in LISTENER.previous.items():
                    signal.signal(number, handler)
            LISTENER.previous = {}
