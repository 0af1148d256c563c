"""Tool executions and queue jobs through the management API and the CLI, on real PostgreSQL.

Rows are planted as the engine writes them (tests/integration/test_tool_calls.py and the
page-digest acceptance test cover the writing): here the point is what a reader gets
back. The secrets planted in them (a connection's webhook token echoed in an answer and
an error, a key that looks secret, a parameter the tool marks ``x-secret``) must never
come back; another workspace's rows are 404; queue jobs page newest first.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from shiftflow.models.manage import catalog, connections
from shiftflow.models.manage.access import Principal
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.queue_jobs import QueueJob
from shiftflow.models.tables.tools import Tool as ToolRow
from shiftflow.models.tables.tools import ToolExecution
from shiftflow.producers.app import create_app
from tests.integration.api_support import seed_tenant, serve, worker

pytestmark = pytest.mark.integration

TOKEN = "T0KEN-a81f3c9e55d2"  # the chat webhook's secret part
HOOK = f"http://127.0.0.1:9/hooks/{TOKEN}"
PASSPHRASE = "marked-secret-value-4471"
PASSWORD = "keyed-secret-value-9c21"


@pytest.fixture
def api(real_env: dict[str, str], tmp_path: Any) -> Iterator[dict[str, Any]]:
    env = {**real_env, "SHIFTFLOW_ARTIFACT_DIR": str(tmp_path / "artifacts")}
    with worker(env, threads=1) as settings:
        a, b = seed_tenant("alpha", roles=("VIEWER",)), seed_tenant("beta", roles=("VIEWER",))
        with serve(create_app(settings)) as base:
            with httpx.Client(base_url=base + "/api/v1", timeout=30) as client:
                yield {"client": client, "a": a, "b": b, "settings": settings, "env": env}


def _plant(tenant: Any, settings: Any, *, jobs: int = 1) -> dict[str, Any]:
    """An execution of a two-step workflow (a chat notification, a plugin-like tool whose
    schema marks ``passphrase`` secret) with one tool execution per step and ``jobs`` jobs."""
    operator = Principal.operator(tenant.workspace.id)
    connections.create_connection(operator, "slack", "team-chat", {"webhook_url": HOOK}, settings=settings)
    workflow = catalog.apply_definition(tenant.workspace, {
        "name": "notify", "trigger": {"type": "manual"},
        "steps": [{"id": "note", "type": "tool", "tool": "notify.chat", "connection": "team-chat",
                   "with": {"text": "hello"}}]}).workflow
    execution = Execution.create(workflow=workflow.id, workflow_version=1, workspace=tenant.workspace.id,
                                 dedup_key=f"plant:{tenant.workspace.slug}", status="FAILED",
                                 completed_at=dt.datetime(2030, 1, 1, 12, 1), error="step note: 403")
    note = StepExecution.create(execution=execution.id, step_id="note", step_type="tool", status="SUCCEEDED")
    chat = ToolRow.get_or_create(name="notify.chat", defaults={"display_name": "notify.chat", "queue": "tools"})[0]
    marked = ToolRow.get_or_create(name="test.marked", defaults={
        "display_name": "test.marked", "parameters_schema": {
            "type": "object", "properties": {"passphrase": {"type": "string", "x-secret": True},
                                             "label": {"type": "string"}}}})[0]
    start = dt.datetime(2030, 1, 1, 12, 0, 0)
    call = ToolExecution.create(
        workspace=tenant.workspace.id, tool=chat.id, execution=execution.id, step_execution=note.id, attempt=1,
        queue="tools", status="FAILED", created_at=start, started_at=start, completed_at=start, duration_ms=12,
        input={"text": f"see {HOOK}", "password": PASSWORD},
        output={"echo": f"posted to {HOOK}", "quoted": json.dumps(HOOK)},
        error=f"403 from {quote(HOOK, safe='')}")  # as a URL's query echoes it
    other = StepExecution.create(execution=execution.id, step_id="other", step_type="tool", status="SUCCEEDED")
    marked_call = ToolExecution.create(
        workspace=tenant.workspace.id, tool=marked.id, execution=execution.id, step_execution=other.id,
        attempt=1, queue="tools", status="SUCCEEDED", created_at=start + dt.timedelta(seconds=1),
        input={"passphrase": PASSPHRASE, "label": "kept"}, output={"ok": True})
    planted = []
    for n in range(jobs):
        planted.append(QueueJob.create(
            workspace=tenant.workspace.id, message_id=f"{tenant.workspace.slug}-{n}", queue="tools", actor="tools.call",
            execution=execution.id, status="FAILED" if n == 0 else "SUCCEEDED", attempts=1, max_attempts=4,
            error=f"403 from {HOOK}" if n == 0 else None, data={"step_id": "note", "iteration": 0,
                                                                 "tool": "notify.chat"},
            created_at=start - dt.timedelta(seconds=1) + dt.timedelta(minutes=n), started_at=start,
            failed_at=start if n == 0 else None, completed_at=start if n else None))
    return {"execution": execution, "call": call, "marked": marked_call, "jobs": planted}


def _leaks(text: str) -> list[str]:
    return [s for s in (TOKEN, PASSPHRASE, PASSWORD) if s in text]


def test_tool_executions_come_back_masked_with_their_step_tool_and_connection(api):
    c, a = api["client"], api["a"]
    planted = _plant(a, api["settings"])
    execution_id = planted["execution"].id

    listed = c.get(f"/executions/{execution_id}/tool-executions", headers=a.auth("VIEWER"))
    assert listed.status_code == 200, listed.text
    assert _leaks(listed.text) == [], listed.text
    first, second = listed.json()["items"]
    assert (first["step_id"], first["tool"], first["connection"], first["status"], first["attempt"],
            first["duration_ms"], first["queue"]) == ("note", "notify.chat", "team-chat", "FAILED", 1, 12, "tools")
    assert first["input"] == {"text": "see ***", "password": "***"}
    assert first["output"] == {"echo": "posted to ***", "quoted": '"***"'}
    assert first["error"] == "403 from ***"
    assert (second["tool"], second["connection"], second["input"]) == \
        ("test.marked", None, {"passphrase": "***", "label": "kept"})

    one = c.get(f"/tool-executions/{planted['call'].id}", headers=a.auth("VIEWER"))
    assert one.status_code == 200 and one.json() == first and _leaks(one.text) == []


def test_queue_jobs_page_newest_first_filter_and_link_their_tool_executions(api):
    c, a = api["client"], api["a"]
    planted = _plant(a, api["settings"], jobs=5)
    auth = a.auth("VIEWER")

    seen, cursor = [], None
    while True:
        page = c.get("/queue-jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=auth)
        assert page.status_code == 200, page.text
        seen += [j["message_id"] for j in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"alpha-{n}" for n in (4, 3, 2, 1, 0)]
    failed = c.get("/queue-jobs", params={"status": "FAILED", "queue": "tools"}, headers=auth).json()["items"]
    assert [j["message_id"] for j in failed] == ["alpha-0"] and _leaks(json.dumps(failed)) == []
    assert c.get("/queue-jobs", params={"queue": "tools.email"}, headers=auth).json()["items"] == []
    bad = c.get("/queue-jobs", params={"status": "LOST"}, headers=auth)
    assert bad.status_code == 422 and "status" in bad.json()["error"]

    job = c.get(f"/queue-jobs/{planted['jobs'][0].id}", headers=auth)
    assert job.status_code == 200, job.text
    body = job.json()
    assert (body["queue"], body["status"], body["attempts"], body["max_attempts"], body["progress"],
            body["step_id"], body["tool"], body["execution_id"]) == \
        ("tools", "FAILED", 1, 4, 0, "note", "notify.chat", str(planted["execution"].id))
    assert body["tool_execution_id"] == str(planted["call"].id) and _leaks(job.text) == []


def test_another_workspaces_tool_executions_and_jobs_are_404_and_never_listed(api):
    c, a, b = api["client"], api["a"], api["b"]
    theirs = _plant(b, api["settings"])
    _plant(a, api["settings"])
    auth = a.auth("VIEWER")
    for path in (f"/executions/{theirs['execution'].id}/tool-executions", f"/tool-executions/{theirs['call'].id}",
                 f"/queue-jobs/{theirs['jobs'][0].id}"):
        assert c.get(path, headers=auth).status_code == 404, path
    listed = c.get("/queue-jobs", headers=auth).json()["items"]
    assert listed and all(j["message_id"].startswith("alpha-") for j in listed)


def test_the_cli_shows_the_same_records_as_a_table_and_as_json(api):
    planted = _plant(api["a"], api["settings"], jobs=2)
    shiftflow = str(Path(sys.executable).with_name("shiftflow"))
    env = {**os.environ, **api["env"]}

    def run(*args: str) -> str:
        done = subprocess.run([shiftflow, "tools", *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert _leaks(done.stdout + done.stderr) == []
        return done.stdout

    table = run("executions", str(planted["execution"].id), "--workspace", "alpha")
    assert table.splitlines()[0].split()[:4] == ["step", "tool", "connection", "try"]
    assert "notify.chat" in table and "team-chat" in table and "FAILED" in table
    as_json = json.loads(run("executions", str(planted["execution"].id), "--json"))
    assert as_json[0]["input"]["password"] == "***"
    jobs = run("jobs", "--workspace", "alpha", "--status", "FAILED")
    assert "alpha" not in jobs.splitlines()[0] and str(planted["jobs"][0].id) in jobs
    one = json.loads(run("jobs", str(planted["jobs"][0].id), "--json"))
    assert one["tool_execution_id"] == str(planted["call"].id)
    bad = subprocess.run([shiftflow, "tools", "jobs", "--status", "LOST"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "status" in bad.stderr
