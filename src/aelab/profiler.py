"""The Trainer's profiler when nobody profiles: one shared no-op context for every hook call."""

from __future__ import annotations

import contextlib

from lightning.pytorch.profilers import Profiler


class NoProfiler(Profiler):
    """Records nothing, like Lightning's default PassThroughProfiler, at no cost per hook call.

    Lightning wraps every hook call of the module, the strategy and each callback in
    `profiler.profile(name)`, about 170 times a training step with aelab's callbacks. The default
    profiler builds a generator-based context manager for each: 0.92 µs a call against 0.21 µs
    for this one, which hands back the same nullcontext every time (about 0.12 ms a step saved on
    this project's 2-core CPU).
    `trainer.profiler=simple` (or advanced, pytorch) profiles a run as usual.
    """

    _nothing = contextlib.nullcontext()

    def start(self, action_name: str) -> None:
        pass

    def stop(self, action_name: str) -> None:
        pass

    def profile(self, action_name: str) -> contextlib.nullcontext:
        return self._nothing
