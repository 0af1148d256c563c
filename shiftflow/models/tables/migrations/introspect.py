"""Read a PostgreSQL schema back and compare two of them.

The contract test builds one database with the migrations and one with
``create_tables(ALL_MODELS)`` and requires ``diff`` to be empty; ``make_migration.py``
uses the same comparison to draft the next migration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import peewee

#: Tables that only the migration runner has; never part of the models.
IGNORED_TABLES = frozenset({"schema_migrations"})

_COLUMNS = """
SELECT table_name, column_name, data_type, udt_name, character_maximum_length,
       numeric_precision, numeric_scale, datetime_precision, is_nullable, column_default
FROM information_schema.columns
WHERE table_schema = current_schema()
"""

_CONSTRAINTS = """
SELECT cls.relname, con.conname, con.contype, pg_get_constraintdef(con.oid)
FROM pg_constraint con
JOIN pg_class cls ON cls.oid = con.conrelid
WHERE cls.relnamespace = to_regnamespace(current_schema()) AND con.contype IN ('p', 'u', 'f', 'c', 'x')
"""

_INDEXES = """
SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()
"""

_TABLES = """
SELECT table_name FROM information_schema.tables
WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
"""

#: How one object of each section is called in messages.
_SINGULAR = {"tables": "table", "columns": "column", "constraints": "constraint", "indexes": "index"}

#: section -> {(table, name): description}
Snapshot = dict[str, dict[tuple[str, str], Any]]


@dataclass(frozen=True)
class Difference:
    """One object that differs: ``kind`` is missing (expected, absent), unexpected, or changed."""

    section: str
    table: str
    name: str
    kind: str
    expected: Any
    actual: Any

    def __str__(self) -> str:
        what = f"{_SINGULAR[self.section]} {self.table}.{self.name}" if self.name else f"table {self.table}"
        if self.kind == "missing":
            return f"{what} is missing: expected {self.expected}"
        if self.kind == "unexpected":
            return f"{what} is unexpected: {self.actual}"
        return f"{what} differs: expected {self.expected}, found {self.actual}"


def snapshot(db: peewee.Database) -> Snapshot:
    """Tables, columns, constraints and indexes of ``db``'s current schema.

    Column order is ignored (``ALTER TABLE ADD COLUMN`` can only append); names of
    constraints and indexes are compared, since later migrations refer to them.
    """
    tables = {(r[0], ""): "table" for r in db.execute_sql(_TABLES).fetchall() if r[0] not in IGNORED_TABLES}
    columns = {
        (r[0], r[1]): {
            "type": r[2],
            "udt": r[3],
            "length": r[4],
            "precision": r[5],
            "scale": r[6],
            "datetime_precision": r[7],
            "nullable": r[8],
            "default": r[9],
        }
        for r in db.execute_sql(_COLUMNS).fetchall()
        if r[0] not in IGNORED_TABLES
    }
    constraints = {
        (r[0], r[1]): f"{r[2]}: {r[3]}"
        for r in db.execute_sql(_CONSTRAINTS).fetchall()
        if r[0] not in IGNORED_TABLES
    }
    indexes = {(r[0], r[1]): r[2] for r in db.execute_sql(_INDEXES).fetchall() if r[0] not in IGNORED_TABLES}
    return {"tables": tables, "columns": columns, "constraints": constraints, "indexes": indexes}


def diff(expected: Snapshot, actual: Snapshot) -> list[Difference]:
    """Everything in which ``actual`` differs from ``expected``, sorted; empty when equal."""
    out: list[Difference] = []
    for section in ("tables", "columns", "constraints", "indexes"):
        want, have = expected.get(section, {}), actual.get(section, {})
        for key in sorted(set(want) | set(have)):
            if key not in have:
                out.append(Difference(section, key[0], key[1], "missing", want[key], None))
            elif key not in want:
                out.append(Difference(section, key[0], key[1], "unexpected", None, have[key]))
            elif want[key] != have[key]:
                out.append(Difference(section, key[0], key[1], "changed", want[key], have[key]))
    return out
