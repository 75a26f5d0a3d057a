import gc
import weakref

import pytest

from aelab.runtime.heap import frozen_heap


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_objects_alive_before_are_frozen_while_new_garbage_is_still_collected():
    old = _Cycle()
    with frozen_heap():
        assert gc.get_freeze_count() > 10_000  # torch, Lightning and the rest, out of every pass
        new = _Cycle()
        new_ref, old_ref = weakref.ref(new), weakref.ref(old)
        del new, old
        gc.collect()
        assert new_ref() is None  # made after the freeze: collected as usual
        assert old_ref() is not None  # frozen: kept until the block ends
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert old_ref() is None


def test_garbage_left_by_a_previous_job_is_collected_not_frozen():
    garbage = _Cycle()
    garbage_ref = weakref.ref(garbage)
    del garbage  # unreachable, but only a collection frees a cycle
    with frozen_heap():
        assert garbage_ref() is None


def test_the_heap_is_unfrozen_when_the_block_fails():
    with pytest.raises(RuntimeError), frozen_heap():
        raise RuntimeError("a run that stopped")
    assert gc.get_freeze_count() == 0
