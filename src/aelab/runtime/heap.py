"""Keep Python's full garbage-collection pass from stalling training.

After importing torch, Lightning and Hydra the collector tracks about half a million objects that
live for the whole run; its oldest-generation pass walks all of them at moments set by allocation
counts, so it can land mid-epoch (docs/performance.md). They are frozen out of its reach while
training; objects made after the freeze are collected as usual.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Leave everything alive now out of later passes until the block ends (not reentrant: the
    inner block's end would unfreeze the outer one's objects too).

    One full collection first: a previous job of the same process (a sweep, the benchmark) can
    leave its trainer, task and data in reference cycles, and freezing them would keep them
    alive, data included, for the whole run.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()  # a sweep's next job starts from a normal collector
