"""``step_execution``'s indexes (migration 0017): a claim and a lease renewal are HOT updates,
and every query of the timer loop and the heartbeat that has no step or execution id to go
by still reads an index, on a table filled with finished steps."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import peewee
import pytest

from shiftflow.kernel.db import bind_database
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine import claim_sql, leases, waits
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.tenancy import Workspace
from shiftflow.models.tables.workflows import Workflow

pytestmark = pytest.mark.integration


@pytest.fixture
def db(real_env: dict[str, str]) -> Iterator[peewee.Database]:
    configure(Settings.from_env(real_env))
    database = bind_database(real_env["SHIFTFLOW_DATABASE_URL"])
    with database.connection_context():
        yield database
    close_all = getattr(database, "close_all", None)
    if close_all is not None:
        close_all()


def _execution() -> Execution:
    workspace = Workspace.create(name=f"w{uuid.uuid4().hex[:6]}", slug=f"w{uuid.uuid4().hex[:6]}")
    workflow = Workflow.create(workspace=workspace, name="w")
    return Execution.create(workflow=workflow, workflow_version=1, workspace=workspace, dedup_key=uuid.uuid4().hex,
                            status="RUNNING", trigger_data={}, started_at=utcnow())


def _hot_and_all(db: peewee.Database) -> tuple[int, int]:
    """This database's ``step_execution`` updates so far: (HOT, all), the backend's pending
    counters flushed first."""
    db.execute_sql("SELECT pg_stat_force_next_flush()")
    db.execute_sql("SELECT 1")  # the flush happens when a statement ends outside a transaction
    db.execute_sql("SELECT pg_stat_clear_snapshot()")
    row = db.execute_sql("SELECT n_tup_hot_upd, n_tup_upd FROM pg_stat_user_tables "
                         "WHERE relname = 'step_execution'").fetchone()
    return int(row[0]), int(row[1])


def test_a_claim_and_a_lease_renewal_are_hot_updates(db: peewee.Database) -> None:
    execution = _execution()
    steps = [StepExecution.create(execution=execution, step_id=f"s{i}", iteration=0, step_type="http")
             for i in range(5)]
    hot0, all0 = _hot_and_all(db)
    now = utcnow()
    for step in steps:
        assert claim_sql.claim_pending(str(execution.id), step.step_id, 0, token="t-1",
                                       lease_until=now + dt.timedelta(seconds=30), now=now, delivery_limit=5)
    assert leases.renew(["t-1"]) == 5
    hot, every = _hot_and_all(db)
    assert (hot - hot0, every - all0) == (10, 10)


def _fill(count: int) -> None:
    """``count`` finished steps (the bulk of a real table), plus a few of every open kind."""
    execution = _execution()
    now = utcnow()
    rows: list[dict[str, Any]] = [
        {"id": uuid.uuid4(), "execution": execution.id, "step_id": f"done{i}", "iteration": 0, "step_type": "http",
         "status": "SUCCEEDED", "attempts": 1, "retry_count": 0, "created_at": now, "started_at": now,
         "completed_at": now, "claimed_by": f"gone-{i}", "lease_until": now - dt.timedelta(hours=1)}
        for i in range(count)]
    for i, (status, extra) in enumerate([
        ("RUNNING", {"claimed_by": "x", "lease_until": now + dt.timedelta(seconds=30)}),
        ("PENDING", {"resume_at": now + dt.timedelta(hours=1)}),
        ("WAITING", {"resume_at": now + dt.timedelta(hours=1), "wait_key": "timer"}),
        ("WAITING", {"wait_key": "event:x"}),
    ]):
        rows.append({"id": uuid.uuid4(), "execution": execution.id, "step_id": f"open{i}", "iteration": 0,
                     "step_type": "http", "status": status, "attempts": 0, "retry_count": 0, "created_at": now,
                     **extra})
    for start in range(0, len(rows), 1000):
        StepExecution.insert_many(rows[start:start + 1000]).execute()
    StepExecution._meta.database.execute_sql("ANALYZE step_execution")


def test_the_timer_loop_and_the_heartbeat_read_indexes(db: peewee.Database,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    _fill(20_000)
    seen: list[tuple[str, Any]] = []
    real_cursor = db.cursor

    class Recording:
        def __init__(self, cursor: Any) -> None:
            self._cursor = cursor

        def execute(self, sql: str, params: Any = None) -> Any:
            seen.append((sql, params))
            return self._cursor.execute(sql, params)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._cursor, name)

    monkeypatch.setattr(leases, "leases_judgeable", lambda: True)
    monkeypatch.setattr(db, "cursor", lambda *a, **k: Recording(real_cursor(*a, **k)))
    waits.resume_due()
    leases.renew(["nobody"])
    leases.release("nobody")
    monkeypatch.undo()
    # Every statement on step_execution that is not by id or by execution: the sweeps.
    sweeps = [(sql, params) for sql, params in seen
              if '"step_execution"' in sql and '"id" =' not in sql and '"execution_id" =' not in sql]
    assert len(sweeps) >= 6, sweeps  # backoffs, waits, timeouts, leases; renew, release
    for sql, params in sweeps:
        plan = "\n".join(r[0] for r in db.execute_sql("EXPLAIN " + sql, params).fetchall())
        assert "Seq Scan on step_execution" not in plan, (sql, plan)
        assert "idx_step_execution_" in plan, (sql, plan)
