"""ShiftFlow through PgBouncer in transaction pooling mode, with server connections bounded.

A PgBouncer of this test's own (tests/support/own_pgbouncer.py: deploy/pgbouncer.ini's
settings, a pool of ``POOL`` server connections) sits in front of the test's database on
the machine's PostgreSQL. Every ShiftFlow connection goes through it:

* a worker pool of 2 processes x 16 threads (32 threads, each with its own Peewee
  connection) runs ``EXECUTIONS`` three-step executions;
* two scheduler loops claim due schedules with ``FOR UPDATE SKIP LOCKED`` meanwhile;
* the ingress accepts ``WEBHOOKS`` signed webhooks (endpoint lookup through the pooler);
* the management API answers;
* migrations run through ``shiftflow migrate`` on SHIFTFLOW_DATABASE_DIRECT_URL.

A sampler reads ``SHOW POOLS`` and ``pg_stat_activity`` all along: the server
connections stay at most ``POOL`` while 32 threads and the producers work, and every
execution completes once.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg2
import pytest

from tests.reliability.checker import check
from tests.reliability.rig import Rig
from tests.reliability.waiting import wait_terminal
from tests.reliability.workflows import http_step
from tests.support.own_pgbouncer import OwnPgBouncer
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration]

POOL = 6
#: What PgBouncer's server connections call themselves in pg_stat_activity.
APPLICATION_NAME = "sf-pgbouncer"
EXECUTIONS = 120
SCHEDULES = 40
WEBHOOKS = 20
TICKER = {"name": "ticker", "trigger": {"type": "manual"},
          "steps": [{"id": "noop", "type": "transform", "with": {"output": {"ok": True}}}]}


def _steady(url: str) -> dict[str, Any]:
    return {
        "name": "pooled",
        "trigger": {"type": "manual"},
        "vars": {"url": url},
        "steps": [
            {"id": "check", "type": "condition", "with": {"left": "{{ trigger.n }}", "op": ">=", "right": 0}},
            http_step("call", "{{ trigger.n }}"),
            {"id": "done", "type": "transform", "with": {"output": {"n": "{{ steps.call.output.json.echo.n }}"}}},
        ],
    }


class Sampler:
    """Samples the pooler's server connections and PostgreSQL's backends on the database."""

    def __init__(self, bouncer: OwnPgBouncer, pg_url: str) -> None:
        self.bouncer, self.pg_url = bouncer, pg_url
        self.database = urlsplit(pg_url).path.lstrip("/")
        self.max_servers = 0
        self.max_backends = 0
        self.max_waiting = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _backends(self, cur: Any) -> int:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend' AND application_name = %s",
            (self.database, APPLICATION_NAME),
        )
        return int(cur.fetchone()[0])

    def _run(self) -> None:
        conn = psycopg2.connect(self.pg_url, application_name="sf-direct")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not self._stop.wait(0.1):
                    self.max_servers = max(self.max_servers, self.bouncer.server_connections())
                    waiting = sum(int(p["cl_waiting"]) for p in self.bouncer.pools()  # type: ignore[call-overload]
                                  if p["database"] == self.database)
                    self.max_waiting = max(self.max_waiting, waiting)
                    self.max_backends = max(self.max_backends, self._backends(cur))
                    self.samples += 1
        finally:
            conn.close()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.fixture
def bouncer(pg_url: str) -> Iterator[OwnPgBouncer]:
    own = OwnPgBouncer(pg_url, pool_size=POOL, application_name=APPLICATION_NAME)
    own.start()
    try:
        yield own
    finally:
        own.close()


def test_without_ignoring_startup_options_pgbouncer_refuses_shiftflow(pg_url: str) -> None:
    """Why deploy/pgbouncer.ini lists ``options`` in ignore_startup_parameters: ShiftFlow's
    connections ask for their statement timeout in the startup packet."""
    import peewee

    from shiftflow.kernel.db import make_database

    own = OwnPgBouncer(pg_url, pool_size=2, overrides={"ignore_startup_parameters": "extra_float_digits"})
    own.start()
    try:
        db = make_database(own.url)
        with pytest.raises(peewee.OperationalError, match="unsupported startup parameter"):
            db.connect()
    finally:
        own.close()


def test_statement_timeout_holds_through_the_pooler(bouncer: OwnPgBouncer) -> None:
    from shiftflow.kernel.db import make_database

    db = make_database(bouncer.url)
    db.connect()
    try:
        assert db.execute_sql("SHOW statement_timeout").fetchone()[0] == "30s"  # connect_query
    finally:
        db.close()


@pytest.mark.timeout(420)
def test_engine_scheduler_api_and_migrations_through_transaction_pooling(
    bouncer: OwnPgBouncer, real_env: dict[str, str], pg_url: str, tmp_path: Path
) -> None:
    import subprocess
    import sys

    pooled = {**real_env, "SHIFTFLOW_DATABASE_URL": bouncer.url, "SHIFTFLOW_DATABASE_DIRECT_URL": pg_url}
    # Migrations: on the direct URL (nothing pending on the test's database, but the run
    # takes the migration lock and reads schema_migrations there).
    migrate = subprocess.run(
        [sys.executable, "-c", "import sys; from shiftflow.cli import main; sys.exit(main(['migrate']))"],
        env=pooled, capture_output=True, text=True, timeout=120,
    )
    assert migrate.returncode == 0 and "0 migration(s) pending" in migrate.stdout, migrate.stdout + migrate.stderr

    with Rig(real_env, pg_url, tmp_path / "logs", extra_env=pooled) as rig, Sampler(bouncer, pg_url) as sampler:
        workflow = rig.workflow(_steady(rig.service.url))
        ticker = rig.workflow(TICKER)
        pool = rig.pool(processes=2, threads=16)
        pool.start()
        pool.wait_ready()
        stop = threading.Event()
        fired = _scheduler_loops(pooled, ticker, stop)
        keys = []
        for n in range(EXECUTIONS):
            key = f"pooled-{n}"
            assert rig.publisher.trigger(workflow, key, {"n": n})
            keys.append(key)
        api = _api_through_the_pooler(pooled)
        keys += _webhooks_through_the_pooler(pooled, workflow)
        statuses = wait_terminal(pg_url, keys, pool, stall=90)
        stop.set()
        scheduled = fired()
        # Each published firing becomes one execution once a worker took its trigger.
        wait_until(lambda: len(_dedup_keys(pg_url, ticker)) >= scheduled, timeout=120)
        ticks = _dedup_keys(pg_url, ticker)
        statuses.update(wait_terminal(pg_url, ticks, pool, stall=90))
        report = check(pg_url, keys + ticks, rig.service.recorded())

    print(
        f"\n{EXECUTIONS} executions + {WEBHOOKS} webhooks on 32 worker threads + 2 scheduler loops ({scheduled} schedule firings) "
        f"+ API ({api}) through a pool of {POOL}: max server connections {sampler.max_servers}, "
        f"max backends on the database {sampler.max_backends}, max clients waiting {sampler.max_waiting} "
        f"({sampler.samples} samples)\n{report.summary()}"
    )
    assert set(statuses.values()) == {"SUCCEEDED"}
    assert len(ticks) == scheduled  # each scheduled slot fired once, into one execution
    assert report.counts == {
        "completed_once": EXECUTIONS + WEBHOOKS + len(ticks), "lost": 0, "duplicated": 0, "unexpected": 0}, (
        report.problems()
    )
    assert sampler.samples > 10
    assert 0 < sampler.max_servers <= POOL
    assert sampler.max_backends <= POOL
    assert scheduled > 0


def _scheduler_loops(env: dict[str, str], workflow_id: str, stop: threading.Event) -> Any:
    """Two scheduler loops (threads of this process) on the pooled URL; returns a function
    that waits for them and returns how many firings they published (each slot once)."""
    from shiftflow.kernel.batch_publisher import ConfirmedBatchPublisher
    from shiftflow.kernel.broker import build_broker
    from shiftflow.kernel.db import bind_database
    from shiftflow.kernel.settings import Settings, configure
    from shiftflow.models.tables.workflows import Workflow
    from shiftflow.producers.scheduler.config import add_schedule, build_config
    from shiftflow.producers.scheduler.loop import Scheduler

    settings = configure(Settings.from_env(env))
    bind_database(settings.database_url)
    broker = build_broker(settings, worker=False)
    broker.declare_queue("triggers", ensure=True)
    workflow = Workflow.get_by_id(workflow_id)
    now = dt.datetime.now(dt.UTC)
    for i in range(SCHEDULES):
        add_schedule(workflow, build_config(every="1"), key=f"s{i}", now=now)
    counts = [0, 0]

    def loop(index: int) -> None:
        class Counting(ConfirmedBatchPublisher):
            def publish_all(self, messages: Any, while_waiting: Any = None) -> None:
                super().publish_all(messages, while_waiting)
                counts[index] += len(messages)

        Scheduler(Counting(settings.amqp_urls, broker), batch_size=10).run(stop, tick_seconds=0.1)

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(2)]
    for thread in threads:
        thread.start()

    def fired() -> int:
        for thread in threads:
            thread.join(30)
        broker.close()
        return sum(counts)

    return fired


def _dedup_keys(pg_url: str, workflow_id: str) -> list[str]:
    conn = psycopg2.connect(pg_url, application_name="sf-direct")
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT dedup_key FROM execution WHERE workflow_id = %s", (workflow_id,))
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


def _api_through_the_pooler(env: dict[str, str]) -> str:
    from shiftflow.kernel.settings import Settings, configure
    from shiftflow.producers.app import create_app
    from tests.integration.api_support import seed_tenant, serve

    settings = configure(Settings.from_env(env))
    tenant = seed_tenant("pooled")
    with serve(create_app(settings)) as base:
        listed = httpx.get(f"{base}/api/v1/workflows", headers=tenant.auth(), timeout=30)
        assert listed.status_code == 200, listed.text
        return f"GET /api/v1/workflows {listed.status_code}"


def _webhooks_through_the_pooler(env: dict[str, str], workflow_id: str) -> list[str]:
    """POST ``WEBHOOKS`` signed webhooks to an ingress on the pooled URL (its endpoint
    lookup and quota reads go through PgBouncer); return their dedup keys."""
    import json
    import time

    from shiftflow.kernel.db import database
    from shiftflow.kernel.settings import Settings, configure
    from shiftflow.kernel.signatures import signed_headers
    from shiftflow.models.manage import catalog
    from shiftflow.models.tables import webhook_secrets
    from shiftflow.models.tables.workflows import Workflow
    from shiftflow.producers.ingress.app import create_app
    from tests.integration.api_support import serve

    settings = configure(Settings.from_env(env))
    with database.connection_context():
        hook = catalog.create_webhook(Workflow.get_by_id(workflow_id))
        secret = webhook_secrets.reveal(hook)[0]
    keys = []
    with serve(create_app(settings)) as base:
        for i in range(WEBHOOKS):
            raw = json.dumps({"n": 1000 + i}).encode()
            headers = signed_headers("standard", secret, raw, int(time.time()), f"msg_pooled_{i}")
            headers["content-type"] = "application/json"
            answer = httpx.post(f"{base}/hooks/{hook.token}", content=raw, headers=headers, timeout=30)
            assert answer.status_code == 202, answer.text
            keys.append(f"standard:msg_pooled_{i}")
    return keys
