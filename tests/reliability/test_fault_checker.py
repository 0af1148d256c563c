"""The fault checker must be able to fail: each number of its table, fed a history with
that fault. And the sender must sign as Standard Webhooks senders do. No servers."""

from __future__ import annotations

import datetime as dt

import pytest
import standardwebhooks

from .counting import Call
from .fault_checker import Numbers, Snapshot, check, dedup_key, format_table
from .sender import Answer, Delivery, Ledger, sign

pytestmark = pytest.mark.reliability

T0 = 1_800_000_000.0


def _ledger(*ids: str, status: int = 202) -> Ledger:
    ledger = Ledger()
    for n, delivery_id in enumerate(ids):
        ledger.deliveries[delivery_id] = Delivery(delivery_id, b"{}")
        ledger.add(Answer(delivery_id, status, T0 + n))
    return ledger


def _clean() -> tuple[Ledger, Snapshot, list[Call]]:
    """Two deliveries, each one SUCCEEDED execution with two recorded calls."""
    ledger = _ledger("a", "b")
    snapshot = Snapshot([], [], [], [], [])
    calls = []
    for delivery_id in ("a", "b"):
        eid = f"e-{delivery_id}"
        snapshot.executions.append((eid, dedup_key(delivery_id), "SUCCEEDED", None))
        for step in ("call", "confirm"):
            snapshot.steps.append((eid, step, "SUCCEEDED", None))
            snapshot.effects.append((eid, step, "DONE", T0, T0 + 1))
            calls.append(Call(eid, step, T0 + 0.5, True))
    return ledger, snapshot, calls


def _run(ledger: Ledger, snapshot: Snapshot, calls: list[Call], listed=frozenset(), deaths=()) -> Numbers:
    numbers = check("t", ledger, snapshot, calls, set(listed), list(deaths))
    numbers.drain_seconds = 1.0
    return numbers


def test_a_clean_history_passes() -> None:
    numbers = _run(*_clean())
    assert numbers.passed, numbers.report()
    assert (numbers.accepted, numbers.succeeded, numbers.calls) == (2, 2, 4)
    assert "yes" in format_table([numbers])


def test_lost_unless_dead_lettered() -> None:
    ledger, snapshot, calls = _clean()
    snapshot.executions.pop()
    assert _run(ledger, snapshot, calls).lost == 1
    snapshot.dead_letters.append('{"kwargs": {"payload": {"dedup_key": "standard:b"}}} trigger failed')
    numbers = _run(ledger, snapshot, calls)
    assert (numbers.lost, numbers.dead_lettered) == (0, 1) and numbers.passed


def test_duplicated_executions_and_doubled_transitions() -> None:
    ledger, snapshot, calls = _clean()
    snapshot.executions.append(("e-a2", dedup_key("a"), "SUCCEEDED", None))
    assert _run(ledger, snapshot, calls).duplicated == 1
    ledger, snapshot, calls = _clean()
    snapshot.doubled.append("step e-a call entered SUCCEEDED 2 times")
    numbers = _run(ledger, snapshot, calls)
    assert numbers.duplicated == 1 and not numbers.passed


def test_repeated_calls() -> None:
    ledger, snapshot, calls = _clean()
    calls.append(Call("e-a", "call", T0 + 2, True))
    numbers = _run(ledger, snapshot, calls)
    assert numbers.repeated == 1 and "1 repeated calls" in numbers.problems()


def test_a_failure_with_its_outcome_recorded_is_false() -> None:
    ledger, snapshot, calls = _clean()
    snapshot.executions[0] = ("e-a", dedup_key("a"), "FAILED", "step call: outcome unknown")
    numbers = _run(ledger, snapshot, calls)
    assert numbers.false_failures == 1 and numbers.unknown_left == 0


def test_a_timeout_of_a_call_never_made_is_false() -> None:
    ledger, snapshot, calls = _clean()
    snapshot.executions[0] = ("e-a", dedup_key("a"), "TIMED_OUT", None)
    del snapshot.effects[0:2]
    calls = [c for c in calls if c.execution_id != "e-a"]
    assert _run(ledger, snapshot, calls).false_failures == 1


def test_an_unknown_outcome_is_excused_only_by_a_death_and_passes_only_when_listed() -> None:
    ledger, snapshot, calls = _clean()
    snapshot.executions[0] = ("e-a", dedup_key("a"), "FAILED", "outcome unknown")
    snapshot.effects[1] = ("e-a", "confirm", "UNKNOWN", T0, T0 + 5)
    alive = _run(ledger, snapshot, calls)
    assert (alive.false_failures, alive.unknown_left, alive.unknown_listed) == (1, 1, 0)
    killed = _run(ledger, snapshot, calls, deaths=[T0 + 3])
    assert (killed.false_failures, killed.unknown_left, killed.unknown_listed) == (0, 1, 0)
    assert not killed.passed
    listed = _run(ledger, snapshot, calls, listed={("e-a", "confirm")}, deaths=[T0 + 3])
    assert listed.passed, listed.report()
    long_before = _run(ledger, snapshot, calls, listed={("e-a", "confirm")}, deaths=[T0 - 60])
    assert long_before.false_failures == 1


def test_an_execution_parked_on_a_listed_unknown_outcome_is_not_unfinished() -> None:
    import dataclasses

    ledger, snapshot, calls = _clean()
    snapshot.executions[0] = ("e-a", dedup_key("a"), "RUNNING", "outcome unknown: settle it")
    snapshot.steps[1] = ("e-a", "confirm", "WAITING", None)
    snapshot.effects[1] = ("e-a", "confirm", "UNKNOWN", T0, T0 + 5)
    parked = dataclasses.replace(snapshot, parked=frozenset({"e-a"}))
    numbers = _run(ledger, parked, calls, listed={("e-a", "confirm")}, deaths=[T0 + 3])
    assert (numbers.unfinished, numbers.parked) == (0, 1) and numbers.passed, numbers.report()
    unlisted = _run(ledger, parked, calls, deaths=[T0 + 3])
    assert not unlisted.passed  # parked, but no operator would find it


def test_a_record_left_sending_after_success_is_an_unknown_left() -> None:
    ledger, snapshot, calls = _clean()
    snapshot.effects[0] = ("e-a", "call", "SENDING", T0, T0)
    numbers = _run(ledger, snapshot, calls)
    assert numbers.unknown_left == 1 and numbers.false_failures == 0 and not numbers.passed


def test_unfinished_server_errors_gave_up_and_drain() -> None:
    ledger, snapshot, calls = _clean()
    snapshot.executions[0] = ("e-a", dedup_key("a"), "RUNNING", None)
    assert _run(ledger, snapshot, calls).unfinished == 1

    ledger, snapshot, calls = _clean()
    ledger.deliveries["c"] = Delivery("c", b"{}")
    ledger.add(Answer("c", 500, T0, "internal error"))
    ledger.gave_up.add("c")
    numbers = _run(ledger, snapshot, calls)
    assert (numbers.server_errors, numbers.gave_up) == (1, 1)

    ledger, snapshot, calls = _clean()
    numbers = _run(ledger, snapshot, calls)
    numbers.drain_seconds = None
    assert numbers.problems() == ["not drained within 120 s of the fault's end"]


def test_refused_deliveries_are_owed_nothing() -> None:
    ledger, snapshot, calls = _clean()
    ledger.deliveries["bad"] = Delivery("bad", b"[1]", "poison:array")
    ledger.add(Answer("bad", 422, T0, "body must be a JSON object"))
    numbers = _run(ledger, snapshot, calls)
    assert numbers.refused == 1 and numbers.passed


def test_sender_signs_like_the_library() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = '{"x": "\u2603"}'
    library = standardwebhooks.Webhook(secret).sign("msg_1", dt.datetime.fromtimestamp(1_700_000_000, dt.UTC), body)
    assert sign(secret, "msg_1", 1_700_000_000, body.encode()) == library
