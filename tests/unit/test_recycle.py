"""``consumers.recycle``: when a worker process asks to be recycled."""

from __future__ import annotations

import threading

from shiftflow.consumers.recycle import Recycler, resident_mb


def test_after_n_messages_the_process_stops() -> None:
    stop = threading.Event()
    recycler = Recycler(stop, max_messages=3, max_memory_mb=0)
    for _ in range(2):
        recycler.after_process_message(None, None)
    assert not stop.is_set()
    recycler.after_skip_message(None, None)  # a skipped message counts too
    assert stop.is_set() and "3 messages" in recycler.reason


def test_above_the_memory_ceiling_the_process_stops() -> None:
    stop = threading.Event()
    used = iter([100.0, 190.0, 260.0])
    recycler = Recycler(stop, max_messages=0, max_memory_mb=256, memory=lambda: next(used))
    recycler.after_process_message(None, None)
    recycler.after_process_message(None, None)
    assert not stop.is_set()
    recycler.after_process_message(None, None)
    assert stop.is_set() and "260 MiB" in recycler.reason


def test_no_limits_is_off_and_the_resident_memory_is_read() -> None:
    assert not Recycler(threading.Event(), 0, 0).enabled
    assert 5 < resident_mb() < 100_000  # this test process's own, from /proc/self/statm
