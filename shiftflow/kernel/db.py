"""The relational database handle: one Peewee proxy, bound at start-up from a URL.

PostgreSQL in production and tests, SQLite in dev mode. Peewee keeps one connection
per thread; the worker middleware opens it before each message and closes it after,
so a worker thread never holds a broken connection across messages.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import peewee
from playhouse.pool import PooledPostgresqlDatabase
from psycopg2.extensions import TRANSACTION_STATUS_UNKNOWN as _TXN_UNKNOWN

from shiftflow.kernel.errors import SettingsError

#: Every model binds to this proxy; ``bind_database`` points it at a real database.
database = peewee.DatabaseProxy()


class JSONField(peewee.Field):
    """A JSON column: ``jsonb`` on PostgreSQL, ``text`` on SQLite.

    Values are always exchanged as JSON text (the PostgreSQL connection disables
    psycopg2's jsonb decoding), so both engines round-trip exactly the same values,
    including a bare JSON string.
    """

    field_type = "JSONB"

    def db_value(self, value: Any) -> Any:
        if value is None:
            return None
        return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)

    def python_value(self, value: Any) -> Any:
        if value is None or not isinstance(value, str | bytes):
            return value
        return json.loads(value)


#: Seconds a pooled connection may sit idle and still be handed out without a ``SELECT 1``.
PING_AFTER_IDLE_SECONDS = 2.0


class _PostgresDatabase(PooledPostgresqlDatabase):
    """PostgreSQL with jsonb returned as text, so ``JSONField`` decodes it once.

    Pool check-out costs no round trip while the pool is busy: Peewee's pool pings every
    connection it hands out (``SELECT 1``), one round trip per message on a worker, as
    many as the message's own statements on the trigger path. Here only a connection idle
    for more than ``PING_AFTER_IDLE_SECONDS`` is pinged (a database restart happens while
    connections wait in the pool). One that breaks while busy fails its statement with
    ``OperationalError``, which the broker retries (``broker.retry_transient``), and the
    pool drops it at check-in (its transaction status is unknown).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._returned: dict[int, float] = {}  # id(conn) -> monotonic time of check-in
        self._jsonb_ready: set[int] = set()

    def _connect(self) -> Any:
        conn = super()._connect()
        if id(conn) not in self._jsonb_ready:  # once per new connection, not per check-out
            import psycopg2.extras

            psycopg2.extras.register_default_jsonb(conn_or_curs=conn, loads=lambda s: s)
            self._jsonb_ready.add(id(conn))
        return conn

    def _is_closed(self, conn: Any) -> bool:
        if conn.closed:
            return True
        returned = self._returned.get(id(conn))
        if returned is not None and time.monotonic() - returned < PING_AFTER_IDLE_SECONDS:
            return bool(conn.get_transaction_status() == _TXN_UNKNOWN)
        return bool(super()._is_closed(conn))

    def _close(self, conn: Any, close_conn: bool = False) -> None:
        self._returned[id(conn)] = time.monotonic()
        super()._close(conn, close_conn)

    def _close_raw(self, conn: Any) -> None:
        self._returned.pop(id(conn), None)
        self._jsonb_ready.discard(id(conn))
        super()._close_raw(conn)


class _SqliteDatabase(peewee.SqliteDatabase):
    """SQLite whose transactions take the write lock at BEGIN.

    With the default deferred BEGIN, two worker threads that both read then write
    deadlock and one gets "database is locked" at once, without waiting for the busy
    timeout; BEGIN IMMEDIATE makes the second one wait its turn instead.
    """

    def begin(self, lock_type: str | None = None) -> None:
        super().begin(lock_type or "IMMEDIATE")


def make_database(url: str) -> peewee.Database:
    """Build (without connecting) a Peewee database from a URL.

    Parameters:
        url: ``postgresql://user@host:port/name`` or ``sqlite:///path/file.db``.

    Raises:
        SettingsError: the URL names an engine ShiftFlow does not support.
    """
    parts = urlsplit(url)
    if parts.scheme in ("postgresql", "postgres"):
        return _PostgresDatabase(
            unquote(parts.path.lstrip("/")) or "postgres",
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            max_connections=64,
            stale_timeout=300,
            # A statement that hangs must not hold a worker thread forever.
            options="-c statement_timeout=30000",
            connect_timeout=5,
            autoconnect=True,
        )
    if parts.scheme == "sqlite":
        path = unquote(parts.path)
        if path.startswith("/") and url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            path = path[1:]  # sqlite:///rel/path.db is relative, sqlite:////abs/path.db absolute
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return _SqliteDatabase(
            path or ":memory:",
            pragmas={"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 10_000},
            field_types={"JSONB": "TEXT"},
            check_same_thread=False,
        )
    raise SettingsError(f"SHIFTFLOW_DATABASE_URL has an unsupported scheme {parts.scheme!r}")


def bind_database(url: str) -> peewee.Database:
    """Point the ``database`` proxy at the database named by ``url`` and return it."""
    db = make_database(url)
    database.initialize(db)
    return db


def is_postgres() -> bool:
    """True when the proxy is bound to PostgreSQL."""
    return isinstance(database.obj, peewee.PostgresqlDatabase)
