"""Lock an execution and read its steps' header rows in one round trip.

Why: recording a step's outcome locks the execution row (``runs.lock_execution``), then
reads the header rows (iteration 0) of every step to plan what is ready: two statements
on every completion. On PostgreSQL one ``SELECT ... LEFT JOIN ... FOR UPDATE OF`` does
both; it locks only the execution row, as the separate lock did. Reading the rows when
the lock is taken instead of a moment later changes nothing the planner sees: every
change to a step that makes it final is made by a transaction holding this lock.
Elsewhere (SQLite) it is the same two statements.
"""

from __future__ import annotations

from typing import Any

import peewee

from shiftflow.kernel.errors import NotFound
from shiftflow.models.engine import prepared_sql
from shiftflow.models.engine.prepared_sql import bound, instance_from, quote
from shiftflow.models.tables.executions import Execution, StepExecution

_sql: dict[int, tuple[str, list[peewee.Field], list[peewee.Field]]] = {}


def _statement(db: peewee.Database) -> tuple[str, list[peewee.Field], list[peewee.Field]]:
    cached = _sql.get(id(db))
    if cached is not None:
        return cached
    executions, steps = list(Execution._meta.sorted_fields), list(StepExecution._meta.sorted_fields)
    e, s = Execution._meta.fields, StepExecution._meta.fields
    sql = (
        "SELECT " + ", ".join(f"e.{quote(db, f.column_name)}" for f in executions) + ", "
        + ", ".join(f"s.{quote(db, f.column_name)}" for f in steps)
        + f" FROM {quote(db, Execution._meta.table_name)} AS e LEFT JOIN {quote(db, StepExecution._meta.table_name)}"
        f" AS s ON s.{quote(db, s['execution'].column_name)} = e.{quote(db, e['id'].column_name)}"
        f" AND s.{quote(db, s['iteration'].column_name)} = 0"
        f" WHERE e.{quote(db, e['id'].column_name)} = %s FOR UPDATE OF e"
    )
    cached = _sql[id(db)] = (sql, executions, steps)
    return cached


def lock_with_headers(execution_id: Any) -> tuple[Execution, dict[str, StepExecution]]:
    """The execution, locked for the rest of the transaction, and the header row of each
    of its steps by step id. Call inside a transaction.

    Raises:
        NotFound: no such execution.
    """
    db = bound(Execution)
    if not isinstance(db, peewee.PostgresqlDatabase):
        execution = prepared_sql.get_by_id(Execution, execution_id, for_update=True)
        if execution is None:
            raise NotFound(f"execution {execution_id} does not exist")
        rows = prepared_sql.select_where(StepExecution, execution=execution.id, iteration=0)
        return execution, {row.step_id: row for row in rows}
    sql, executions, steps = _statement(db)
    found = db.execute_sql(sql, [Execution._meta.fields["id"].db_value(execution_id)]).fetchall()
    if not found:
        raise NotFound(f"execution {execution_id} does not exist")
    execution = instance_from(Execution, executions, found[0][:len(executions)])
    headers: dict[str, StepExecution] = {}
    for row in found:
        if row[len(executions)] is not None:  # the step's id: NULL when the execution has no rows yet
            step = instance_from(StepExecution, steps, row[len(executions):])
            headers[step.step_id] = step
    return execution, headers
