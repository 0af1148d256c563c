"""OAuth2 refresh-token connections in tool steps, against the local fake authorisation
server (``shiftflow.fakes.oauth2``, rotating refresh tokens) on real PostgreSQL, RabbitMQ
and Redis: an expired access token is refreshed by the engine, the new tokens are stored
encrypted (the column never holds a token in clear), the call succeeds; steps that need a
refresh at the same time refresh once, in one worker's threads and across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from shiftflow.fakes.oauth2 import FakeOAuth2Server
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.enqueue import send
from shiftflow.kernel.secretbox import vault_for
from shiftflow.models.manage import catalog
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.connections import create_connection
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.integrations import Connection
from tests.integration.api_support import worker
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SECRET = "client-secret-7d1e5a90c3"
EXPIRED = "at-expired-0123456789abcdef"


@pytest.fixture
def oauth() -> Iterator[FakeOAuth2Server]:
    with FakeOAuth2Server(expires_in=3600, rotate=True) as server:
        server.register("shiftflow-app", SECRET)
        yield server


def _connection(workspace: Any, server: FakeOAuth2Server) -> tuple[dict[str, Any], str]:
    refresh = server.issue_refresh_token("shiftflow-app", scope="read")
    made = create_connection(Principal.operator(workspace.id), "oauth2", "api", {
        "token_url": server.token_url, "client_id": "shiftflow-app", "client_secret": SECRET,
        "grant_type": "refresh_token", "refresh_token": refresh, "base_url": server.url,
        "access_token": EXPIRED, "token_type": "Bearer", "expires_at": time.time() - 30})
    return made, refresh


def _refreshes(server: FakeOAuth2Server) -> list[Any]:
    return [r for r in server.token_requests if r.grant_type == "refresh_token"]


def test_an_expired_token_is_refreshed_once_for_two_concurrent_steps_and_stored_encrypted(real_env, tmp_path,
                                                                                           oauth):
    oauth.delay = 1.0  # a slow token endpoint: both steps meet the refresh lock
    with worker({**real_env, "SHIFTFLOW_ARTIFACT_DIR": str(tmp_path / "a")}, threads=4) as settings:
        workspace = catalog.ensure_workspace("oauth")
        _, old_refresh = _connection(workspace, oauth)
        workflow = catalog.apply_definition(workspace, {
            "name": "protected", "trigger": {"type": "manual"},
            "steps": [{"id": "call", "type": "tool", "tool": "http.request", "connection": "api",
                       "with": {"url": oauth.url + "/resource"}}]}).workflow
        keys = [uuid.uuid4().hex for _ in range(2)]
        for key in keys:
            send("triggers.start", TriggerPayload(workflow_id=str(workflow.id), dedup_key=key, source="manual",
                                                  data={}))

        def finished() -> list[Execution] | None:
            rows = list(Execution.select().where(Execution.dedup_key.in_(keys)))
            return rows if len(rows) == 2 and all(r.status in ("SUCCEEDED", "FAILED") for r in rows) else None

        executions = wait_until(finished, timeout=60, message="both executions finished")

    assert [e.status for e in executions] == ["SUCCEEDED", "SUCCEEDED"], [e.error for e in executions]
    for execution in executions:
        step = StepExecution.get((StepExecution.execution == execution.id) & (StepExecution.step_id == "call"))
        assert step.output == {"status": 200, "json": {"ok": True}}
    [refresh] = _refreshes(oauth)  # once, though both steps found the token expired
    assert refresh.status == 200 and refresh.auth_method == "client_secret_basic"
    row = Connection.get(Connection.name == "api")
    stored = vault_for(settings.secret_keys).decrypt(row.credentials)
    [new_refresh] = oauth.active_refresh_tokens()  # rotated: the old one is dead
    assert stored["refresh_token"] == new_refresh != old_refresh
    assert stored["access_token"] not in (EXPIRED, "") and stored["expires_at"] > time.time() + 3000
    # Encrypted at rest: no token, old or new, and no client secret in the column.
    for value in (stored["access_token"], new_refresh, old_refresh, EXPIRED, SECRET):
        assert value not in row.credentials
    assert row.expires_at is not None  # in clear, for a sweeper


#: Another worker process: resolves the step's connection as a tool call does and prints
#: the access token it was given.
_RESOLVE = """
import os, sys
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.redis_handle import configure_redis
from shiftflow.kernel.settings import Settings, configure
from shiftflow.kernel.tools.registry import default_registry
from shiftflow.models.engine.tool_calls import credentials_for
settings = configure(Settings.from_env(dict(os.environ)))
bind_database(settings.database_url)
configure_redis(settings.redis_url)
go = float(sys.argv[2])
while __import__("time").time() < go:
    pass
print(credentials_for(sys.argv[1], "api", default_registry().get("http.request"), settings).credentials["token"])
"""


def test_two_worker_processes_refresh_a_connection_once(real_env, oauth, pg_url):
    """Across processes the refresh lock is Redis's: a second process meeting the expired
    token waits for the first one's refresh and uses its token (with rotation, a second
    refresh would present a used-up refresh token and fail)."""
    from shiftflow.kernel.db import bind_database

    bind_database(real_env["SHIFTFLOW_DATABASE_URL"])
    workspace = catalog.ensure_workspace("oauth-procs")
    _connection(workspace, oauth)
    oauth.delay = 1.0
    go = time.time() + 3.0
    env = {**os.environ, **real_env}
    procs = [subprocess.Popen([sys.executable, "-c", _RESOLVE, str(workspace.id), str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    tokens = {out.strip() for out, _ in outs}
    assert len(_refreshes(oauth)) == 1, json.dumps([r.status for r in _refreshes(oauth)])
    assert len(tokens) == 1 and EXPIRED not in tokens
