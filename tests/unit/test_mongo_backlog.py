"""The MongoDB sink's backlog stays bounded while MongoDB is up but slower than the workers.

Under a long soak the writer thread fell behind the worker threads and its buffer grew to
tens of thousands of documents (about 1.1 kB of resident memory each), towards the cap
at which it drops the oldest: memory that never came back, then lost logs. Past the
high-water mark a writer waits for room instead, as long as the sink is sending; while
MongoDB is unreachable it does not wait (PostgreSQL is the truth, the workers go on).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pymongo.errors import AutoReconnect

from shiftflow.kernel.mongo import MongoSink


def slow_sink(high_water: int, seconds_per_batch: float) -> tuple[MongoSink, list[int], list[int]]:
    """A sink whose sending takes ``seconds_per_batch``; returns it, the sent count (one
    cell) and the largest backlog seen at each send."""
    sink = MongoSink("mongodb://unused", "unused", batch_size=50, flush_ms=10, high_water=high_water)
    sent = [0]
    backlog: list[int] = []

    def send(batch: list[tuple[str, dict[str, Any]]]) -> None:
        backlog.append(sink.buffered())
        time.sleep(seconds_per_batch)
        sent[0] += len(batch)

    sink._send = send  # type: ignore[method-assign]
    return sink, sent, backlog


def write_from_threads(sink: MongoSink, threads: int, each: int) -> None:
    def produce() -> None:
        for i in range(each):
            sink.write("execution_logs", {"n": i})

    workers = [threading.Thread(target=produce) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)


def test_backlog_stays_under_the_high_water_mark_when_the_writer_is_slower():
    sink, sent, backlog = slow_sink(high_water=200, seconds_per_batch=0.004)
    write_from_threads(sink, threads=4, each=1500)
    assert sink.flush(timeout=20)
    sink.close(timeout=5)
    assert sent[0] == 6000  # nothing dropped
    # Each producer may add one document after it was let through.
    assert max(backlog) <= 200 + 4


def test_writes_do_not_wait_while_mongodb_is_unreachable():
    sink = MongoSink("mongodb://unused", "unused", batch_size=50, flush_ms=10, high_water=100)

    def fail(batch: list[tuple[str, dict[str, Any]]]) -> None:
        raise AutoReconnect("down")

    sink._send = fail  # type: ignore[method-assign]
    sink.write("execution_logs", {"n": -1})
    time.sleep(0.1)  # the writer tried once and failed
    started = time.monotonic()
    for i in range(2000):
        sink.write("execution_logs", {"n": i})
    assert time.monotonic() - started < 1.0
    assert sink.buffered() >= 1900  # kept for later, up to the cap
