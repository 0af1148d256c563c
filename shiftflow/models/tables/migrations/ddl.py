"""PostgreSQL DDL of the models, compiled by Peewee without connecting to a server.

Used by ``scripts/make_migration.py`` to (re)generate ``0001_initial.sql`` and to draft
later migrations. Objects that a later migration creates (named constraints, indexes,
tables) are left out of the baseline, so replaying 0001 then 0002... rebuilds exactly
what the models declare.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import peewee

#: Names a migration creates: ``CREATE TABLE x``, ``CREATE INDEX x``, ``ADD CONSTRAINT x``.
_CREATED = re.compile(
    r"(?:CREATE\s+TABLE|CREATE\s+(?:UNIQUE\s+)?INDEX(?:\s+CONCURRENTLY)?|ADD\s+CONSTRAINT)"
    r'\s+(?:IF\s+NOT\s+EXISTS\s+)?"?(\w+)"?',
    re.IGNORECASE,
)
_ADDED_COLUMN = re.compile(r"ADD\s+COLUMN", re.IGNORECASE)


def created_names(sql: str) -> set[str]:
    """The tables, indexes and constraints that the migration text ``sql`` creates.

    Raises:
        ValueError: the migration adds a column; the baseline cannot leave a column out
            of a CREATE TABLE, so 0001 must stay frozen once such a migration exists.
    """
    text = re.sub(r"--[^\n]*", "", sql)
    if _ADDED_COLUMN.search(text):
        raise ValueError("a later migration adds a column: 0001 is frozen, write a new migration instead")
    return {m.group(1) for m in _CREATED.finditer(text)}


def _compile(db: peewee.Database, node: Any) -> str:
    sql, params = db.get_sql_context().sql(node).query()
    if params:
        # A parameter would be lost in a .sql file; write WHERE clauses as peewee.SQL text.
        raise ValueError(f"DDL with bound parameters cannot go into a migration: {sql} {params}")
    return str(sql)


def _constraint_name(node: Any) -> str | None:
    """The name of a ``peewee.Check(..., name=...)`` node, None when unnamed."""
    if (
        isinstance(node, peewee.NodeList)
        and len(node.nodes) >= 2
        and isinstance(node.nodes[1], peewee.Entity)
    ):
        return str(node.nodes[1]._path[-1])
    return None


@contextmanager
def _bound(models: list[type[peewee.Model]]) -> Iterator[peewee.PostgresqlDatabase]:
    # A deferred PostgresqlDatabase compiles SQL for PostgreSQL and never connects.
    db = peewee.PostgresqlDatabase(None)
    with db.bind_ctx(models, bind_refs=False, bind_backrefs=False):
        yield db


def _pretty_table(sql: str) -> str:
    """One column or constraint per line (cosmetic: the database sees the same thing)."""
    head, sep, body = sql.partition(" (")
    if not sep:
        return sql
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in body[:-1]:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    return head + " (\n    " + ",\n    ".join(parts) + "\n)"


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def table_statements(db: peewee.Database, model: type[peewee.Model], exclude: set[str]) -> list[str]:
    """CREATE TABLE, CREATE INDEX and COMMENT statements of one model (bound to ``db``)."""
    meta = model._meta
    schema = model._schema  # type: ignore[attr-defined]
    saved = meta.constraints
    try:
        meta.constraints = [c for c in (saved or []) if _constraint_name(c) not in exclude] or None
        statements = [_pretty_table(_compile(db, schema._create_table(safe=False)))]
    finally:
        meta.constraints = saved
    for index in meta.fields_to_index():
        if index._name not in exclude:
            statements.append(_compile(db, schema._create_index(index, safe=False)))
    for field in meta.sorted_fields:
        if field.help_text:
            statements.append(
                f'COMMENT ON COLUMN "{meta.table_name}"."{field.column_name}" IS {_quote_literal(field.help_text)}'
            )
    return statements


def schema_statements(models: Iterable[type[peewee.Model]], exclude: Iterable[str] = ()) -> list[str]:
    """Every statement that builds ``models`` on PostgreSQL, in the given order.

    Parameters:
        models: the models, each after the ones it references (``ALL_MODELS``).
        exclude: table, index and constraint names to leave out (created later).
    """
    models = list(models)
    skip = set(exclude)
    with _bound(models) as db:
        out: list[str] = []
        for model in models:
            if model._meta.table_name not in skip:
                out.extend(table_statements(db, model, skip))
        return out


def column_statement(model: type[peewee.Model], column: str) -> str:
    """``ALTER TABLE ... ADD COLUMN ...`` for one column of ``model`` (for drafting migrations)."""
    field = next(f for f in model._meta.sorted_fields if f.column_name == column)
    with _bound([model]) as db:
        ctx = db.get_sql_context()
        ddl, _ = ctx.sql(field.ddl(ctx)).query()
    return f'ALTER TABLE "{model._meta.table_name}" ADD COLUMN {ddl}'


def create_table_statements(model: type[peewee.Model]) -> list[str]:
    """The statements creating one model's table from scratch (for drafting migrations)."""
    with _bound([model]) as db:
        return table_statements(db, model, set())
