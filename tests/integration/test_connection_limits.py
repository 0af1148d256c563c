"""A connection's own rate limits, over its integration's: set and shown through the API and
the CLI (a bad field is a 422 / exit 2 naming it, nothing written), and enforced through
the shared Redis limiter: tool steps of an in-process worker and a second process taking
from the same connection make at most N calls to a local server in the window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.enqueue import send
from shiftflow.models.manage import catalog
from shiftflow.models.tables.audit_log import AuditLog
from shiftflow.models.tables.executions import StepExecution
from shiftflow.models.tables.integrations import Connection
from shiftflow.producers.app import create_app
from tests.integration.api_support import seed_tenant, serve, worker
from tests.support.waiting import wait_until
from tests.tool_servers import PageServer

pytestmark = pytest.mark.integration

CREDENTIALS = {"auth": "bearer", "token": "tok-0123456789", "base_url": "https://api.example.com"}


@pytest.fixture
def api(real_env: dict[str, str], tmp_path: Any) -> Iterator[dict[str, Any]]:
    with worker({**real_env, "SHIFTFLOW_ARTIFACT_DIR": str(tmp_path / "a")}) as settings:
        a, b = seed_tenant("alpha"), seed_tenant("beta")
        with serve(create_app(settings)) as base, httpx.Client(base_url=base + "/api/v1", timeout=30) as client:
            yield {"client": client, "a": a, "b": b}


def test_the_api_sets_shows_validates_and_clears_a_connections_own_limits(api):
    c, a, b = api["client"], api["a"], api["b"]
    body = {"integration": "http", "name": "crm", "credentials": CREDENTIALS,
            "rate_limits": {"per_minute": 30, "burst": 2}}
    for bad, field in (({"per_second": -1}, "rate_limits.per_second"), ({"colour": 1}, "rate_limits"),
                       ({"burst": 0}, "rate_limits.burst"), ("fast", "rate_limits")):
        refused = c.post("/connections", json={**body, "rate_limits": bad}, headers=a.auth("ADMIN"))
        assert refused.status_code == 422 and field in refused.json()["error"], (bad, refused.text)
    assert Connection.select().count() == 0  # nothing written

    made = c.post("/connections", json=body, headers=a.auth("ADMIN"))
    assert made.status_code == 201, made.text
    conn = made.json()
    assert conn["rate_limits"] == {"per_minute": 30, "burst": 2}
    assert conn["effective_limits"]["per_minute"] == 30 and conn["effective_limits"]["burst"] == 2
    shown = c.get(f"/connections/{conn['id']}", headers=a.auth("VIEWER")).json()
    assert shown["rate_limits"] == conn["rate_limits"]
    [listed] = c.get("/connections", headers=a.auth("VIEWER")).json()["items"]
    assert listed["rate_limits"] == conn["rate_limits"]
    assert c.get(f"/connections/{conn['id']}", headers=b.auth("OWNER")).status_code == 404

    bad = c.patch(f"/connections/{conn['id']}", json={"rate_limits": {"per_minute": "lots"}}, headers=a.auth("ADMIN"))
    assert bad.status_code == 422 and "rate_limits.per_minute" in bad.json()["error"]
    whole = c.patch(f"/connections/{conn['id']}", json={"rate_limits": {"burst": 2.0}}, headers=a.auth("ADMIN"))
    assert whole.status_code == 200 and whole.json()["rate_limits"] == {"burst": 2}, whole.text  # 2.0 is whole
    changed = c.patch(f"/connections/{conn['id']}", json={"rate_limits": {"per_second": 1}}, headers=a.auth("ADMIN"))
    assert changed.status_code == 200 and changed.json()["rate_limits"] == {"per_second": 1}
    renamed = c.patch(f"/connections/{conn['id']}", json={"name": "crm2"}, headers=a.auth("ADMIN")).json()
    assert renamed["rate_limits"] == {"per_second": 1}  # left out: unchanged
    cleared = c.patch(f"/connections/{conn['id']}", json={"rate_limits": None}, headers=a.auth("ADMIN")).json()
    assert cleared["rate_limits"] is None and Connection.get().rate_limits is None
    updates = [e.metadata["changed"] for e in AuditLog.select().where(AuditLog.action == "connection.updated")
               .order_by(AuditLog.created_at)]
    assert updates == [["rate_limits"], ["rate_limits"], ["name"], ["rate_limits"]]


def test_the_cli_sets_shows_and_clears_a_connections_own_limits(real_env, monkeypatch, capsys):
    from shiftflow.cli.main import main

    for name, value in real_env.items():
        monkeypatch.setenv(name, value)
    bind_database(real_env["SHIFTFLOW_DATABASE_URL"])
    catalog.ensure_workspace("cli")
    printed: list[str] = []

    def run(*argv: str) -> int:
        code = main(list(argv))
        captured = capsys.readouterr()
        printed.append(captured.out + captured.err)
        return code

    sets = [f"--set={k}={v}" for k, v in CREDENTIALS.items()]
    assert run("connections", "create", "http", "crm", "--workspace", "cli", *sets, "--limit", "burst=0") == 2
    assert "rate_limits.burst" in printed[-1] and Connection.select().count() == 0
    assert run("connections", "create", "http", "crm", "--workspace", "cli", *sets,
               "--limit", "per_minute=12", "--limit", "burst=3") == 0
    assert "rate limits: " in printed[-1] and "own: per_minute 12, burst 3" in printed[-1]
    assert run("connections", "list", "--workspace", "cli") == 0 and "limits: per_minute 12, burst 3" in printed[-1]
    assert run("connections", "show", "crm", "--workspace", "cli", "--json") == 0
    assert json.loads(printed[-1])["rate_limits"] == {"per_minute": 12, "burst": 3}
    assert run("connections", "update", "crm", "--workspace", "cli", "--limit", "per_second=2") == 0
    assert Connection.get().rate_limits == {"per_second": 2}
    assert run("connections", "update", "crm", "--workspace", "cli", "--no-limits") == 0
    assert Connection.get().rate_limits is None and "(the integration's)" in printed[-1]
    with pytest.raises(SystemExit):
        main(["connections", "create", "--help"])
    assert "per_second=2" in capsys.readouterr().out


#: A second process taking from the same connection's buckets in Redis, as another worker
#: would: each admitted take makes one call to the server; prints how many it made.
_OTHER_WORKER = """
import os, sys, httpx, redis
from shiftflow.kernel.integrations.ratelimit import IntegrationLimiter
from shiftflow.kernel.settings import Settings
url, connection, server, limits = sys.argv[1], sys.argv[2], sys.argv[3], __import__("json").loads(sys.argv[4])
limiter = IntegrationLimiter(settings=Settings.from_env(dict(os.environ)), redis_client=redis.Redis.from_url(url))
made = 0
for _ in range(10):
    if limiter.acquire("http", connection, override=limits) is None:
        httpx.get(server + "/api/hit", params={"by": "other"}); made += 1
print(made)
"""


def test_two_workers_sharing_a_connections_override_make_at_most_n_calls_in_the_window(real_env, tmp_path):
    """Override: 3 calls a minute (burst 3), where the http integration alone would admit
    far more. Eight tool steps in a worker of four threads and a second process trying ten
    calls: the server sees exactly three in the window; the steps over it are parked."""
    hits: list[tuple[float, str]] = []

    def hit(handler: Any) -> tuple[int, dict[str, str], bytes]:
        hits.append((time.monotonic(), "other" if "by=other" in handler.path else "engine"))
        return 200, {"Content-Type": "application/json"}, b'{"ok": true}'

    server = PageServer({"/api/hit": hit})
    limits = {"per_second": 0, "per_minute": 3, "burst": 3}
    try:
        with worker({**real_env, "SHIFTFLOW_ARTIFACT_DIR": str(tmp_path / "a")}, threads=4):
            workspace = catalog.ensure_workspace("limits")
            from shiftflow.models.manage.access import Principal
            from shiftflow.models.manage.connections import create_connection

            conn = create_connection(Principal.operator(workspace.id), "http", "api",
                                     {"auth": "none", "base_url": server.url + "/api"},
                                     rate_limits=limits)
            workflow = catalog.apply_definition(workspace, {
                "name": "calls", "trigger": {"type": "manual"},
                "steps": [{"id": "call", "type": "tool", "tool": "http.request", "connection": "api",
                           "with": {"url": server.url + "/api/hit"}}]}).workflow
            start = time.monotonic()
            for n in range(8):
                send("triggers.start", TriggerPayload(workflow_id=str(workflow.id), dedup_key=f"k{n}-{uuid.uuid4()}",
                                                      source="manual", data={}))
            other = subprocess.run([sys.executable, "-c", _OTHER_WORKER, real_env["SHIFTFLOW_REDIS_URL"], conn["id"],
                                    server.url, json.dumps(limits)], capture_output=True, text=True, timeout=60,
                                   env={**os.environ, **real_env})
            assert other.returncode == 0, other.stderr

            def settled() -> list[StepExecution] | None:
                steps = list(StepExecution.select().where(StepExecution.step_id == "call"))
                done = [s for s in steps if s.status == "SUCCEEDED" or s.retry_count > 0]
                return steps if len(steps) == 8 and len(done) == 8 else None

            steps = wait_until(settled, timeout=30, message="every step called or parked")
            time.sleep(1.0)
            window = [h for h in hits if h[0] - start < 15]
    finally:
        server.close()

    assert len(window) == 3, hits  # at most N (and the limit is not stricter than asked)
    engine_calls = sum(1 for _, who in window if who == "engine")
    assert engine_calls + int(other.stdout.strip()) == 3
    parked = [s for s in steps if s.retry_count > 0]
    assert len(parked) == 8 - engine_calls and all(s.status == "PENDING" for s in parked)
