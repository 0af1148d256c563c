"""producers.scheduler.firing: catch-up (skip, run once, catch up to N) and overlap (skip, buffer one, allow)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from shiftflow.kernel.cron import IntervalSpec, OnceSpec, parse
from shiftflow.producers.scheduler.firing import MAX_ON_TIME, Decision, Policy, decide

UTC = dt.UTC
GRACE = dt.timedelta(seconds=60)
MINUTELY = parse("* * * * *")
DEFAULT = Policy()


def t(h: int, m: int, s: int = 0) -> dt.datetime:
    return dt.datetime(2024, 5, 1, h, m, s, tzinfo=UTC)


def run(
    spec=MINUTELY, *, next_slot, now, policy=DEFAULT, busy=False, pending=None, end_at=None, tz=UTC
) -> Decision:
    return decide(
        spec,
        tz,
        next_slot=next_slot,
        pending=pending,
        now=now,
        grace=GRACE,
        policy=policy,
        busy=busy,
        end_at=end_at,
    )


def test_nothing_due_changes_nothing():
    d = run(next_slot=t(10, 1), now=t(10, 0, 59))
    assert d == Decision((), t(10, 1), None)


def test_an_on_time_slot_fires_and_the_next_one_follows():
    d = run(next_slot=t(10, 1), now=t(10, 1, 0))
    assert d.fire == (t(10, 1),) and d.next_slot == t(10, 2) and d.missed == 0


def test_a_late_scheduler_within_grace_fires_every_slot_whatever_the_policy():
    for catch_up in ("NONE", "LATEST", "ALL"):
        d = run(next_slot=t(10, 1), now=t(10, 2, 0), policy=Policy(catch_up=catch_up))
        assert d.fire == (t(10, 1), t(10, 2)), catch_up
        assert d.next_slot == t(10, 3) and d.missed == 0


def test_skip_drops_missed_slots_and_keeps_on_time_ones():
    # Down from 10:00 to 10:10:30: slots 10:01..10:09 are older than the grace, 10:10 is not.
    d = run(next_slot=t(10, 1), now=t(10, 10, 30), policy=Policy(catch_up="NONE"))
    assert d.fire == (t(10, 10),) and d.missed == 9 and d.next_slot == t(10, 11)


def test_run_once_collapses_the_missed_period_into_one_fire():
    d = run(next_slot=t(10, 1), now=t(10, 10, 30), policy=Policy(catch_up="LATEST"))
    assert d.fire == (t(10, 10),) and d.missed == 9 and d.covers == 9 and d.next_slot == t(10, 11)
    # No slot on time: the most recent missed one fires.
    d = run(
        next_slot=t(10, 4), now=t(10, 10, 30), policy=Policy(catch_up="LATEST"), spec=parse("*/4 * * * *")
    )
    # due: 10:04, 10:08 (both missed, 10:12 not yet) -> one fire for 10:08
    assert d.fire == (t(10, 8),) and d.covers == 1 and d.next_slot == t(10, 12)


def test_catch_up_to_n_fires_the_most_recent_n_missed_then_the_on_time_ones():
    d = run(next_slot=t(10, 1), now=t(10, 10, 30), policy=Policy(catch_up="ALL", max_catch_up=3))
    assert d.fire == (t(10, 7), t(10, 8), t(10, 9), t(10, 10))
    assert d.missed == 6 and d.next_slot == t(10, 11)
    d = run(next_slot=t(10, 1), now=t(10, 10, 30), policy=Policy(catch_up="ALL", max_catch_up=100))
    assert d.fire == tuple(t(10, m) for m in range(1, 11)) and d.missed == 0


def test_catch_up_after_a_long_downtime_is_cheap_and_exact():
    every_second = parse("* * * * * *")
    start = t(0, 0)
    now = start + dt.timedelta(days=3)
    d = run(every_second, next_slot=start, now=now, policy=Policy(catch_up="ALL", max_catch_up=5))
    late = [now - GRACE - dt.timedelta(seconds=k) for k in (5, 4, 3, 2, 1)]
    assert list(d.fire[:5]) == late
    assert len(d.fire) == 5 + 61  # and the 61 on-time slots (now - 60 s ... now)
    d = run(IntervalSpec(1), next_slot=start, now=now, policy=Policy(catch_up="NONE"))
    assert d.missed == 3 * 86400 - 60 and len(d.fire) == 61


def test_on_time_slots_are_capped_per_claim_and_the_rest_follow():
    grace = dt.timedelta(hours=1)
    d = decide(
        parse("* * * * * *"),
        UTC,
        next_slot=t(10, 0),
        pending=None,
        now=t(10, 59),
        grace=grace,
        policy=Policy(),
        busy=False,
    )
    assert len(d.fire) == MAX_ON_TIME
    assert d.next_slot == d.fire[-1] + dt.timedelta(seconds=1)


def test_overlap_skip():
    policy = Policy(catch_up="ALL", overlap="SKIP")
    d = run(next_slot=t(10, 1), now=t(10, 2), policy=policy, busy=True)
    assert d.fire == () and d.overlapped == 2 and d.next_slot == t(10, 3)
    d = run(next_slot=t(10, 1), now=t(10, 2), policy=policy, busy=False)
    assert d.fire == (t(10, 1),) and d.overlapped == 1


def test_overlap_buffer_one_holds_the_first_blocked_slot_and_fires_it_when_idle():
    policy = Policy(overlap="BUFFER_ONE")
    d = run(next_slot=t(10, 1), now=t(10, 1), policy=policy, busy=True)
    assert d.fire == () and d.pending == t(10, 1) and d.overlapped == 0 and d.next_slot == t(10, 2)
    d = run(next_slot=t(10, 2), now=t(10, 2), policy=policy, busy=True, pending=t(10, 1))
    assert d.fire == () and d.pending == t(10, 1) and d.overlapped == 1
    # Idle again between slots: the pending slot fires, nothing else is due.
    d = run(next_slot=t(10, 3), now=t(10, 2, 30), policy=policy, busy=False, pending=t(10, 1))
    assert d.fire == (t(10, 1),) and d.pending is None and d.next_slot == t(10, 3)
    # Idle with a pending slot and a new due one: the pending fires, the new one waits.
    d = run(next_slot=t(10, 3), now=t(10, 3), policy=policy, busy=False, pending=t(10, 1))
    assert d.fire == (t(10, 1),) and d.pending == t(10, 3) and d.overlapped == 0


def test_overlap_allow_fires_regardless():
    d = run(next_slot=t(10, 1), now=t(10, 2), policy=Policy(overlap="ALLOW"), busy=True)
    assert d.fire == (t(10, 1), t(10, 2))


def test_end_at_and_one_off_times():
    d = run(next_slot=t(10, 1), now=t(10, 2), end_at=t(10, 1, 30))
    assert d.fire == (t(10, 1),) and d.next_slot is None
    once = OnceSpec(t(9, 0))
    d = run(once, next_slot=t(9, 0), now=t(9, 0, 1))
    assert d.fire == (t(9, 0),) and d.next_slot is None
    d = run(once, next_slot=t(9, 0), now=t(12, 0), policy=Policy(catch_up="NONE"))
    assert d.fire == () and d.missed == 1 and d.next_slot is None


@pytest.mark.parametrize("catch_up", ["NONE", "LATEST", "ALL"])
def test_recomputing_after_a_crash_only_adds_slots_that_became_due(catch_up):
    """Crash window: published at `first`, not committed; another replica recomputes later."""
    policy = Policy(catch_up=catch_up, max_catch_up=3)
    first = run(next_slot=t(10, 1), now=t(10, 10, 30), policy=policy)
    again = run(next_slot=t(10, 1), now=t(10, 11, 5), policy=policy)
    normal_next = run(next_slot=first.next_slot, now=t(10, 11, 5), policy=policy)
    # Publishing `first` then `again` fires exactly what `first` then the normal next claim does.
    assert set(first.fire) | set(again.fire) == set(first.fire) | set(normal_next.fire)


def test_dst_gap_slot_fires_at_the_end_of_the_gap_once():
    berlin = ZoneInfo("Europe/Berlin")
    spec = parse("*/30 * * * *")
    gap_end = dt.datetime(2024, 3, 31, 1, 0, tzinfo=UTC)  # 03:00 CEST
    d = decide(
        spec,
        berlin,
        next_slot=gap_end,
        pending=None,
        now=gap_end + dt.timedelta(seconds=1),
        grace=GRACE,
        policy=Policy(),
        busy=False,
    )
    assert d.fire == (gap_end,) and d.next_slot == gap_end + dt.timedelta(minutes=30)


def test_limit_bounds_one_claim_and_the_rest_stays_due():
    every_second = parse("* * * * * *")
    d = run(every_second, next_slot=t(10, 0, 0), now=t(10, 0, 30), policy=Policy(catch_up="ALL"))
    assert len(d.fire) == 31
    d = decide(
        every_second,
        UTC,
        next_slot=t(10, 0, 0),
        pending=None,
        now=t(10, 0, 30),
        grace=GRACE,
        policy=Policy(catch_up="ALL"),
        busy=False,
        limit=5,
    )
    assert d.fire == tuple(t(10, 0, s) for s in range(5)) and d.next_slot == t(10, 0, 5)
    rest = decide(
        every_second,
        UTC,
        next_slot=d.next_slot,
        pending=None,
        now=t(10, 0, 30),
        grace=GRACE,
        policy=Policy(catch_up="ALL"),
        busy=False,
        limit=100,
    )
    assert rest.fire == tuple(t(10, 0, s) for s in range(5, 31)) and rest.next_slot == t(10, 0, 31)
