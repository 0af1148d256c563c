"""Claim leases: who owns a RUNNING step, and when a copy of its message may take it over.

The ownership rule (the ``claimed_by`` and ``lease_until`` columns of ``step_execution``):

* A claim writes the claiming thread's holder token (``kernel.holders``) and a lease of
  ``SHIFTFLOW_CLAIM_LEASE_SECONDS``. While the thread works, a heartbeat thread of its
  process renews the lease every third of that, including while the thread waits out
  a database outage to record its result.
* A copy of the step's message (a duplicate publish, or the same message handed out
  again after a broker restart while the first copy still runs) takes the step over
  only when the holder is provably gone: its token is of this process and no thread
  holds it, its process on this host no longer exists, or its lease ran out and this
  process has seen the database answer for a whole lease since it last found it down
  (an outage stops every renewal, so an expired lease proves nothing until the holders
  had time to renew). Otherwise the copy is dropped: the holder records the outcome and
  publishes what follows.
* A dropped copy is never the step's last chance: if the holder then dies without
  recording, its lease runs out and the timer loop re-publishes the step (``sweep``),
  whose next claim reconciles (an ``effect: once`` call found sent is never repeated).
* A holder that leaves a step RUNNING (an error it could not record) releases it:
  ``claimed_by`` is cleared, so the next copy takes it over at once.

Leases are stamped and judged with each worker host's clock: the hosts' clocks must
agree to well within a lease (NTP does).

Writes a holder must make (its ledger entries, its result) are retried while the
database is unreachable (``until_stored``), for up to ``SHIFTFLOW_STORE_RETRY_SECONDS``:
an outage of the store is waited out, never turned into a failure or a timeout.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import peewee
import psycopg2

from shiftflow.kernel import holders
from shiftflow.kernel.db import database
from shiftflow.kernel.settings import get_settings
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import StepExecution

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors that mean "the database could not be reached", as opposed to a refused statement.
UNREACHABLE: tuple[type[BaseException], ...] = (peewee.OperationalError, peewee.InterfaceError)


def lease_seconds() -> float:
    """How long a claim holds without being renewed."""
    return get_settings().claim_lease_seconds


def lease_from(now: dt.datetime) -> dt.datetime:
    """The end of a lease taken or renewed at ``now``."""
    return now + dt.timedelta(seconds=lease_seconds())


def holder_gone(step: StepExecution, now: dt.datetime | None = None) -> bool:
    """True when nobody holds RUNNING ``step`` any more, so a copy may take it over."""
    if not step.claimed_by:
        return True  # released, or orphaned and re-published
    state = holders.state_of(step.claimed_by)
    if state is holders.Holder.HERE:
        return False
    if state is holders.Holder.GONE or step.lease_until is None:
        return True  # a claim of an older version (no lease): its redelivery takes over
    return bool(step.lease_until < (now or utcnow()) and leases_judgeable())


def leases_judgeable() -> bool:
    """True when this process may believe an expired lease: the database has answered it
    for at least a whole lease (holders that lived through an outage renewed meanwhile)."""
    return holders.STORE.up_for() >= lease_seconds()


def release(token: str) -> None:
    """Give up the claim ``token`` on a step left RUNNING (best effort: if the database is
    unreachable, the lease runs out instead)."""
    try:
        with database.connection_context():
            # ``completed_at IS NULL``: every RUNNING step has none, and it lets the query read
            # the index of open steps (``idx_step_execution_open``) instead of the table.
            StepExecution.update(claimed_by=None, lease_until=lease_from(utcnow())).where(
                (StepExecution.claimed_by == token) & (StepExecution.status == "RUNNING")
                & StepExecution.completed_at.is_null()).execute()
    except UNREACHABLE:
        holders.STORE.failed()


def renew(tokens: list[str]) -> int:
    """Extend the leases of ``tokens`` (their steps still RUNNING under them); how many."""
    if not tokens:
        return 0
    # ``completed_at IS NULL`` (true of every RUNNING step) reads the index of open steps.
    return int(StepExecution.update(lease_until=lease_from(utcnow())).where(
        (StepExecution.claimed_by.in_(tokens)) & (StepExecution.status == "RUNNING")
        & StepExecution.completed_at.is_null()).execute())


class Heartbeat:
    """The thread of a worker process that renews its holders' leases.

    It also probes the database when nothing is held, so ``holders.STORE`` notices an
    outage even in an idle process. After a failure it retries every second.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def ensure_running(self) -> None:
        """Start the thread in this process unless it runs (after a fork, again)."""
        import os

        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="shiftflow-lease-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (tests; a worker's process exit ends it anyway)."""
        self._stop.set()

    def beat(self) -> bool:
        """Renew once; True when the database answered."""
        try:
            with database.connection_context():
                tokens = holders.renewable()
                if tokens:
                    renew(tokens)
                else:
                    database.execute_sql("SELECT 1")
        except UNREACHABLE:
            holders.STORE.failed()
            return False
        holders.STORE.ok()
        return True

    def _run(self) -> None:
        down = False
        while not self._stop.is_set():
            try:
                ok = self.beat()
            except Exception:
                # Never let the thread die: a dead heartbeat lets every lease of this process
                # run out, and other workers would take steps that are still running.
                log.exception("lease heartbeat: unexpected error; trying again in a second")
                self._stop.wait(1.0)
                continue
            if ok and down:
                log.warning("database reachable again: claim leases renewed")
            elif not ok and not down:
                log.warning("database unreachable: claim leases cannot be renewed; holders keep "
                            "their steps and retry their writes")
            down = not ok
            self._stop.wait(min(1.0, lease_seconds() / 3) if down else lease_seconds() / 3)


HEARTBEAT = Heartbeat()


def until_stored(what: str, write: Callable[[], T]) -> T:
    """Run ``write`` (a complete transaction: it must be safe to run again) until the
    database takes it, for up to ``SHIFTFLOW_STORE_RETRY_SECONDS``.

    A write the holder of a step must make is not lost to an outage: the thread waits for
    the database (its lease is kept alive meanwhile) and retries. A connection error is
    logged once per wait, without a traceback. Inside an open transaction it does not
    retry (the caller's transaction is already lost).

    Raises:
        peewee.OperationalError, peewee.InterfaceError: still unreachable at the limit.
    """
    give_up = time.monotonic() + get_settings().store_retry_seconds
    delay, waited = 0.2, False
    while True:
        try:
            result = write()
        except UNREACHABLE as exc:
            holders.STORE.failed()
            if database.in_transaction() or time.monotonic() >= give_up:
                raise
            if not waited:
                log.warning("%s: database unreachable (%s); retrying until it answers",
                            what, str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__)
                waited = True
            _drop_connection()
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        holders.STORE.ok()
        if waited:
            log.warning("%s: stored after the database came back", what)
        return result


def _drop_connection() -> None:
    """Close this thread's (broken) connection; the next statement opens a fresh one."""
    try:
        if not database.is_closed():
            database.close()
    except (peewee.PeeweeException, psycopg2.Error) as exc:  # closing a broken connection may fail too
        log.debug("closing a broken connection: %s", exc)


def adopt(step: StepExecution, now: dt.datetime) -> bool:
    """Mark an orphaned RUNNING step as re-published (no holder, a fresh lease for the
    message to arrive); False if it moved on meanwhile."""
    return bool(StepExecution.update(claimed_by=None, lease_until=lease_from(now)).where(
        (StepExecution.id == step.id) & (StepExecution.status == "RUNNING")
        & (StepExecution.lease_until < now)).execute())
