"""A PostgreSQL crash of 30 s while outside calls are in flight is not a step timeout.

The test runs its own PostgreSQL cluster (``own_postgres.OwnPostgres``: the machine's
shared one is never touched), a real worker pool (``shiftflow workers``, with its timer
loop) on it, and a slow local service that counts calls. While calls of ``effect: once``
steps are in flight (and more triggers are queued), the cluster is stopped with
``pg_ctl stop -m immediate`` for 30 s, longer than the steps' ``timeout``, then started
again. Every execution must end SUCCEEDED with each call made once, and no record may
be left half-written: no ledger row without its result, no step RUNNING.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.support.postgres import migrate

from .outside_service import OutsideService
from .own_postgres import OwnPostgres
from .trigger_publisher import Publisher
from .worker_pool import WorkerPool
from .workflows import create_workflow, http_step

pytestmark = [pytest.mark.acceptance, pytest.mark.reliability]

#: How long the database is down: longer than the steps' timeout.
OUTAGE_SECONDS = 30.0
#: The steps' ``timeout``; the outside service takes CALL_SECONDS to answer.
STEP_TIMEOUT = 10
CALL_SECONDS = 3.0
EXECUTIONS_BEFORE, EXECUTIONS_DURING = 16, 4


@pytest.fixture
def cluster() -> Iterator[OwnPostgres]:
    made = OwnPostgres()
    try:
        made.start()
        yield made
    finally:
        made.close()


def outage_definition(url: str) -> dict[str, Any]:
    """Two slow ``effect: once`` calls with a step timeout shorter than the outage."""
    return {
        "name": "outage",
        "trigger": {"type": "manual"},
        "vars": {"url": url},
        "steps": [
            http_step("pay", "{{ trigger.n }}", effect="once", timeout=STEP_TIMEOUT),
            http_step("confirm", "{{ steps.pay.output.json.echo.n }}", effect="once", timeout=STEP_TIMEOUT),
            {"id": "done", "type": "transform", "with": {"output": {"n": "{{ steps.confirm.output.json.echo.n }}"}}},
        ],
    }


def _query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url, connect_timeout=3)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def _wait_final(url: str, keys: list[str], pool: WorkerPool, stall: float) -> dict[str, str]:
    """Wait until every key's execution is final; fail after ``stall`` s without progress."""
    final = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
    done, last = -1, time.monotonic()
    while True:
        try:
            found = dict(_query(url, "SELECT dedup_key, status FROM execution WHERE dedup_key = ANY(%s)", keys))
        except psycopg2.OperationalError:
            found = {}
        finished = sum(1 for k in keys if found.get(k) in final)
        if finished == len(keys):
            return found
        if finished > done:
            done, last = finished, time.monotonic()
        elif time.monotonic() - last > stall:
            raise AssertionError(f"{len(keys) - finished} executions not final after {stall:g} s without "
                                 f"progress: {sorted(set(found.values()))}\n{pool.log_tail()}")
        time.sleep(0.25)


@pytest.mark.timeout(420)
def test_a_database_crash_does_not_fail_calls_in_flight(
    cluster: OwnPostgres, amqp_url: str, mongo_url: str, mongo_db: str, redis_url: str, tmp_path: Path
) -> None:
    db_url = cluster.create_database("shiftflow")
    migrate(db_url)
    env = {
        **os.environ,
        "SHIFTFLOW_MODE": "production",
        "SHIFTFLOW_AMQP_URL": amqp_url,
        "SHIFTFLOW_DATABASE_URL": db_url,
        "SHIFTFLOW_MONGO_URL": mongo_url,
        "SHIFTFLOW_MONGO_DB": mongo_db,
        "SHIFTFLOW_REDIS_URL": redis_url,
        "SHIFTFLOW_HTTP_ALLOW_PRIVATE": "true",
        "SHIFTFLOW_METRICS_PORT": "0",
        "SHIFTFLOW_LOG_LEVEL": "WARNING",
    }
    service = OutsideService(delay=CALL_SECONDS).start()
    publisher = Publisher(env)
    pool = WorkerPool(env, tmp_path / "logs", processes=2, threads=8)
    (tmp_path / "logs").mkdir()
    try:
        workflow = create_workflow(db_url, outage_definition(service.url))
        pool.start()
        pool.wait_ready()
        for n in range(EXECUTIONS_BEFORE):
            assert publisher.trigger(workflow, f"before-{n:02d}", {"n": n})
        # Crash while calls are in flight: some answered, some still being made.
        deadline = time.monotonic() + 60
        while len(service.recorded()) < EXECUTIONS_BEFORE // 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        in_flight_at_crash = len(service.recorded())
        cluster.crash()
        crashed_at = time.monotonic()
        during = threading.Thread(target=lambda: [publisher.trigger(workflow, f"during-{n:02d}", {"n": 100 + n})
                                                  for n in range(EXECUTIONS_DURING)])
        during.start()
        during.join(30)
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - crashed_at)))  # the fault's length
        cluster.start()
        restarted_at = time.monotonic()

        keys = list(publisher.accepted)
        assert len(keys) == EXECUTIONS_BEFORE + EXECUTIONS_DURING
        found = _wait_final(db_url, keys, pool, stall=120)
        drained = time.monotonic() - restarted_at
        rows = _query(db_url, "SELECT e.dedup_key, e.status, e.error FROM execution e")
        steps = _query(db_url, "SELECT step_id, status, count(*) FROM step_execution GROUP BY 1, 2 ORDER BY 1, 2")
        effects = _query(db_url, "SELECT state, count(*) FROM side_effect GROUP BY 1 ORDER BY 1")
        calls: dict[tuple[str, str], int] = {}
        for call in service.recorded():
            calls[(call.execution_id, call.step_id)] = calls.get((call.execution_id, call.step_id), 0) + 1
        print(f"\ncalls at crash={in_flight_at_crash} drained {drained:.1f}s after restart; steps={steps} "
              f"effects={effects} repeated={[k for k, v in calls.items() if v > 1]}")

        failures = [(k, s, e) for k, s, e in rows if s != "SUCCEEDED"]
        assert failures == [], failures
        assert set(found.values()) == {"SUCCEEDED"}
        assert [k for k, v in calls.items() if v > 1] == []  # no call repeated
        assert len(calls) == 2 * len(keys)  # and none skipped
        assert effects == [("DONE", 2 * len(keys))]  # no record half-written
        assert _query(db_url, "SELECT count(*) FROM step_execution WHERE status NOT IN ('SUCCEEDED')") == [(0,)]
    finally:
        pool.stop()
        publisher.close()
        service.close()
