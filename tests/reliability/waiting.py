"""Waiting until executions end, read from PostgreSQL directly (not through the engine)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from .worker_pool import WorkerPool


def wait_terminal(pg_url: str, keys: Sequence[str], pool: WorkerPool, stall: float = 30.0) -> dict[str, str]:
    """Wait until every key's execution is terminal; return the statuses.

    A loaded machine makes progress slow, not absent: this fails only when no further
    execution finished for ``stall`` seconds (the test's own timeout bounds the total).

    Raises:
        AssertionError: no progress for ``stall`` seconds (with the pool's log).
    """
    terminal = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")
    done, last_progress = -1, time.monotonic()
    while True:
        found = statuses(pg_url, keys)
        finished = sum(1 for s in found.values() if s in terminal)
        if finished == len(keys):
            return found
        if finished > done:
            done, last_progress = finished, time.monotonic()
        elif time.monotonic() - last_progress > stall:
            open_ = sorted(k for k in keys if found.get(k) not in terminal)
            raise AssertionError(
                f"{len(open_)} of {len(keys)} executions not terminal, none finished for "
                f"{stall:g}s (e.g. {open_[:5]}: {[found.get(k) for k in open_[:5]]})\n"
                f"{pool.log_tail()}"
            )
        time.sleep(0.25)


def statuses(pg_url: str, keys: Sequence[str]) -> dict[str, str]:
    """The execution status of each key that has an execution."""
    import psycopg2

    conn = psycopg2.connect(pg_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT dedup_key, status FROM execution WHERE dedup_key = ANY(%s)", (list(keys),))
            return dict(cur.fetchall())
    finally:
        conn.close()
