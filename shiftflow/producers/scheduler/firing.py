"""Catch-up and overlap policies: which slots of one schedule fire now. Pure: no clock, no I/O.

A *slot* is a fire time the spec produces (``kernel.cron.next_fire``). When the
scheduler claims a schedule it looks at the slots from the row's ``next_fire_at`` up to
now. Slots at most ``grace`` old are *on time* and always fire (a scheduler a few
seconds behind is late, not down). Older slots were *missed* (the schedulers were down
or the schedule was paused) and the catch-up policy decides:

* ``NONE`` (skip): missed slots are dropped; the next fire is the next slot.
* ``LATEST`` (run once): if anything was missed, every due slot collapses into one fire,
  for the most recent due slot; ``missed`` in the trigger says how many it stands for.
* ``ALL`` (catch up to N): the most recent ``max_catch_up`` missed slots fire, oldest
  first, then the on-time ones.

The overlap policy then looks at whether the previous run of this schedule is still
going (``busy``: an execution not finished yet, or a fire whose trigger is still queued):

* ``ALLOW``: fire regardless (several runs may overlap).
* ``SKIP``: while busy nothing fires; when idle only the first slot fires (the others
  would overlap it).
* ``BUFFER_ONE``: while busy the first held-back slot is remembered (``pending``) and
  the rest dropped; when idle the pending slot fires first and the next one waits.

The dedup key of a fire is its slot, so recomputing a decision (after a crash between
publish and commit) publishes the same keys again and the trigger actor drops the
duplicates. A recomputation later in time can only add slots that became due meanwhile,
which would have fired anyway.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from shiftflow.kernel.cron import IntervalSpec, Spec, fires_between, next_fire

#: On-time slots fired per claim; more (a 1 s schedule with a grace above 1,000 s) wait
#: for the next claim, which comes at once.
MAX_ON_TIME = 1000
#: Missed slots counted per claim (for the trigger's ``missed`` and the metric).
MAX_COUNTED = 10_000
_TICK = dt.timedelta(microseconds=1)
#: Safety bound on the slots one look-back window enumerates.
_MAX_WINDOW = 1_000_000


@dataclass(frozen=True)
class Policy:
    """A schedule's catch-up and overlap policies (``Schedule`` columns of the same names)."""

    catch_up: str = "LATEST"
    max_catch_up: int = 100
    overlap: str = "ALLOW"


@dataclass(frozen=True)
class Decision:
    """What one claim of a schedule does.

    ``fire``: slots to publish now, oldest first. ``next_slot``: the row's next
    ``next_fire_at`` (None: nothing left). ``pending``: the slot BUFFER_ONE holds back.
    ``missed``: slots dropped by the catch-up policy (counted up to ``MAX_COUNTED``).
    ``overlapped``: slots dropped by the overlap policy.
    """

    fire: tuple[dt.datetime, ...]
    next_slot: dt.datetime | None
    pending: dt.datetime | None
    missed: int = 0
    overlapped: int = 0
    #: How many dropped slots the first fire stands for (LATEST), for the trigger's ``missed``.
    covers: int = 0


def _count(spec: Spec, tz: dt.tzinfo, lo: dt.datetime, hi: dt.datetime) -> int:
    """Slots ``s`` with ``lo <= s < hi`` where ``lo`` is itself a slot (capped for cron)."""
    if hi <= lo:
        return 0
    if isinstance(spec, IntervalSpec):
        return (hi - _TICK - lo) // dt.timedelta(seconds=spec.seconds) + 1
    return 1 + len(fires_between(spec, lo, hi - _TICK, tz, limit=MAX_COUNTED - 1))


def _latest(spec: Spec, tz: dt.tzinfo, lo: dt.datetime, hi: dt.datetime, n: int) -> list[dt.datetime]:
    """The latest ``n`` slots ``s`` with ``lo <= s < hi`` (``lo`` a slot), oldest first.

    Looks back from ``hi`` through a window that grows fourfold until it holds ``n``
    slots, so a long downtime costs about ``4 n`` slot computations, not one per slot.
    """
    if n <= 0 or hi <= lo:
        return []
    window = dt.timedelta(minutes=1)
    while True:
        start = max(lo, hi - window)
        slots = fires_between(spec, start - _TICK, hi - _TICK, tz, limit=_MAX_WINDOW)
        if len(slots) >= n or start == lo:
            return slots[-n:]
        window *= 4


def _due(
    spec: Spec, tz: dt.tzinfo, next_slot: dt.datetime, now: dt.datetime, grace: dt.timedelta, policy: Policy
) -> tuple[list[dt.datetime], int, int, dt.datetime | None]:
    """(slots to fire, missed and dropped, missed slots the first fire covers, next slot)."""
    cutoff = now - grace
    if next_slot >= cutoff:
        on_time = [next_slot, *fires_between(spec, next_slot, now, tz, limit=MAX_ON_TIME)]
        missed = 0
    else:
        first = next_fire(spec, cutoff - _TICK, tz)
        on_time = (
            []
            if first is None or first > now
            else [first, *fires_between(spec, first, now, tz, limit=MAX_ON_TIME)]
        )
        missed = _count(spec, tz, next_slot, cutoff)
    capped = len(on_time) > MAX_ON_TIME
    following = next_fire(spec, on_time[-1] if capped else now, tz)
    if missed == 0 or policy.catch_up == "NONE":
        return on_time, missed, 0, following
    if policy.catch_up == "LATEST":
        last = on_time[-1:] or _latest(spec, tz, next_slot, cutoff, 1)
        dropped = missed + len(on_time) - 1
        return last, dropped, dropped, following
    late = _latest(spec, tz, next_slot, cutoff, policy.max_catch_up)
    return late + on_time, missed - len(late), 0, following


def decide(
    spec: Spec,
    tz: dt.tzinfo,
    *,
    next_slot: dt.datetime | None,
    pending: dt.datetime | None,
    now: dt.datetime,
    grace: dt.timedelta,
    policy: Policy,
    busy: bool,
    end_at: dt.datetime | None = None,
    limit: int = MAX_ON_TIME,
) -> Decision:
    """Decide which slots fire now and where the schedule goes next.

    Parameters:
        spec, tz: the schedule's spec and time zone.
        next_slot: the row's next slot (aware UTC), None when exhausted.
        pending: the slot BUFFER_ONE holds back, if any.
        now: the current instant (aware UTC; minus the schedule's jitter offset).
        grace: how late a slot may be and still count as on time.
        policy: catch-up and overlap policies.
        busy: the previous run of this schedule has not finished (or not started yet).
        end_at: no slot after this instant fires.
        limit: fire at most this many slots now; the rest stay due (``next_slot`` is
            the first of them), so one claim never publishes an unbounded batch.

    Returns:
        The decision; ``fire`` may be empty (nothing due, or everything dropped).
    """
    fire: list[dt.datetime] = []
    missed = covers = 0
    following = next_slot
    if next_slot is not None and next_slot <= now:
        fire, missed, covers, following = _due(spec, tz, next_slot, now, grace, policy)
        if len(fire) > max(1, limit):
            # A replica far behind (or a 1 s schedule after a pause) would otherwise publish
            # every slot of the grace period in one transaction; the rest fire next claim.
            fire = fire[: max(1, limit)]
            following = next_fire(spec, fire[-1], tz)
    if end_at is not None:
        fire = [s for s in fire if s <= end_at]
        if following is not None and following > end_at:
            following = None
    overlapped = 0
    new_pending = pending
    if policy.overlap == "SKIP":
        keep = 0 if busy else 1
        overlapped, fire = max(0, len(fire) - keep), fire[:keep]
    elif policy.overlap == "BUFFER_ONE":
        queue = ([pending] if pending is not None else []) + fire
        if busy:
            # Keep the oldest held-back slot; every other slot due now is dropped.
            new_pending = queue[0] if queue else None
            overlapped = len(fire) - (1 if pending is None and fire else 0)
            fire = []
        else:
            new_pending = queue[1] if len(queue) > 1 else None
            overlapped, fire = max(0, len(queue) - 2), queue[:1]
            if pending is not None and fire and fire[0] == pending:
                covers = 0  # the pending slot stands only for itself
    return Decision(tuple(fire), following, new_pending, missed, overlapped, covers)
