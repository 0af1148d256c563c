"""The scheduler: fire due schedules exactly once, with any number of replicas running.

One tick claims a batch of due ``Schedule`` rows and fires them, in one transaction:

1. ``SELECT ... WHERE is_active AND next_fire_at <= now ORDER BY next_fire_at LIMIT n
   FOR UPDATE SKIP LOCKED`` (plus rows holding a BUFFER_ONE slot). A row locked by
   another replica is skipped, not waited for, so replicas split the due rows between
   them and never hold the same row at once.
2. ``producers.scheduler.firing.decide`` picks the slots to fire (catch-up and overlap policies).
3. Every fire is published to ``triggers.start`` with the dedup key
   ``schedule:{id}:{slot}`` and the batch waits for RabbitMQ's confirms, *before* commit.
4. The rows move on (``next_fire_at``, ``pending_fire_at``, ``last_fired_at``) and the
   transaction commits.

Crash windows. A crash or a failed publish before the commit rolls the rows back: they
are still due, and the next claim (by any replica) publishes the same slots with the
same dedup keys. A commit that fails after the confirms does the same. Either way the
trigger actor creates one execution per (workflow, dedup key), so a re-publish is never
a second run. The opposite order (commit, then publish) would lose the tick on a crash
in between; this order can only repeat a publish, which dedups. No tick is lost: a row
moves on only in the transaction that saw its publishes confirmed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import peewee
from prometheus_client import Counter, Histogram

from shiftflow.kernel.batch_publisher import Publisher
from shiftflow.kernel.contracts import Priority, TriggerPayload
from shiftflow.kernel.cron import EPOCH, IntervalSpec, OnceSpec, ScheduleError, Spec, next_fire, parse, zone
from shiftflow.kernel.db import database, is_postgres
from shiftflow.kernel.enqueue import Outgoing
from shiftflow.kernel.errors import BrokerUnavailable
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.schedules import Schedule
from shiftflow.models.tables.workflows import Workflow
from shiftflow.producers.scheduler.firing import Decision, Policy, decide

log = logging.getLogger(__name__)

UTC = dt.UTC
#: Execution statuses after which a run no longer counts as overlapping.
FINISHED = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
#: A fire whose execution does not exist yet counts as running (its trigger is still
#: queued) for this long; after that it is assumed lost or refused, not running.
QUEUED_WINDOW = dt.timedelta(minutes=5)

#: The fixed label values of ``shiftflow_schedule_fires_total{outcome}``.
OUTCOMES = ("fired", "caught_up", "missed", "overlap_dropped", "buffered", "workflow_inactive", "invalid")
FIRES = Counter(
    "shiftflow_schedule_fires_total",
    "Schedule slots by outcome: fired on time, caught_up (a missed slot fired late), missed "
    "(dropped by catch-up), overlap_dropped, buffered, workflow_inactive, invalid.",
    ["outcome"],
)
FIRE_LAG = Histogram(
    "shiftflow_schedule_fire_lag_seconds",
    "From a slot's due time to its confirmed publish, for slots fired on time.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TICK_SECONDS = Histogram(
    "shiftflow_scheduler_tick_seconds",
    "Duration of one claim-and-fire transaction.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
for _outcome in OUTCOMES:
    FIRES.labels(_outcome)


#: The columns a claim reads (``workflow_id`` aliased so rows read like model instances).
CLAIMED = (
    Schedule.id,
    Schedule.workflow.alias("workflow_id"),
    Schedule.key,
    Schedule.kind,
    Schedule.cron_expression,
    Schedule.interval_seconds,
    Schedule.run_at,
    Schedule.timezone,
    Schedule.start_at,
    Schedule.end_at,
    Schedule.next_fire_at,
    Schedule.pending_fire_at,
    Schedule.last_fired_at,
    Schedule.catch_up,
    Schedule.max_catch_up,
    Schedule.overlap,
    Schedule.jitter_seconds,
    Schedule.is_active,
)


def utcnow() -> dt.datetime:
    """Now, aware, in UTC."""
    return dt.datetime.now(UTC)


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """A naive UTC column value as an aware datetime."""
    return None if value is None else value.replace(tzinfo=UTC)


def naive(value: dt.datetime | None) -> dt.datetime | None:
    """An aware datetime as a naive UTC column value."""
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


def iso(slot: dt.datetime) -> str:
    """A slot in UTC as ISO 8601 with a ``Z``: ``2024-05-01T10:00:00Z``."""
    return slot.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def dedup_key(schedule_id: Any, slot: dt.datetime) -> str:
    """``schedule:{id}:{slot in UTC, ISO 8601}``: the same slot always gets the same key."""
    return f"schedule:{schedule_id}:{iso(slot)}"


def spec_of(row: Any) -> Spec:
    """The spec a row describes.

    Raises:
        ScheduleError: the row's cron expression or kind is invalid.
    """
    if row.kind == "CRON":
        return parse(row.cron_expression)
    if row.kind == "INTERVAL":
        return IntervalSpec(int(row.interval_seconds or 0), aware(row.start_at) or EPOCH)
    if row.kind == "ONCE":
        return OnceSpec(aware(row.run_at))  # type: ignore[arg-type]
    raise ScheduleError(f"kind: {row.kind!r} is not CRON, INTERVAL or ONCE")


def jitter_offset(row: Any) -> dt.timedelta:
    """A stable per-schedule delay in ``[0, jitter_seconds]``: spreads a herd of same-minute schedules."""
    if not row.jitter_seconds:
        return dt.timedelta(0)
    digest = int.from_bytes(hashlib.sha256(str(row.id).encode()).digest()[:4], "big")
    return dt.timedelta(seconds=digest % (row.jitter_seconds + 1))


@dataclass
class TickResult:
    """What one tick did: rows claimed, triggers published, and whether the batch was full."""

    claimed: int = 0
    published: int = 0
    full: bool = False


@dataclass
class _Planned:
    row: Any  # a claimed row (named tuple of CLAIMED)
    decision: Decision
    offset: dt.timedelta
    outcome: str = ""


class Scheduler:
    """Claims due schedules and fires them (one replica; run as many as you like).

    Parameters:
        publisher: publishes a batch and returns once RabbitMQ confirmed it.
        batch_size: rows claimed per transaction.
        grace: how late a slot may be and still fire on time (catch-up below that).
        clock: returns now (aware UTC); tests pass a fake one.
    """

    def __init__(
        self,
        publisher: Publisher,
        *,
        batch_size: int = 1000,
        grace: dt.timedelta = dt.timedelta(seconds=60),
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.publisher = publisher
        self.batch_size = batch_size
        self.grace = grace
        self.clock = clock

    # ------------------------------------------------------------------ claim

    def _claim(self, now: dt.datetime) -> list[Any]:
        # Plain named tuples, not model instances: building a Peewee model per row was
        # a large part of a tick (docs/benchmarks.md#scheduler-ticks).
        due = (
            Schedule.select(*CLAIMED)
            .where(Schedule.is_active & (Schedule.next_fire_at <= naive(now)))
            .order_by(Schedule.next_fire_at)
            .limit(self.batch_size)
        )
        buffered = (
            Schedule.select(*CLAIMED)
            .where(Schedule.is_active & Schedule.pending_fire_at.is_null(False))
            .limit(self.batch_size)
        )
        if is_postgres():
            due, buffered = due.for_update(skip_locked=True), buffered.for_update(skip_locked=True)
        rows = {row.id: row for row in due.namedtuples()}
        for row in buffered.namedtuples():
            rows.setdefault(row.id, row)
        return list(rows.values())

    def _busy(self, rows: Sequence[Any], now: dt.datetime) -> set[Any]:
        """Schedules (of ``rows`` with an overlap policy) whose previous run has not finished."""
        checked = [r for r in rows if r.overlap != "ALLOW"]
        if not checked:
            return set()
        workflows = {r.workflow_id for r in checked}
        running = Execution.select(Execution.dedup_key).where(
            Execution.workflow.in_(workflows)
            & (Execution.source == "schedule")
            & Execution.status.not_in(FINISHED)
        )
        running_ids = {key.split(":", 2)[1] for key in running.scalars() if key.startswith("schedule:")}
        busy = {r.id for r in checked if str(r.id) in running_ids}
        # A fire still queued (no execution yet) is a run that has not finished either.
        recent = {}
        for r in checked:
            if r.last_fired_at is None or r.id in busy:
                continue
            last = r.last_fired_at.replace(tzinfo=UTC)
            if now - last < QUEUED_WINDOW + self.grace:
                recent[dedup_key(r.id, last)] = r.id
        if recent:
            started = set(
                Execution.select(Execution.dedup_key)
                .where(Execution.workflow.in_(workflows) & Execution.dedup_key.in_(list(recent)))
                .scalars()
            )
            busy |= {sid for key, sid in recent.items() if key not in started}
        return busy

    def _plan(self, rows: Sequence[Any], now: dt.datetime) -> list[_Planned]:
        active = set(
            Workflow.select(Workflow.id)
            .where(Workflow.id.in_({r.workflow_id for r in rows}) & (Workflow.status == "ACTIVE"))
            .scalars()
        )
        busy = self._busy(rows, now)
        # The tick publishes about batch_size messages at most, shared by the rows claimed.
        limit = max(1, self.batch_size // max(1, len(rows)))
        planned = []
        for row in rows:
            offset = jitter_offset(row)
            try:
                spec, tz = spec_of(row), zone(row.timezone)
            except ScheduleError as exc:
                log.error("schedule %s is invalid and is deactivated: %s", row.id, exc)
                planned.append(_Planned(row, Decision((), None, None), offset, "invalid"))
                continue
            policy = Policy(row.catch_up, row.max_catch_up, row.overlap)
            decision = decide(
                spec,
                tz,
                next_slot=_minus(aware(row.next_fire_at), offset),
                pending=aware(row.pending_fire_at),
                now=now - offset,
                grace=self.grace,
                policy=policy,
                busy=row.id in busy,
                end_at=aware(row.end_at),
                limit=limit,
            )
            if row.workflow_id not in active:
                # A paused or archived workflow: its slots pass without firing.
                skipped = len(decision.fire)
                upcoming = next_fire(spec, now - offset, tz) if decision.next_slot is not None else None
                end_at = aware(row.end_at)
                if upcoming is not None and end_at is not None and upcoming > end_at:
                    upcoming = None
                decision = Decision((), upcoming, None, overlapped=skipped)
                planned.append(_Planned(row, decision, offset, "workflow_inactive"))
                continue
            planned.append(_Planned(row, decision, offset))
        return planned

    # ------------------------------------------------------------------ fire

    def _messages(self, planned: Iterable[_Planned], now: dt.datetime) -> list[Outgoing]:
        out = []
        received = now.timestamp()
        for p in planned:
            for index, slot in enumerate(p.decision.fire):
                data: dict[str, Any] = {
                    "schedule_id": str(p.row.id),
                    "schedule_key": p.row.key,
                    "scheduled_for": iso(slot),
                }
                if index == 0 and p.decision.covers:
                    data["missed"] = p.decision.covers
                payload = TriggerPayload(
                    workflow_id=str(p.row.workflow_id),
                    dedup_key=dedup_key(p.row.id, slot),
                    source="schedule",
                    data=data,
                    received_at=received,
                )
                out.append(Outgoing("triggers.start", payload, priority=int(Priority.NORMAL)))
        return out

    def _store(self, planned: Sequence[_Planned], now: dt.datetime) -> None:
        values = []
        for p in planned:
            d, row = p.decision, p.row
            next_due = None if d.next_slot is None else d.next_slot + p.offset
            last = max(d.fire) if d.fire else aware(row.last_fired_at)
            active = row.is_active and p.outcome != "invalid"
            changed = (naive(next_due), naive(d.pending), naive(last), len(d.fire), active) != (
                row.next_fire_at,
                row.pending_fire_at,
                row.last_fired_at,
                0,
                row.is_active,
            )
            if changed:
                values.append((row.id, naive(next_due), naive(d.pending), naive(last), len(d.fire), active))
        if not values:
            return
        stamp = naive(now)
        if is_postgres():
            placeholders = ", ".join(
                ["(%s::uuid, %s::timestamp, %s::timestamp, %s::timestamp, %s::int, %s::boolean)"]
                * len(values)
            )
            # One statement for the whole batch: a row-by-row UPDATE costs a round trip each.
            database.execute_sql(
                "UPDATE schedule AS s SET next_fire_at = v.n, pending_fire_at = v.p, last_fired_at = v.l, "
                "fire_count = s.fire_count + v.c, is_active = v.a, updated_at = %s "
                f"FROM (VALUES {placeholders}) AS v(id, n, p, l, c, a) WHERE s.id = v.id",
                [stamp, *(v for row in values for v in row)],
            )
        else:
            for sid, n, held, last_fired, count, act in values:
                Schedule.update(
                    next_fire_at=n,
                    pending_fire_at=held,
                    last_fired_at=last_fired,
                    fire_count=Schedule.fire_count + count,
                    is_active=act,
                    updated_at=stamp,
                ).where(Schedule.id == sid).execute()

    def tick(self) -> TickResult:
        """Claim one batch of due schedules, publish their fires (confirmed), move them on.

        Returns:
            What the tick did; ``full`` means more rows may be due right now.

        Raises:
            BrokerUnavailable: RabbitMQ did not confirm; the transaction rolled back and
                the same slots fire on a later tick (same dedup keys).
            peewee.DatabaseError: PostgreSQL failed; nothing moved on.
        """
        started = time.perf_counter()
        now = self.clock()
        with database.atomic():
            rows = self._claim(now)
            if not rows:
                return TickResult()
            planned = self._plan(rows, now)
            messages = self._messages(planned, now)
            # The rows move on while RabbitMQ writes the messages; the commit waits for both.
            self.publisher.publish_all(messages, while_waiting=lambda: self._store(planned, now))
            published_at = utcnow()
        TICK_SECONDS.observe(time.perf_counter() - started)
        self._count(planned, published_at, now)
        cutoff = now.astimezone(UTC).replace(tzinfo=None)
        due = len([r for r in rows if r.next_fire_at is not None and r.next_fire_at <= cutoff])
        behind = any(
            p.decision.next_slot is not None and p.decision.next_slot + p.offset <= now for p in planned
        )
        return TickResult(len(rows), len(messages), due >= self.batch_size or behind)

    def _count(self, planned: Sequence[_Planned], published_at: dt.datetime, now: dt.datetime) -> None:
        for p in planned:
            d = p.decision
            if p.outcome == "invalid":
                FIRES.labels("invalid").inc()
                continue
            if p.outcome == "workflow_inactive":
                FIRES.labels("workflow_inactive").inc(d.overlapped)
                continue
            for slot in d.fire:
                due = slot + p.offset
                if now - due <= self.grace:
                    FIRES.labels("fired").inc()
                    FIRE_LAG.observe(max(0.0, (published_at - due).total_seconds()))
                else:
                    FIRES.labels("caught_up").inc()
            if d.missed:
                FIRES.labels("missed").inc(d.missed)
            if d.overlapped:
                FIRES.labels("overlap_dropped").inc(d.overlapped)
            if d.pending is not None and d.pending != aware(p.row.pending_fire_at):
                FIRES.labels("buffered").inc()

    # ------------------------------------------------------------------ loop

    def seconds_until_due(self, cap: float) -> float:
        """Seconds until the earliest active schedule is due (0 if one is due), at most ``cap``."""
        earliest = Schedule.select(peewee.fn.MIN(Schedule.next_fire_at)).where(Schedule.is_active).scalar()
        buffered = (
            Schedule.select(Schedule.id)
            .where(Schedule.is_active & Schedule.pending_fire_at.is_null(False))
            .exists()
        )
        if buffered:
            cap = min(cap, 1.0)  # re-check held-back slots about once a second
        if earliest is None:
            return cap
        return max(0.0, min(cap, (aware(earliest) - self.clock()).total_seconds()))  # type: ignore[operator]

    def run(self, stop: threading.Event, *, tick_seconds: float = 0.2) -> None:
        """Tick until ``stop`` is set: at once while batches are full, else sleep until the
        next due time (at most ``tick_seconds``, so new schedules are seen quickly).

        Database and broker failures are logged and retried with backoff; ``stop`` ends
        the loop after the current transaction.
        """
        backoff = 0.0
        while not stop.is_set():
            try:
                result = self.tick()
                wait = 0.0 if result.full else self.seconds_until_due(tick_seconds)
                backoff = 0.0
            except (peewee.DatabaseError, peewee.InterfaceError, BrokerUnavailable) as exc:
                backoff = min(10.0, max(0.5, backoff * 2))
                log.warning("scheduler tick failed (retrying in %.1f s): %s", backoff, exc)
                with contextlib.suppress(peewee.DatabaseError, peewee.InterfaceError):
                    database.close()
                wait = backoff
            self.publisher.keepalive()
            if wait > 0:
                stop.wait(wait)


def _minus(value: dt.datetime | None, offset: dt.timedelta) -> dt.datetime | None:
    return None if value is None else value - offset
