"""SIGKILL the worker pool while executions run; the checker counts each trigger once.

``test_sigkill_loop``: a publisher thread sends a few hundred confirmed triggers while
the main thread SIGKILLs the whole worker pool (master, workers, timer fork) at random
moments and restarts it, about a dozen times; then the pool is left to finish. Every
accepted key must be completed once (0 lost, 0 duplicated, 0 unexpected), every
execution SUCCEEDED, and no outside call may arrive after its step was recorded
SUCCEEDED. Set ``SHIFTFLOW_TEST_SEED`` to replay a run's kill schedule.

``test_failpoint_windows``: random kills rarely land in the narrow windows, so failpoints
crash a worker exactly after an outside call (before its commit) and exactly after a
commit (before the publish), once each for two HTTP steps. The numbers are exact: each
after-work crash costs one redelivery and one repeated outside call made before the
step completed; each after-commit crash costs neither.

The checker itself must be able to fail: ``test_checker_*`` feed it histories with each
kind of fault.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .checker import (
    ExecutionRow,
    History,
    OutsideCall,
    StepRow,
    Transition,
    check,
    classify,
    load_history,
)
from .rig import Rig
from .waiting import statuses, wait_terminal
from .workflows import two_call_definition

pytestmark = [pytest.mark.acceptance, pytest.mark.reliability]

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


@pytest.fixture
def rig(real_env: dict[str, str], pg_url: str, tmp_path: Path) -> Iterator[Rig]:
    with Rig(real_env, pg_url, tmp_path / "logs") as made:
        yield made


@pytest.mark.timeout(300)
def test_sigkill_loop(rig: Rig) -> None:
    seed = int(os.environ.get("SHIFTFLOW_TEST_SEED") or time.time_ns() % 1_000_000)
    rnd = random.Random(seed)
    total, kills = 200, 10
    # A step in flight at every kill must not be taken for a poison message here: this
    # test is about loss and duplication; test_quarantine covers the delivery limit.
    env = {**rig.env, "SHIFTFLOW_DELIVERY_LIMIT": str(kills + 2)}
    workflow = rig.workflow(two_call_definition("sigkill", rig.service.url))
    pool = rig.pool(env, processes=2, threads=4)
    pool.start()
    pool.wait_ready()

    def publish() -> None:
        # Spread over the kill loop, so kills land while triggers and steps are in flight.
        for n in range(total):
            rig.publisher.trigger(workflow, f"k-{n:04d}", {"n": n})
            time.sleep(0.1)

    sender = threading.Thread(target=publish, name="publisher")
    started = time.monotonic()
    sender.start()
    in_flight_at_kill: list[int] = []
    kill_times: list[dt.datetime] = []
    try:
        for _ in range(kills):
            time.sleep(rnd.uniform(0.3, 1.5))
            found = statuses(rig.pg_url, list(rig.publisher.accepted))
            in_flight_at_kill.append(sum(1 for s in found.values() if s not in TERMINAL))
            kill_times.append(dt.datetime.now(dt.UTC).replace(tzinfo=None))
            pool.kill()
            pool.start()
            pool.wait_ready()
    finally:
        sender.join(120)
    killing_took = time.monotonic() - started
    accepted = list(rig.publisher.accepted)
    assert len(accepted) == total and rig.publisher.refused == 0, (len(accepted), rig.publisher.refused)

    wait_terminal(rig.pg_url, accepted, pool, stall=60)
    history = load_history(rig.pg_url, rig.service.recorded())
    report = classify(accepted, history)
    print(
        f"\nseed={seed} kills={pool.kills} boot_seconds={pool.boot_seconds} killing_took={killing_took:.1f}s "
        f"total={time.monotonic() - started:.1f}s executions_in_flight_at_each_kill={in_flight_at_kill}"
    )
    print(report.summary())
    for step in history.steps:
        if step.attempts >= 3:  # show how a step came to be delivered that often
            claims = [
                t.at.time().isoformat()
                for t in history.transitions
                if t.row_id == step.id and t.attempts and t.new_status == "RUNNING"
            ]
            print(
                f"  step {step.step_id} of {step.execution_id}: attempts={step.attempts} claims={claims} "
                f"kills={[k.time().isoformat() for k in kill_times]}"
            )

    assert report.counts == {"completed_once": total, "lost": 0, "duplicated": 0, "unexpected": 0}, (
        report.problems()
    )
    assert report.statuses == {"SUCCEEDED": total}, report.problems()
    assert report.late_calls == [] and report.stray_calls == []
    # Every outside step made at least one call; the extras are the at-least-once retries.
    assert len(rig.service.recorded()) == 2 * total + report.at_least_once_calls
    assert pool.kills == kills
    # The kills must have hit work in flight, or this test proved nothing.
    assert sum(in_flight_at_kill) > 0, in_flight_at_kill


@pytest.mark.timeout(240)
def test_failpoint_windows(rig: Rig, tmp_path: Path) -> None:
    """Crash exactly after the outside call and exactly after the commit, once each, for
    both HTTP steps; every execution still completes once."""
    marks = tmp_path / "failpoints"
    marks.mkdir()
    points = [
        "step.after_work:call",
        "step.after_commit:call",
        "step.after_work:confirm",
        "step.after_commit:confirm",
    ]
    env = {
        **rig.env,
        "SHIFTFLOW_FAILPOINTS": ",".join(f"{p}=exit-once" for p in points),
        "SHIFTFLOW_FAILPOINT_DIR": str(marks),
    }
    total = 12
    workflow = rig.workflow(two_call_definition("failpoints", rig.service.url))
    # One thread per process: a crash then takes only its own message down, so the
    # counts below are exact (test_quarantine shows what threads > 1 change).
    pool = rig.pool(env, processes=2, threads=1)
    pool.start()
    pool.wait_ready()
    with pool.supervised():
        for n in range(total):
            assert rig.publisher.trigger(workflow, f"f-{n:03d}", {"n": n})
        wait_terminal(rig.pg_url, rig.publisher.accepted, pool, stall=60)
    report = check(rig.pg_url, rig.publisher.accepted, rig.service.recorded())
    print(f"\nprocess deaths={pool.deaths()} boot_seconds={pool.boot_seconds} {report.summary()}")

    fired = sorted(p.name for p in marks.iterdir())
    assert fired == sorted("failpoint-" + p.replace(":", "_") for p in points)
    assert pool.deaths() and all(code == 137 for code in pool.deaths()), pool.deaths()
    assert report.counts == {"completed_once": total, "lost": 0, "duplicated": 0, "unexpected": 0}, (
        report.problems()
    )
    assert report.statuses == {"SUCCEEDED": total}
    assert report.late_calls == []
    # After-work crashes: the call was made, the commit was not: one redelivery and one
    # repeated call each. After-commit crashes: the redelivery finds the step done and
    # only re-publishes what follows (no attempt counted, no call).
    assert report.redeliveries == 2
    assert report.at_least_once_calls == 2
    assert len(rig.service.recorded()) == 2 * total + 2



@pytest.mark.timeout(300)
def test_kill_between_chained_steps(rig: Rig, tmp_path: Path) -> None:
    """A worker runs the next step of the same queue itself (no message of its own); killed
    after the first step committed and before the next one is claimed, the first step's
    message comes back, finds its step done and re-publishes the next one: every execution
    still completes once, with no outside call repeated and no delivery lost."""
    marks = tmp_path / "failpoints"
    marks.mkdir()
    env = {
        **rig.env,
        "SHIFTFLOW_FAILPOINTS": "step.before_continue:confirm=exit-once",
        "SHIFTFLOW_FAILPOINT_DIR": str(marks),
    }
    total = 8
    workflow = rig.workflow(two_call_definition("chained", rig.service.url))
    pool = rig.pool(env, processes=2, threads=1)
    pool.start()
    pool.wait_ready()
    with pool.supervised():
        for n in range(total):
            assert rig.publisher.trigger(workflow, f"c-{n:03d}", {"n": n})
        wait_terminal(rig.pg_url, rig.publisher.accepted, pool, stall=60)
    report = check(rig.pg_url, rig.publisher.accepted, rig.service.recorded())
    print(f"\nprocess deaths={pool.deaths()} {report.summary()}")
    assert [p.name for p in marks.iterdir()] == ["failpoint-step.before_continue_confirm"]
    assert pool.deaths() and all(code == 137 for code in pool.deaths()), pool.deaths()
    assert report.counts == {"completed_once": total, "lost": 0, "duplicated": 0, "unexpected": 0}, (
        report.problems()
    )
    assert report.statuses == {"SUCCEEDED": total}
    assert report.late_calls == []
    assert report.redeliveries == 0  # the next step was never claimed before the kill
    assert report.at_least_once_calls == 0
    assert len(rig.service.recorded()) == 2 * total


# --------------------------------------------------------------------------- the checker can fail

T0 = dt.datetime(2025, 1, 1, 12, 0, 0)


def _history() -> History:
    """Two accepted keys, each completed once with one outside call."""
    history = History()
    for n in (1, 2):
        eid = f"e{n}"
        history.executions.append(ExecutionRow(eid, f"k{n}", "SUCCEEDED"))
        history.steps.append(
            StepRow(f"s{n}", eid, "call", 0, "SUCCEEDED", 1, 0, T0 + dt.timedelta(seconds=1))
        )
        history.transitions += [
            Transition("step", f"s{n}", eid, "call", 0, None, "PENDING", T0),
            Transition("step", f"s{n}", eid, "call", 0, "PENDING", "RUNNING", T0),
            Transition("step", f"s{n}", eid, "call", 0, "RUNNING", "SUCCEEDED", T0 + dt.timedelta(seconds=1)),
        ]
        history.calls.append(OutsideCall(eid, "call", T0 + dt.timedelta(milliseconds=500)))
    return history


def test_checker_accepts_a_clean_history() -> None:
    report = classify(["k1", "k2"], _history())
    assert report.counts == {"completed_once": 2, "lost": 0, "duplicated": 0, "unexpected": 0}
    assert report.statuses == {"SUCCEEDED": 2}


def test_checker_finds_lost_and_unexpected_keys() -> None:
    history = _history()
    history.executions[1] = ExecutionRow("e2", "k2", "RUNNING")
    report = classify(["k1", "k2", "k3"], history)
    assert report.keys("lost") == ["k2", "k3"]
    report = classify(["k1"], _history())
    assert report.keys("unexpected") == ["k2"]


def test_checker_finds_duplicates() -> None:
    two_executions = _history()
    two_executions.executions.append(ExecutionRow("e3", "k1", "SUCCEEDED"))
    assert classify(["k1", "k2"], two_executions).keys("duplicated") == ["k1"]

    succeeded_twice = _history()
    succeeded_twice.transitions.append(Transition("step", "s2", "e2", "call", 0, "RUNNING", "SUCCEEDED", T0))
    report = classify(["k1", "k2"], succeeded_twice)
    assert report.keys("duplicated") == ["k2"]
    assert "entered SUCCEEDED 2 times" in report.problems()[0]

    late_call = _history()
    late_call.calls.append(OutsideCall("e1", "call", T0 + dt.timedelta(seconds=2)))
    report = classify(["k1", "k2"], late_call)
    assert report.keys("duplicated") == ["k1"] and len(report.late_calls) == 1


def test_checker_counts_calls_before_completion_as_at_least_once() -> None:
    history = _history()
    history.calls.append(OutsideCall("e1", "call", T0 + dt.timedelta(milliseconds=800)))
    history.steps[0] = StepRow("s1", "e1", "call", 0, "SUCCEEDED", 2, 0, T0 + dt.timedelta(seconds=1))
    report = classify(["k1", "k2"], history)
    assert report.counts["completed_once"] == 2
    assert report.at_least_once_calls == 1 and report.redeliveries == 1 and report.max_attempts == 2
