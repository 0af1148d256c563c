"""Liveness and readiness: ``/readyz`` follows RabbitMQ and the database, ``/healthz`` does not.

The broker is a RabbitMQ node of this test's own (``tests.own_rabbitmq``), SIGKILLed and
started again; the database is this test's own, closed to connections for a while
(``ALLOW_CONNECTIONS false`` and its sessions ended). Both the ingress (with the
management API: one process) and a worker pool's exporter are asked:

* while both are up, ``/readyz`` is 200 and names every check ``ok``;
* with the broker gone, ``/readyz`` is 503 naming the broker, while ``/healthz`` stays 200
  (restarting the process would not bring the broker back) and webhooks are answered 503;
* with the broker back, ``/readyz`` is 200 again, without restarting anything;
* with the database closed, ``/readyz`` is 503 naming the database; then 200 again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shiftflow.kernel.db import bind_database
from shiftflow.kernel.settings import Settings, configure
from shiftflow.kernel.signatures import signed_headers
from shiftflow.models.manage import catalog
from shiftflow.models.tables import webhook_secrets
from shiftflow.producers.app import create_app
from tests.integration.api_support import SIMPLE, serve
from tests.own_rabbitmq import OwnRabbitMQ
from tests.support.ports import free_port
from tests.support.postgres import pg_admin
from tests.support.waiting import wait_until

SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))


@pytest.fixture
def rabbit() -> Iterator[OwnRabbitMQ]:
    node = OwnRabbitMQ()
    try:
        node.start()
        yield node
    finally:
        node.close()


def ready(base: str) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{base}/readyz", timeout=10)
    return response.status_code, response.json()


def becomes(base: str, status: int, naming: str = "", timeout: float = 45.0) -> dict[str, Any]:
    """Wait until ``/readyz`` answers ``status`` (and its error names ``naming``); its body."""

    def answered() -> dict[str, Any] | None:
        code, body = ready(base)
        return body if code == status and naming in body.get("error", "") else None

    return wait_until(answered, timeout=timeout, interval=0.25, message=f"{base}/readyz answering {status} {naming}")


def alive(base: str) -> bool:
    response = httpx.get(f"{base}/healthz", timeout=10)
    return response.status_code == 200 and response.text == "ok"


def database_open(pg_admin_url: str, name: str, allowed: bool) -> None:
    with pg_admin(pg_admin_url) as conn, conn.cursor() as cur:
        cur.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')
        if not allowed:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


@pytest.mark.timeout(300)
def test_readyz_follows_the_broker_and_the_database_and_healthz_does_not(
    rabbit: OwnRabbitMQ, pg_url: str, pg_admin_url: str, tmp_path: Path
) -> None:
    env = {
        "SHIFTFLOW_MODE": "production",
        "SHIFTFLOW_AMQP_URL": rabbit.url,
        "SHIFTFLOW_DATABASE_URL": pg_url,
        "SHIFTFLOW_MONGO_URL": "mongodb://127.0.0.1:9/?retryWrites=false",
        "SHIFTFLOW_METRICS_PORT": str(free_port()),
        "SHIFTFLOW_METRICS_DIR": str(tmp_path / "metrics"),
        "SHIFTFLOW_TIMERS": "off",
        "SHIFTFLOW_SECRET_KEYS": "readiness-secret-key-of-at-least-32-characters",
    }
    settings = configure(Settings.from_env(env))
    bind_database(pg_url)
    workflow = catalog.apply_definition(catalog.ensure_workspace("ready"), dict(SIMPLE, name="ready")).workflow
    hook = catalog.create_webhook(workflow)
    pool_base = f"http://127.0.0.1:{settings.metrics_port}"
    with (tmp_path / "pool.log").open("wb") as log:
        pool = subprocess.Popen([SHIFTFLOW, "workers", "--queues", "triggers", "steps", "--processes", "1"],
                                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        with serve(create_app(settings)) as base:
            both = (base, pool_base)
            for where in both:
                body = becomes(where, 200)
                assert body == {"status": "ready", "checks": {"broker": "ok", "database": "ok"}}, (where, body)

            rabbit.stop()  # SIGKILL: the broker vanishes
            for where in both:
                body = becomes(where, 503, "broker: ")
                assert body["checks"]["database"] == "ok" and body["checks"]["broker"] != "ok"
                assert alive(where), where
            webhook = b'{"n": 1}'
            answer = httpx.post(f"{base}/hooks/{hook.token}", content=webhook, timeout=15,
                                headers=signed_headers("standard", webhook_secrets.reveal(hook)[0], webhook,
                                                                    int(time.time()), "r-1"))
            assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
            assert httpx.get(f"{base}/readyz", timeout=10).headers["retry-after"] == "5"

            rabbit.start()
            for where in both:
                becomes(where, 200, timeout=60)  # the publisher reconnects on its own

            name = pg_url.rsplit("/", 1)[1]
            database_open(pg_admin_url, name, False)
            try:
                for where in both:
                    body = becomes(where, 503, "database: ")
                    assert body["checks"]["broker"] == "ok"
                    assert alive(where), where
            finally:
                database_open(pg_admin_url, name, True)
            for where in both:
                becomes(where, 200)
        assert pool.poll() is None, (tmp_path / "pool.log").read_text()[-3000:]
    finally:
        pool.terminate()
        try:
            pool.wait(30)
        except subprocess.TimeoutExpired:
            pool.kill()
            pool.wait(10)
