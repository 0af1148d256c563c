"""Hot-path statements whose SQL is built once per shape instead of once per call.

Peewee builds every query by walking a tree of nodes: on the trigger path (read the
workflow, insert the execution, insert its step rows) that walk cost more CPU than
PostgreSQL spent running the statements (docs/benchmarks.md#the-trigger-path). These
helpers keep Peewee's meaning, field conversions included (``Field.db_value``/
``python_value``, defaults for missing columns as ``Model.insert`` fills them), but
cache the SQL text per (model, columns, row count, database), so a repeated shape costs
one dict lookup and the value conversions.

Use them only where a profile shows the query building; everywhere else Peewee's
query builder is clearer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import peewee

M = TypeVar("M", bound=peewee.Model)

_MISSING = object()
_insert_sql: dict[tuple[Any, ...], tuple[str, list[peewee.Field]]] = {}
_select_sql: dict[tuple[Any, ...], tuple[str, list[peewee.Field]]] = {}
_update_sql: dict[tuple[Any, ...], str] = {}
_pair_sql: dict[tuple[Any, ...], tuple[str, list[peewee.Field], list[peewee.Field]]] = {}


def _bound(model: type[peewee.Model]) -> peewee.Database:
    """The database ``model`` is bound to (through the kernel's proxy, or ``bind_ctx`` in tests)."""
    db = model._meta.database
    if isinstance(db, peewee.DatabaseProxy):
        db = db.obj
    if db is None:
        raise peewee.InterfaceError("the database is not bound (call kernel.db.bind_database first)")
    return db


def _quote(db: peewee.Database, name: str) -> str:
    """``name`` quoted for ``db`` (our own table and column names: no quote characters inside)."""
    return f"{db.quote[0]}{name}{db.quote[1]}"


#: Public names for other hot-path statement modules (``claim_sql``, ``lock_sql``).
bound = _bound
quote = _quote


def instance_from(model: type[M], fields: Sequence[peewee.Field], values: Sequence[Any]) -> M:
    """A ``model`` instance from one row's ``values`` of ``fields``, as Peewee builds it
    (``python_value`` conversions, nothing dirty)."""
    instance: Any = model(__no_default__=True)
    data = instance.__data__
    for field, value in zip(fields, values, strict=True):
        data[field.name] = None if value is None else field.python_value(value)
    instance._dirty.clear()
    return instance


def _columns(model: type[peewee.Model], rows: Sequence[Mapping[str, Any]]) -> list[peewee.Field]:
    """The fields an insert of ``rows`` writes: every key of any row, then defaulted fields."""
    fields = model._meta.fields
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    unknown = [name for name in names if name not in fields]
    if unknown:
        raise ValueError(f"{model.__name__} has no field(s) {', '.join(unknown)}")
    chosen = [fields[name] for name in names]
    chosen += [f for f in model._meta.sorted_fields if f.name not in names and f.default is not None]
    return chosen


def insert_columns(model: type[peewee.Model], rows: Sequence[Mapping[str, Any]]) -> list[peewee.Field]:
    """The fields an insert of ``rows`` writes, in order (for SQL built elsewhere: ``complete_sql``)."""
    return _columns(model, rows)


def insert_params(columns: Sequence[peewee.Field], rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The parameters of an insert of ``rows`` into ``columns`` (``insert_columns``), defaults filled in."""
    return _params(columns, rows)


def insert_rows(model: type[peewee.Model], rows: Sequence[Mapping[str, Any]], *, ignore_conflicts: bool = False) -> int:
    """``model.insert_many(rows)`` (``.on_conflict_ignore()``) with its SQL built once per shape.

    Rows are dicts keyed by field name (``"workflow"``, not ``"workflow_id"``); a field a
    row leaves out gets its default, or NULL when it has none (a NOT NULL column then
    fails in the database, as with Peewee).

    Returns:
        The number of rows inserted (fewer than given when conflicts were ignored).
    """
    if not rows:
        return 0
    db = _bound(model)
    key = (model, tuple(tuple(row) for row in rows), ignore_conflicts, id(db))
    cached = _insert_sql.get(key)
    if cached is None:
        columns = _columns(model, rows)
        one = "(" + ", ".join([db.param] * len(columns)) + ")"
        verb = "INSERT OR IGNORE INTO" if ignore_conflicts and isinstance(db, peewee.SqliteDatabase) else "INSERT INTO"
        sql = (
            f"{verb} {_quote(db, model._meta.table_name)} ("
            + ", ".join(_quote(db, f.column_name) for f in columns)
            + ") VALUES "
            + ", ".join([one] * len(rows))
        )
        if ignore_conflicts and not isinstance(db, peewee.SqliteDatabase):
            sql += " ON CONFLICT DO NOTHING"
        cached = _insert_sql[key] = (sql, columns)
    sql, columns = cached
    cursor = db.execute_sql(sql, _params(columns, rows))
    return int(cursor.rowcount)


def _params(columns: Sequence[peewee.Field], rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """The converted values of ``rows`` in ``columns`` order, defaults filled in."""
    params: list[Any] = []
    for row in rows:
        for field in columns:
            value = row.get(field.name, _MISSING)
            if value is _MISSING:
                default = field.default
                value = default() if callable(default) else default
            if isinstance(value, peewee.Model):
                value = value.get_id()
            params.append(None if value is None else field.db_value(value))
    return params


def insert_with_children(
    parent: type[peewee.Model],
    parent_row: Mapping[str, Any],
    child: type[peewee.Model],
    child_rows: Sequence[Mapping[str, Any]],
) -> bool:
    """Insert ``parent_row`` unless it conflicts and, only if it was inserted, ``child_rows``.

    On PostgreSQL this is one statement (a data-modifying CTE), so it is atomic without
    BEGIN/COMMIT: one round trip instead of four, for the trigger path's execution and
    its step rows. Elsewhere (SQLite) it is the same two inserts in a transaction.

    Returns:
        False when the parent conflicted (a duplicate): then nothing was written.
    """
    db = _bound(parent)
    if not child_rows or not isinstance(db, peewee.PostgresqlDatabase):
        with db.atomic():
            if not insert_rows(parent, [parent_row], ignore_conflicts=True):
                return False
            for start in range(0, len(child_rows), 500):  # SQLite caps the variables of one statement
                insert_rows(child, child_rows[start:start + 500])
            return True
    key = ("with_children", parent, tuple(parent_row), child, tuple(tuple(row) for row in child_rows), id(db))
    cached = _pair_sql.get(key)
    if cached is None:
        parent_columns, child_columns = _columns(parent, [parent_row]), _columns(child, child_rows)
        types = db.get_context_options()["field_types"]
        # VALUES in a SELECT has no target columns to take its types from: cast each value.
        cast = "(" + ", ".join(f"{db.param}::{types.get(f.field_type, f.field_type)}" for f in child_columns) + ")"
        sql = (
            f"WITH inserted AS (INSERT INTO {_quote(db, parent._meta.table_name)} ("
            + ", ".join(_quote(db, f.column_name) for f in parent_columns)
            + ") VALUES (" + ", ".join([db.param] * len(parent_columns)) + ") ON CONFLICT DO NOTHING RETURNING 1) "
            + f"INSERT INTO {_quote(db, child._meta.table_name)} ("
            + ", ".join(_quote(db, f.column_name) for f in child_columns)
            + ") SELECT * FROM (VALUES " + ", ".join([cast] * len(child_rows))
            + ") AS v WHERE EXISTS (SELECT 1 FROM inserted)"
        )
        cached = _pair_sql[key] = (sql, parent_columns, child_columns)
    sql, parent_columns, child_columns = cached
    params = _params(parent_columns, [parent_row]) + _params(child_columns, child_rows)
    return int(db.execute_sql(sql, params).rowcount) > 0


def select_where(model: type[M], *, for_update: bool = False, **equals: Any) -> list[M]:
    """``model.select().where(field == value, ...)`` (``.for_update()``), SQL built once per shape.

    Keyword arguments name fields (``execution=...``, not ``execution_id``); every column
    is read, so the instances are the same as Peewee's (foreign keys as ids). A value of
    None matches NULL. ``for_update`` locks the rows on PostgreSQL and is ignored on SQLite
    (which locks the whole database for a write transaction anyway).
    """
    db = _bound(model)
    fields = model._meta.fields
    names = tuple(equals)
    nulls = tuple(name for name in names if equals[name] is None)
    lock = for_update and isinstance(db, peewee.PostgresqlDatabase)
    key = (model, names, nulls, lock, id(db))
    cached = _select_sql.get(key)
    if cached is None:
        unknown = [name for name in names if name not in fields]
        if unknown:
            raise ValueError(f"{model.__name__} has no field(s) {', '.join(unknown)}")
        columns = list(model._meta.sorted_fields)
        conditions = [
            f"{_quote(db, fields[name].column_name)} IS NULL" if name in nulls
            else f"{_quote(db, fields[name].column_name)} = {db.param}"
            for name in names
        ]
        sql = (
            "SELECT " + ", ".join(_quote(db, f.column_name) for f in columns)
            + f" FROM {_quote(db, model._meta.table_name)}"
            + (" WHERE " + " AND ".join(conditions) if conditions else "")
            + (" FOR UPDATE" if lock else "")
        )
        cached = _select_sql[key] = (sql, columns)
    sql, columns = cached
    params = [fields[name].db_value(equals[name]) for name in names if name not in nulls]
    found: list[M] = []
    for row in db.execute_sql(sql, params).fetchall():
        found.append(instance_from(model, columns, row))
    return found


def get_by_id(model: type[M], pk: Any, *, for_update: bool = False) -> M | None:
    """``model.get_or_none(model.id == pk)`` (``.for_update()``) with its SQL built once."""
    primary_key: Any = model._meta.primary_key  # Peewee types it "Field | False"
    rows = select_where(model, for_update=for_update, **{primary_key.name: pk})
    return rows[0] if rows else None


def update_where(model: type[peewee.Model], values: Mapping[str, Any], *, status_in: Sequence[str] = (),
                 **equals: Any) -> int:
    """``model.update(values).where(field == value, ..., status IN status_in)``, SQL built
    once per shape. ``values`` and ``equals`` name fields; returns the rows updated."""
    db = _bound(model)
    fields = model._meta.fields
    key = ("update", model, tuple(values), tuple(equals), len(status_in), id(db))
    cached = _update_sql.get(key)
    if cached is None:
        unknown = [name for name in (*values, *equals) if name not in fields]
        if unknown:
            raise ValueError(f"{model.__name__} has no field(s) {', '.join(unknown)}")
        conditions = [f"{_quote(db, fields[name].column_name)} = {db.param}" for name in equals]
        if status_in:
            conditions.append(f"{_quote(db, fields['status'].column_name)} IN ("
                              + ", ".join([db.param] * len(status_in)) + ")")
        cached = _update_sql[key] = (
            f"UPDATE {_quote(db, model._meta.table_name)} SET "
            + ", ".join(f"{_quote(db, fields[name].column_name)} = {db.param}" for name in values)
            + " WHERE " + " AND ".join(conditions)
        )
    params = [None if v is None else fields[name].db_value(v.get_id() if isinstance(v, peewee.Model) else v)
              for name, v in values.items()]
    params += [fields[name].db_value(v) for name, v in equals.items()]
    params += [fields["status"].db_value(v) for v in status_in]
    return int(db.execute_sql(cached, params).rowcount)
