"""A trigger message that kills its worker is quarantined after SHIFTFLOW_DELIVERY_LIMIT
deliveries, without taking a neighbour with it.

The poison is a real process death before the execution exists: the failpoint
``trigger.before_start:poison-t=exit`` makes the worker ``os._exit(137)`` every time it
starts the trigger with that dedup key. Steps count their deliveries on their row; a
trigger has none yet, so it counts redeliveries in ``trigger_delivery``
(``models.engine.run_trigger``). Without that, the poison would kill its worker process forever.

``test_poison_trigger_is_quarantined``: a worker process dies at most LIMIT times, then the
trigger is stored as a dead letter with the reason and acknowledged; no execution exists
for it; other triggers published before, during and after all complete once; the pool
stays up.

``test_poison_trigger_does_not_quarantine_its_neighbour``: an innocent trigger in flight
beside the poison (one process, two threads; the innocent held 3 s by a failpoint sleep)
dies with it and comes back redelivered; it then runs alone, completes, and is charged
one redelivery, while the poison alone reaches the limit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.support.waiting import wait_until

from .checker import check
from .rig import Rig, run_beside_poison
from .waiting import wait_terminal

pytestmark = [pytest.mark.acceptance, pytest.mark.reliability]

LIMIT = 3


def _cheap(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "trigger": {"type": "manual"},
        "steps": [
            {"id": "check", "type": "condition", "with": {"left": "{{ trigger.n }}", "op": ">=", "right": 0}},
            {"id": "shape", "type": "transform", "with": {"output": {"n": "{{ trigger.n }}"}}},
        ],
    }


def _query(pg_url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(pg_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def _dead_letter(pg_url: str, key: str) -> tuple[str, str] | None:
    rows = _query(
        pg_url,
        "SELECT actor, error FROM dead_letter WHERE payload -> 'kwargs' -> 'payload' ->> 'dedup_key' = %s",
        key,
    )
    return rows[0] if rows else None


def _deliveries(pg_url: str, key: str) -> int | None:
    rows = _query(pg_url, "SELECT deliveries FROM trigger_delivery WHERE dedup_key = %s", key)
    return rows[0][0] if rows else None


@pytest.fixture
def rig(real_env: dict[str, str], pg_url: str, tmp_path: Path) -> Iterator[Rig]:
    extra = {"SHIFTFLOW_DELIVERY_LIMIT": str(LIMIT), "SHIFTFLOW_FAILPOINTS": "trigger.before_start:poison-t=exit"}
    with Rig(real_env, pg_url, tmp_path / "logs", extra_env=extra) as made:
        yield made


@pytest.mark.timeout(240)
def test_poison_trigger_is_quarantined(rig: Rig) -> None:
    poison = rig.workflow(_cheap("poison"))
    steady = rig.workflow(_cheap("steady"))
    pool = rig.pool(processes=2, threads=1)
    pool.start()
    pool.wait_ready()
    keys, letter = run_beside_poison(rig, pool, steady, poison, "poison-t", lambda: _dead_letter(rig.pg_url, "poison-t"))
    report = check(rig.pg_url, keys, rig.service.recorded())
    print(f"\nprocess deaths={pool.deaths()} letter={letter}\n{report.summary()}")

    # Every delivery before the quarantine killed a worker process (one pool exit may
    # stand for two deaths, when the second process took the requeued poison first).
    assert 1 <= len(pool.deaths()) <= LIMIT and set(pool.deaths()) == {137}, pool.deaths()
    actor, error = letter
    assert actor == "triggers.start"
    assert error == f"quarantined: trigger delivered {LIMIT + 1} times without finishing (limit {LIMIT})"
    assert _deliveries(rig.pg_url, "poison-t") == LIMIT + 1
    assert _query(rig.pg_url, "SELECT count(*) FROM execution WHERE dedup_key = 'poison-t'") == [(0,)]
    assert report.counts == {"completed_once": len(keys), "lost": 0, "duplicated": 0, "unexpected": 0}, (
        report.problems()
    )
    assert report.statuses == {"SUCCEEDED": len(keys)}


@pytest.mark.timeout(240)
def test_poison_trigger_does_not_quarantine_its_neighbour(
    real_env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    extra = {
        "SHIFTFLOW_DELIVERY_LIMIT": str(LIMIT),
        "SHIFTFLOW_FAILPOINTS": "trigger.before_start:poison-t=exit,trigger.before_start:innocent=sleep=3",
    }
    with Rig(real_env, pg_url, tmp_path / "logs", extra_env=extra) as rig:
        poison = rig.workflow(_cheap("poison"))
        innocent = rig.workflow(_cheap("innocent"))
        pool = rig.pool(processes=1, threads=2)
        pool.start()
        pool.wait_ready()
        with pool.supervised():
            assert rig.publisher.trigger(innocent, "innocent", {"n": 1})
            time.sleep(0.5)  # the innocent is in its 3 s sleep when the poison arrives
            assert rig.publisher.trigger(poison, "poison-t", {"n": 1})
            wait_terminal(pg_url, ["innocent"], pool, stall=120)
            letter = wait_until(lambda: _dead_letter(pg_url, "poison-t"), timeout=120, interval=0.2)
        print(f"\nprocess deaths={pool.deaths()} letter={letter}")

    assert _query(pg_url, "SELECT status FROM execution WHERE dedup_key = 'innocent'") == [("SUCCEEDED",)]
    assert _deliveries(pg_url, "innocent") == 2, "the innocent trigger was charged more than the one shared death"
    assert _deliveries(pg_url, "poison-t") == LIMIT + 1
