"""SIGKILL the worker pool while the items of a ``for_each`` fan-out are in flight.

The workflow is the engine benchmark's fan-out (``bench/engine_systems.py``, workload
``fanout``): one ``http`` step with ``for_each`` over 20 items, all 20 at once, then a
join (a transform collecting the items' outputs). Here each item's call is ``effect:
once`` and POSTs to the rig's counting service naming its execution and item, and the
service answers slowly, so the pool (process group) is SIGKILLed twice while item calls
are being answered; it is restarted each time and left to finish.

What the engine does after such a kill (``models.engine.call_once``, per item: the
ledger is keyed by execution, step and iteration): an item whose call was cut has its
effect SENDING; its redelivered message marks it UNKNOWN and parks that item WAITING
for an operator (the execution waits with it, no item is sent twice by itself). The
test then plays the operator like ``test_tool_sigkill.py``: an item the service did
receive is settled ``--done`` with the answer the service gave, one it never received
``--retry``.

Asserted: the reliability checker finds every execution completed exactly once (no
execution, item or join recorded twice, no call after its item completed), every
execution SUCCEEDED; the service received each (execution, item) at most once before
the operator and exactly once in the end; and each execution's join saw the 20 items
exactly once each, in order. The run adds its row to the scenario table.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.support.waiting import wait_until

from .checker import OutsideCall, check
from .fault_checker import Numbers, operator_unknowns
from .processes import SHIFTFLOW
from .rig import Rig
from .scenarios import RESULTS
from .waiting import wait_terminal

pytestmark = [pytest.mark.acceptance, pytest.mark.reliability]

#: Executions, items per execution, kills of the pool: small enough for about a minute.
BATCH, ITEMS, KILLS = 8, 20, 2
#: Seconds the service takes to answer an item's call (the window a kill lands in).
DELAY = 0.4
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


def fanout_definition(url: str) -> dict[str, Any]:
    """The benchmark's fan-out with ``effect: once`` item calls naming execution and item
    (the items are 1..20, so an item's value is its iteration), then the join."""
    return {
        "name": "fanout-kill",
        "trigger": {"type": "manual"},
        "vars": {"url": url},
        "steps": [
            {"id": "calls", "type": "http", "effect": "once", "timeout": 10,
             "for_each": list(range(1, ITEMS + 1)), "concurrency": ITEMS,
             "with": {"method": "POST", "url": "{{ vars.url }}",
                      "json": {"execution": "{{ execution.id }}", "step": "calls", "iteration": "{{ item }}"}}},
            {"id": "join", "type": "transform", "with": {"output": {"items": "{{ steps.calls.output }}"}}},
        ],
    }


def _query(pg_url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(pg_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def _parked(pg_url: str) -> list[tuple[str, int]]:
    """(execution id, iteration) of every item waiting for an operator on an unknown outcome."""
    return [(str(e), int(i)) for e, i in _query(
        pg_url, "SELECT execution_id, iteration FROM step_execution "
                "WHERE status = 'WAITING' AND wait_key LIKE 'effect:%%'")]


def _unknown_effects(pg_url: str) -> list[tuple[str, str, int]]:
    """(effect id, execution id, iteration) of every effect whose outcome is unknown."""
    return [(str(i), str(e), int(n)) for i, e, n in
            _query(pg_url, "SELECT id, execution_id, iteration FROM side_effect WHERE state = 'UNKNOWN'")]


def _settled_or_parked(pg_url: str) -> bool:
    """Every execution terminal, or waiting on an item parked for an operator, and no step
    left to run (a cut item still RUNNING under its dead holder may park later)."""
    waiting = {e for e, _ in _parked(pg_url)}
    rows = _query(pg_url, "SELECT id, status FROM execution")
    open_steps = _query(pg_url, "SELECT count(*) FROM step_execution WHERE status IN ('PENDING', 'QUEUED', 'RUNNING')")
    return (len(rows) == BATCH and all(s in TERMINAL or str(i) in waiting for i, s in rows)
            and open_steps[0][0] == 0)


def _settle(env: dict[str, str], effect_id: str, *how: str) -> None:
    result = subprocess.run([SHIFTFLOW, "effects", "settle", effect_id, *how, "--by", "reliability-test"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _joined(pg_url: str) -> dict[str, list[Any]]:
    """Each execution's join output: the item each collected output echoes, in order."""
    out: dict[str, list[Any]] = {}
    for execution_id, output in _query(pg_url, "SELECT execution_id, output FROM step_execution "
                                               "WHERE step_id = 'join' AND status = 'SUCCEEDED'"):
        items = (output or {}).get("items") or []
        out[str(execution_id)] = [((i or {}).get("json") or {}).get("echo", {}).get("iteration") for i in items]
    return out


@pytest.fixture
def rig(real_env: dict[str, str], pg_url: str, tmp_path: Path) -> Iterator[Rig]:
    with Rig(real_env, pg_url, tmp_path / "logs", delay=DELAY) as made:
        yield made


@pytest.mark.timeout(180)
def test_sigkill_during_fanout(rig: Rig) -> None:
    started = time.monotonic()
    env = {
        **rig.env,
        # A holder killed with its process is taken over within seconds, not half a minute.
        "SHIFTFLOW_CLAIM_LEASE_SECONDS": "3",
        # A step in flight at a kill is not a poison message (test_quarantine covers that).
        "SHIFTFLOW_DELIVERY_LIMIT": "10",
    }
    service = rig.service
    workflow = rig.workflow(fanout_definition(service.url))
    pool = rig.pool(env, processes=2, threads=4)
    pool.start()
    pool.wait_ready(60)
    for n in range(BATCH):
        assert rig.publisher.trigger(workflow, f"fan-{n:02d}", {"n": n})
    keys = list(rig.publisher.accepted)

    # Kill at about a third and two thirds of the item calls, while some are being answered.
    in_flight_at_kill: list[int] = []
    calls_at_kill: list[int] = []
    for k in range(1, KILLS + 1):
        wanted = k * BATCH * ITEMS // (KILLS + 1)
        wait_until(lambda: len(service.recorded()) >= wanted and service.in_flight > 0,  # noqa: B023
                   timeout=90, interval=0.02, message=f"{wanted} item calls made, one in flight")
        time.sleep(random.uniform(0.02, 0.15))
        in_flight_at_kill.append(service.in_flight)
        calls_at_kill.append(len(service.recorded()))
        pool.kill()
        pool.start()
        pool.wait_ready(60)
    fault_end = time.monotonic()

    wait_until(lambda: _settled_or_parked(rig.pg_url), timeout=120, interval=0.25,
               message="every execution finished or waiting for an operator")
    seen_before = Counter((c.execution_id, c.iteration) for c in service.recorded())
    unknown = _unknown_effects(rig.pg_url)
    parked = _parked(rig.pg_url)
    listed, how_listed = operator_unknowns(env)

    def operate(effect: tuple[str, str, int]) -> str:
        # The operator looks at the far side: received means done (with its answer), never
        # received means send it.
        effect_id, execution_id, iteration = effect
        if seen_before[(execution_id, iteration)]:
            echo = {"execution": execution_id, "step": "calls", "iteration": iteration}
            _settle(env, effect_id, "--done", "--result", json.dumps({"status": 200, "json": {"ok": True,
                                                                                               "echo": echo}}))
            return "done"
        _settle(env, effect_id, "--retry")
        return "retry"

    with ThreadPoolExecutor(4) as operators:
        settled = Counter(operators.map(operate, unknown))
    wait_terminal(rig.pg_url, keys, pool, stall=60)
    drained = time.monotonic() - fault_end

    calls: list[OutsideCall] = service.recorded()
    per_item = Counter((c.execution_id, c.iteration) for c in calls)
    report = check(rig.pg_url, keys, calls)
    ids = {str(r[0]) for r in _query(rig.pg_url, "SELECT id FROM execution")}
    joined = _joined(rig.pg_url)
    wrong_joins = {e: items for e, items in joined.items() if items != list(range(1, ITEMS + 1))}
    numbers = Numbers(
        "kill_fanout", deliveries=BATCH, accepted=len(keys),
        lost=report.counts["lost"], duplicated=report.counts["duplicated"],
        repeated=sum(n - 1 for n in per_item.values() if n > 1),
        false_failures=sum(n for s, n in report.statuses.items() if s != "SUCCEEDED"),
        unknown_left=len(unknown), unknown_listed=sum(1 for _, e, _ in unknown if (e, "calls") in listed),
        parked=len({e for e, _ in parked}), succeeded=report.statuses.get("SUCCEEDED", 0), calls=len(calls),
        drain_seconds=drained, seconds=time.monotonic() - started,
    )
    for execution_id, step_id, iteration, status, error in _query(
            rig.pg_url, "SELECT execution_id, step_id, iteration, status, error FROM step_execution "
                        "WHERE status NOT IN ('SUCCEEDED') ORDER BY execution_id, iteration"):
        numbers.example("not succeeded", f"{execution_id} {step_id}#{iteration} {status}: {error}")
    if wrong_joins:
        numbers.extra_problems.append(f"{len(wrong_joins)} joins did not see items 1..{ITEMS} once each")
    numbers.notes += [
        f"for_each over {ITEMS} effect-once http items x {BATCH}: kills={pool.kills} item calls at each "
        f"kill={calls_at_kill} in flight={in_flight_at_kill} boot_seconds={pool.boot_seconds}",
        f"item calls={len(calls)} for {len(per_item)} items, max per item={max(per_item.values(), default=0)}, "
        f"before the operator={sum(seen_before.values())}; parked items={len(parked)} unknown effects="
        f"{len(unknown)} (listed by {how_listed}); settled {dict(settled)}; redeliveries={report.redeliveries}",
    ]
    RESULTS.append(numbers)
    print("\n" + numbers.report() + "\n" + report.summary())

    assert report.counts == {"completed_once": BATCH, "lost": 0, "duplicated": 0, "unexpected": 0}, \
        report.problems()
    assert report.statuses == {"SUCCEEDED": BATCH}, report.problems()
    assert report.late_calls == [] and report.stray_calls == []
    assert pool.kills == KILLS and all(in_flight_at_kill), in_flight_at_kill
    # Never repeated blindly: at most one call per item before the operator, and every
    # item cut by a kill became an unknown outcome parked for a person.
    assert max(seen_before.values()) <= 1, [k for k, n in seen_before.items() if n > 1]
    assert unknown and sorted(parked) == sorted((e, i) for _, e, i in unknown), (unknown, parked)
    # After the operator: each item's effect happened exactly once.
    assert set(per_item) == {(e, i) for e in ids for i in range(1, ITEMS + 1)}
    assert set(per_item.values()) == {1}, [k for k, n in per_item.items() if n != 1]
    # Each join saw every item exactly once, in order.
    assert set(joined) == ids and not wrong_joins, wrong_joins
    assert numbers.passed, numbers.report()


def test_checker_judges_each_item() -> None:
    """The checker tells a fan-out's items apart: a second call for one item is an
    at-least-once repeat of that item, a call after its item completed is late."""
    import datetime as dt

    from .checker import ExecutionRow, History, StepRow, classify

    t0 = dt.datetime(2025, 1, 1, 12)
    history = History(
        executions=[ExecutionRow("e1", "k1", "SUCCEEDED")],
        steps=[StepRow("h", "e1", "calls", 0, "SUCCEEDED", 1, 0, t0 + dt.timedelta(seconds=9))]
        + [StepRow(f"i{n}", "e1", "calls", n, "SUCCEEDED", 1, 0, t0 + dt.timedelta(seconds=n)) for n in (1, 2)],
        calls=[OutsideCall("e1", "calls", t0, 1), OutsideCall("e1", "calls", t0, 2)],
    )
    clean = classify(["k1"], history)
    assert clean.counts["completed_once"] == 1 and clean.at_least_once_calls == 0

    history.calls.append(OutsideCall("e1", "calls", t0 + dt.timedelta(milliseconds=500), 2))
    assert classify(["k1"], history).at_least_once_calls == 1

    # Before the header completed but after its own item did: a repeated item.
    history.calls.append(OutsideCall("e1", "calls", t0 + dt.timedelta(seconds=5), 1))
    late = classify(["k1"], history)
    assert late.keys("duplicated") == ["k1"] and len(late.late_calls) == 1
