"""Record a step's outcome and create the one step it made ready, in one statement.

Why: a completion in a linear chain wrote the finished step (``UPDATE``) and then the next
step's row (``INSERT``): two round trips in the completion's transaction. On PostgreSQL one
data-modifying CTE does both: the update, guarded by the step's status as before, and an
``INSERT ... SELECT ... WHERE EXISTS`` of the update's result, so the next row is written
only when the step was recorded (a duplicate or a cancel that got there first leaves both
alone, as the separate statements did). It runs inside the caller's transaction, with the
execution locked: what is committed, and when, does not change.

PostgreSQL only; elsewhere ``complete_and_insert`` returns None and the caller writes the two
rows apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import peewee

from shiftflow.models.engine import prepared_sql
from shiftflow.models.engine.prepared_sql import bound, quote
from shiftflow.models.tables.executions import StepExecution

_sql: dict[tuple[Any, ...], tuple[str, list[peewee.Field]]] = {}


def _statement(db: peewee.Database, values: Sequence[str], status_in: int,
               row: Mapping[str, Any]) -> tuple[str, list[peewee.Field]]:
    key = (tuple(values), status_in, tuple(row), id(db))
    cached = _sql.get(key)
    if cached is not None:
        return cached
    fields, table = StepExecution._meta.fields, quote(db, StepExecution._meta.table_name)
    columns = prepared_sql.insert_columns(StepExecution, [row])
    sql = (
        f"WITH done AS (UPDATE {table} SET "
        + ", ".join(f"{quote(db, fields[name].column_name)} = %s" for name in values)
        + f" WHERE {quote(db, fields['id'].column_name)} = %s AND {quote(db, fields['status'].column_name)} IN ("
        + ", ".join(["%s"] * status_in) + ") RETURNING 1), "
        f"made AS (INSERT INTO {table} (" + ", ".join(quote(db, f.column_name) for f in columns) + ") "
        "SELECT " + ", ".join(["%s"] * len(columns)) + " WHERE EXISTS (SELECT 1 FROM done) RETURNING 1) "
        "SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM made)"
    )
    cached = _sql[key] = (sql, columns)
    return cached


def complete_and_insert(step_id: Any, values: Mapping[str, Any], *, status_in: Sequence[str],
                        row: Mapping[str, Any]) -> bool | None:
    """Update step ``step_id`` with ``values`` if its status is in ``status_in``, and only
    then insert ``row`` (a new step row, fields by name). Call in a transaction with the
    execution locked.

    Returns:
        True when both were written, False when the step was not in ``status_in`` (nothing
        written), None when the database is not PostgreSQL (nothing written either).
    """
    db = bound(StepExecution)
    if not isinstance(db, peewee.PostgresqlDatabase):
        return None
    sql, columns = _statement(db, list(values), len(status_in), row)
    fields = StepExecution._meta.fields
    params = [None if v is None else fields[name].db_value(v) for name, v in values.items()]
    params += [fields["id"].db_value(step_id)]
    params += [fields["status"].db_value(s) for s in status_in]
    params += prepared_sql.insert_params(columns, [row])
    done, made = db.execute_sql(sql, params).fetchone()
    if done and not made:  # an INSERT that found the update but wrote nothing cannot happen
        raise RuntimeError(f"step {step_id} was recorded but the next step's row was not written")
    return bool(done)
