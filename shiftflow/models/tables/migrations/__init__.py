"""Versioned PostgreSQL migrations: numbered SQL files applied once each, in order.

Files are ``NNNN_name.sql`` in this package (package data). ``upgrade`` applies the
pending ones, each in its own transaction together with its ``schema_migrations`` row,
so a failed migration leaves nothing half-applied. Every transaction first takes a
transaction-scoped advisory lock, then re-reads what is applied: two processes that
migrate at once queue behind each other and each file runs exactly once.

A migration may also have a data step (``data_steps.BEFORE``): Python run in the same
transaction just before its SQL, for what SQL alone cannot do (0008 encrypts webhook
secrets with the configured keys). The checksum covers the SQL only.

SQLite (dev mode) has no migrations: ``shiftflow.models.tables.registry.create_all`` builds it.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources

import peewee

from shiftflow.kernel.errors import PermanentError

#: ``pg_advisory_xact_lock`` key: the first 8 bytes of sha256("shiftflow.schema_migrations").
LOCK_KEY = int.from_bytes(hashlib.sha256(b"shiftflow.schema_migrations").digest()[:8], "big", signed=True)

_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    name VARCHAR(255) NOT NULL PRIMARY KEY,
    checksum VARCHAR(64) NOT NULL,
    applied_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
)
"""


class MigrationError(PermanentError):
    """Raised when migrations cannot run: not PostgreSQL, an unknown target, or an applied
    migration whose file changed since (the database and the code disagree)."""


def available() -> list[str]:
    """Names of every migration shipped with the package, in order (``0001_initial``...)."""
    files = [p.name for p in resources.files(__name__).iterdir() if _FILE.match(p.name)]
    names = sorted(f[: -len(".sql")] for f in files)
    numbers = [n[:4] for n in names]
    if len(set(numbers)) != len(numbers):
        raise MigrationError(f"two migrations share a number: {names}")
    return names


def read(name: str) -> str:
    """The SQL text of migration ``name``."""
    return resources.files(__name__).joinpath(f"{name}.sql").read_text(encoding="utf-8")


def checksum(name: str) -> str:
    """SHA-256 of a migration's text; recorded so that editing an applied file is noticed."""
    return hashlib.sha256(read(name).encode("utf-8")).hexdigest()


def _require_postgres(db: peewee.Database) -> None:
    if not isinstance(db, peewee.PostgresqlDatabase):
        raise MigrationError("migrations are PostgreSQL-only; build SQLite with registry.create_all()")


def applied(db: peewee.Database) -> list[str]:
    """Names of the migrations recorded in ``db``'s ``schema_migrations``, in order."""
    _require_postgres(db)
    exists = db.execute_sql("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return []
    return [row[0] for row in db.execute_sql("SELECT name FROM schema_migrations ORDER BY name").fetchall()]


def pending(db: peewee.Database) -> list[str]:
    """Names of the shipped migrations not yet applied to ``db``, in order."""
    done = set(applied(db))
    return [name for name in available() if name not in done]


def _resolve(target: str | None) -> list[str]:
    names = available()
    if target is None:
        return names
    for i, name in enumerate(names):
        if target in (name, name[:4], f"{name}.sql"):
            return names[: i + 1]
    raise MigrationError(f"unknown migration target {target!r}; known: {', '.join(names)}")


def _apply_one(db: peewee.Database, name: str) -> bool:
    """Apply ``name`` unless already applied; True when this call applied it."""
    digest = checksum(name)
    with db.atomic():
        # Migrations may build indexes on large tables: lift the pool's statement timeout
        # for this transaction only (SET LOCAL ends with it).
        db.execute_sql("SET LOCAL statement_timeout = 0")
        db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        db.execute_sql(_CREATE_TABLE)
        row = db.execute_sql("SELECT checksum FROM schema_migrations WHERE name = %s", (name,)).fetchone()
        if row is not None:
            if row[0] != digest:
                raise MigrationError(
                    f"migration {name} changed after it was applied (checksum {row[0]} != {digest})"
                )
            return False
        _data_step(db, name)
        # A bare cursor: without parameters psycopg2 leaves '%' in the SQL alone.
        db.cursor().execute(read(name))
        db.execute_sql("INSERT INTO schema_migrations (name, checksum) VALUES (%s, %s)", (name, digest))
    return True


def _data_step(db: peewee.Database, name: str) -> None:
    from shiftflow.models.tables.migrations.data_steps import BEFORE, DataStepError

    step = BEFORE.get(name)
    if step is None:
        return
    try:
        step(db)
    except DataStepError as exc:
        raise MigrationError(f"migration {name}: {exc}") from None


def upgrade(db: peewee.Database, target: str | None = None) -> list[str]:
    """Apply pending migrations up to ``target`` (all when None); return the names applied.

    Safe to call from several processes at once and to call again: already applied
    migrations are skipped. Never goes down: a target older than the database is a no-op.

    Parameters:
        db: a PostgreSQL database (connected on demand).
        target: a migration name (``0001_initial``) or its number (``0001``).

    Raises:
        MigrationError: ``db`` is not PostgreSQL, the target is unknown, an applied
            migration's file changed, or a data step cannot run (the message says why).
    """
    _require_postgres(db)
    return [name for name in _resolve(target) if _apply_one(db, name)]


__all__ = ["LOCK_KEY", "MigrationError", "applied", "available", "checksum", "pending", "read", "upgrade"]
