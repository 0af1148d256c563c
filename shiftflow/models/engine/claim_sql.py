"""The common claim in one statement: a PENDING step of a live execution becomes RUNNING.

Why: the general claim (``runs.claim_step``) locks the execution row, reads the step and
decides among many cases (finished, held by a live holder, backing off, quarantined,
execution over) in a transaction of five round trips. Nearly every delivery is the plain
case, a PENDING step due now, within its delivery limit, of an execution still running,
and that case decides nothing about other steps, so it needs no execution lock: one
``UPDATE ... RETURNING`` (a data-modifying CTE joined to the execution row for the
claim's context) does it, and is durable when it returns (autocommit), before any
outside call. Anything else (no row came back) goes to the general claim.

Concurrency without the execution lock: two copies of one message both ask for
``status = 'PENDING'``; the second waits for the first's row lock, sees RUNNING and
takes the general path (which drops it while the holder lives). A cancel or a failure
elsewhere that commits first has moved the step off PENDING (it cancels every active
step), so the claim finds nothing; a paused execution (an agent task's pause) is not
live here either, and the general claim leaves its step for the resume; one that commits after the claim cancels the RUNNING
step, whose holder then records nothing (``record_step``'s status check), as before.

PostgreSQL only (SQLite has no data-modifying CTE); elsewhere ``claim_pending`` returns
None and the general claim runs.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import peewee

from shiftflow.kernel.steps import TERMINAL
from shiftflow.models.engine.prepared_sql import bound, instance_from, quote
from shiftflow.models.tables.executions import Execution, StepExecution

_sql: dict[int, tuple[str, list[peewee.Field], list[peewee.Field]]] = {}


def _statement(db: peewee.Database) -> tuple[str, list[peewee.Field], list[peewee.Field]]:
    cached = _sql.get(id(db))
    if cached is not None:
        return cached
    steps, executions = list(StepExecution._meta.sorted_fields), list(Execution._meta.sorted_fields)
    s, e = StepExecution._meta.fields, Execution._meta.fields

    def col(field: peewee.Field) -> str:
        return quote(db, field.column_name)

    terminal = ", ".join(["%s"] * len(TERMINAL))
    sql = (
        f"WITH claimed AS (UPDATE {quote(db, StepExecution._meta.table_name)} AS s SET "
        f"{col(s['status'])} = 'RUNNING', {col(s['claimed_by'])} = %s, {col(s['lease_until'])} = %s, "
        f"{col(s['started_at'])} = COALESCE(s.{col(s['started_at'])}, %s), {col(s['timeout_at'])} = NULL, "
        f"{col(s['attempts'])} = s.{col(s['attempts'])} + 1 "
        f"WHERE s.{col(s['execution'])} = %s AND s.{col(s['step_id'])} = %s AND s.{col(s['iteration'])} = %s "
        f"AND s.{col(s['status'])} = 'PENDING' AND s.{col(s['resume_at'])} IS NULL "
        f"AND s.{col(s['attempts'])} + 1 - s.{col(s['retry_count'])} <= %s "
        f"AND EXISTS (SELECT 1 FROM {quote(db, Execution._meta.table_name)} AS x "
        f"WHERE x.{col(e['id'])} = s.{col(s['execution'])} AND x.{col(e['status'])} NOT IN ({terminal}, 'PAUSED')) "
        "RETURNING " + ", ".join(f"s.{col(f)}" for f in steps) + ") "
        "SELECT " + ", ".join(f"c.{col(f)}" for f in steps) + ", "
        + ", ".join(f"e.{col(f)}" for f in executions)
        + f" FROM claimed AS c JOIN {quote(db, Execution._meta.table_name)} AS e "
        f"ON e.{col(e['id'])} = c.{col(s['execution'])}"
    )
    cached = _sql[id(db)] = (sql, steps, executions)
    return cached


def claim_pending(execution_id: Any, step_id: str, iteration: int, *, token: str, lease_until: dt.datetime,
                  now: dt.datetime, delivery_limit: int) -> tuple[StepExecution, Execution] | None:
    """Claim a PENDING, due step of a live execution for ``token`` in one statement.

    Returns:
        The claimed step (RUNNING, attempts counted) and its execution, or None when the
        step is in any other state (or the database is not PostgreSQL): then the general
        claim decides.
    """
    db = bound(StepExecution)
    if not isinstance(db, peewee.PostgresqlDatabase):
        return None
    sql, steps, executions = _statement(db)
    fields = StepExecution._meta.fields
    params = [token, fields["lease_until"].db_value(lease_until), fields["started_at"].db_value(now),
              fields["execution"].db_value(execution_id), step_id, iteration, delivery_limit, *sorted(TERMINAL)]
    row = db.execute_sql(sql, params).fetchone()
    if row is None:
        return None
    return instance_from(StepExecution, steps, row[:len(steps)]), instance_from(Execution, executions, row[len(steps):])
