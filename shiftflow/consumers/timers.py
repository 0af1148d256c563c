"""The timer loop: wakes waiting steps, ends retry backoffs, enforces timeouts.

Every worker pool runs one loop as a Dramatiq fork (``SHIFTFLOW_TIMERS=on``); several
loops share the work through ``FOR UPDATE SKIP LOCKED``, so any number of pools is safe.
Dev mode runs it in a thread; ``shiftflow timers`` runs it alone.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

from dramatiq.middleware import Middleware

from shiftflow.kernel import holders
from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.db import bind_database, database
from shiftflow.kernel.enqueue import send_all
from shiftflow.kernel.settings import Settings
from shiftflow.models.engine.flow_control import rollup_stats
from shiftflow.models.engine.leases import UNREACHABLE
from shiftflow.models.engine.waits import resume_due
from shiftflow.models.tables import trigger_deliveries
from shiftflow.models.tables.base import utcnow

log = logging.getLogger(__name__)

#: How often workflow statistics are rolled up from executions.
ROLLUP_EVERY_SECONDS = 10.0
#: How often trigger delivery counts older than a week are forgotten.
PURGE_EVERY_SECONDS = 3600.0


def tick() -> int:
    """Fire what is due once; return how many messages were published.

    Whether the database answered is noted (``holders.STORE``): after an outage the loop
    waits a whole claim lease before it re-publishes steps whose lease ran out.
    """
    try:
        with database.connection_context():
            outgoing = resume_due()
    except UNREACHABLE:
        holders.STORE.failed()
        raise
    holders.STORE.ok()
    send_all(outgoing)
    return len(outgoing)


def run_loop(stop: threading.Event, interval: float = 0.25) -> None:
    """Tick until ``stop`` is set; sleep ``interval`` when nothing was due."""
    last_rollup = last_purge = time.monotonic()
    while not stop.is_set():
        try:
            fired = tick()
            if time.monotonic() - last_rollup > ROLLUP_EVERY_SECONDS:
                with database.connection_context():
                    rollup_stats(utcnow() - dt.timedelta(seconds=ROLLUP_EVERY_SECONDS * 3))
                last_rollup = time.monotonic()
            if time.monotonic() - last_purge > PURGE_EVERY_SECONDS:
                with database.connection_context():
                    trigger_deliveries.purge()
                last_purge = time.monotonic()
        except Exception:
            log.exception("timer loop failed; retrying")
            fired = 0
        if not fired:
            stop.wait(interval)


def timer_fork() -> None:
    """The Dramatiq fork: a timer loop with its own database and publishing broker."""
    settings = Settings.from_env()
    install(build_broker(settings, worker=False))
    bind_database(settings.database_url)
    run_loop(threading.Event())


class Timers(Middleware):
    """Adds the timer loop fork to a worker pool."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @property
    def forks(self) -> list[Any]:
        """The timer loop, when enabled."""
        return [timer_fork] if self.enabled else []
