"""PostgreSQL for tests: migrated templates and a database of its own per test.

A template ``sf_tpl_<hex>`` is created and migrated once per session; each test gets a
copy ``sf_t_<hex>`` (``temp_pg_database``, or ``PgDatabaseSupply``, which makes the next
one ahead). Every database is marked with ``OWNER`` so ``reap_pg`` can drop those of
killed sessions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from tests.support.ownership import OWNER, is_orphan, token

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def pg_admin(admin_url: str) -> Iterator[Any]:
    """An autocommit psycopg2 connection with short timeouts, closed on exit."""
    import psycopg2

    conn = psycopg2.connect(admin_url, connect_timeout=5, options="-c statement_timeout=60000")
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


def with_database(url: str, name: str) -> str:
    """``url`` with its database name replaced by ``name``."""
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(name)))


def check_pg(admin_url: str) -> None:
    """Raise unless PostgreSQL answers a query at ``admin_url``."""
    with pg_admin(admin_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")


def reap_pg(admin_url: str) -> None:
    """Drop test databases (``sf_t_*``, ``sf_tpl_*``) left by killed sessions on this host."""
    with pg_admin(admin_url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
            "WHERE datname LIKE 'sf\\_t\\_%' OR datname LIKE 'sf\\_tpl\\_%'"
        )
        for name, comment in cur.fetchall():
            if is_orphan(comment):
                cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(url: str) -> list[str]:
    """Bring the database at ``url`` to the current schema (``shiftflow.models.tables.migrations.upgrade``).

    Returns the names of the migrations applied. Closes every connection it opened.
    """
    from shiftflow.kernel.db import make_database
    from shiftflow.models.tables.migrations import upgrade

    db = make_database(url)
    try:
        return list(upgrade(db))
    finally:
        # The pooled database keeps its connections unless told; a template must have none.
        close_all = getattr(db, "close_all", None)
        if close_all is not None:
            close_all()
        db.close()


def create_pg_template(admin_url: str) -> str:
    """Create and migrate a template database ``sf_tpl_<hex>``; return its name.

    The template refuses connections afterwards, because one stray connection makes
    ``CREATE DATABASE ... TEMPLATE`` fail. Drop it with ``drop_pg_database``.
    """
    name = f"sf_tpl_{token()}"
    with pg_admin(admin_url) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
        cur.execute(f"COMMENT ON DATABASE \"{name}\" IS '{OWNER}'")
    try:
        migrate(with_database(admin_url, name))
        with pg_admin(admin_url) as conn, conn.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
    except BaseException:
        drop_pg_database(admin_url, name)
        raise
    return name


def drop_pg_database(admin_url: str, name: str) -> None:
    """Drop database ``name``, ending its connections (no error if it is gone)."""
    with pg_admin(admin_url) as conn, conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def temp_pg_database(admin_url: str, template: str) -> Iterator[str]:
    """A fresh database ``sf_t_<hex>`` copied from ``template``; yields its URL, drops it on exit."""
    name = f"sf_t_{token()}"
    with pg_admin(admin_url) as conn, conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        cur.execute(f"COMMENT ON DATABASE \"{name}\" IS '{OWNER}'")
    try:
        yield with_database(admin_url, name)
    finally:
        drop_pg_database(admin_url, name)


class PgDatabaseSupply:
    """Databases ``sf_t_<hex>`` copied from a template, one made ahead in a background thread.

    Copying the template costs 0.1 to 0.6 s here (fsync on, whatever the STRATEGY), so the
    next database is made while the current test runs and ``take`` returns at once; used
    ones are dropped in the same thread (``give_back``), so neither waits in the test.
    """

    def __init__(self, admin_url: str, template: str) -> None:
        from concurrent.futures import Future, ThreadPoolExecutor

        self.admin_url = admin_url
        self.template = template
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sf-pg-ahead")
        self._ahead: Future[str] | None = None
        self._drops: list[Future[None]] = []

    def _create(self) -> str:
        name = f"sf_t_{token()}"
        with pg_admin(self.admin_url) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
            cur.execute(f"COMMENT ON DATABASE \"{name}\" IS '{OWNER}'")
        return name

    def take(self) -> str:
        """A new database's name; the caller drops it (``drop_pg_database``)."""
        ahead, self._ahead = self._ahead, None
        name = None
        if ahead is not None:
            try:
                name = ahead.result(timeout=120)
            except Exception:  # e.g. PostgreSQL was restarting: make one now instead
                name = None
        if name is None:
            name = self._create()
        self._ahead = self._executor.submit(self._create)
        return name

    def give_back(self, name: str) -> None:
        """Drop database ``name`` in the background (``close`` reports a failure)."""
        self._drops = [f for f in self._drops if not f.done() or f.exception() is not None]
        self._drops.append(self._executor.submit(drop_pg_database, self.admin_url, name))

    def close(self) -> None:
        """Drop the database made ahead, wait for the drops, stop the thread.

        Raises:
            Exception: the first failure of a background drop.
        """
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            with contextlib.suppress(Exception):
                self.give_back(ahead.result(timeout=120))
        self._executor.shutdown(wait=True)
        for drop in self._drops:
            drop.result()

