"""One scheduler replica: the schedule loop, the poller and the definition sync, wired.

``shiftflow scheduler run`` runs one in its main thread, on RabbitMQ with pipelined
confirms; dev mode (``shiftflow dev``) runs one in a thread on its in-process broker, so
schedules and polling triggers fire there too.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

import peewee

from shiftflow.kernel.batch_publisher import Publisher
from shiftflow.kernel.cron import ScheduleError
from shiftflow.kernel.settings import Settings
from shiftflow.producers.poller.loop import Poller
from shiftflow.producers.scheduler.config import sync_definition_schedules
from shiftflow.producers.scheduler.loop import Scheduler

log = logging.getLogger("shiftflow.scheduler")
#: Seconds between two syncs of definition schedules and polling cursors.
SYNC_SECONDS = 10.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def periodic(stop: threading.Event, seconds: float, work: Callable[[], None], name: str) -> threading.Thread:
    """Run ``work`` now and then every ``seconds`` in a daemon thread until ``stop``; errors are logged."""

    def loop() -> None:
        while not stop.is_set():
            try:
                work()
            except (peewee.DatabaseError, peewee.InterfaceError, ScheduleError) as exc:
                log.warning("%s failed: %s", name, exc)  # a database blip: next round
            stop.wait(seconds)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


def run_replica(
    settings: Settings,
    make_publisher: Callable[[], Publisher],
    stop: threading.Event,
    *,
    polling: bool = True,
    sync_seconds: float = SYNC_SECONDS,
) -> None:
    """Fire schedules (and poll polling triggers) until ``stop`` is set; then clean up.

    Parameters:
        make_publisher: makes one publisher per loop (the scheduler's, the poller's).
        polling: also run the poller in a thread.
        sync_seconds: how often definition schedules and polling cursors are brought in
            step with the current definitions.
    """
    scheduler = Scheduler(
        make_publisher(),
        batch_size=settings.scheduler_batch_size,
        grace=dt.timedelta(seconds=settings.scheduler_misfire_grace_seconds),
    )
    threads = []
    poller: Poller | None = None
    if polling:
        poller = Poller(
            make_publisher(),
            http_timeout=settings.http_timeout_seconds,
            allow_private=settings.http_allow_private,
        )
        threads.append(threading.Thread(target=poller.run, args=(stop,), name="poller", daemon=True))
        threads[-1].start()

    def sync() -> None:
        sync_definition_schedules(_now())
        if poller is not None:
            poller.sync()

    threads.append(periodic(stop, sync_seconds, sync, "sync"))
    try:
        scheduler.run(stop, tick_seconds=settings.scheduler_tick_ms / 1000)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=settings.http_timeout_seconds + 5)
        scheduler.publisher.close()
        if poller is not None:
            poller.publisher.close()
