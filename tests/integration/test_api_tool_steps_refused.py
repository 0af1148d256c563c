"""A workflow whose tool steps cannot run is refused when applied through the API: a 422
naming the step's field, and nothing written (no workflow, no version, no audit entry).

Covers: an unknown tool, a tool the workspace disabled, parameters failing the tool's
schema as written, a connection the workspace does not have, and another workspace's
connection of that name. Real PostgreSQL, RabbitMQ and MongoDB-wire behind real HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shiftflow.models.manage import connections
from shiftflow.models.manage.access import Principal
from shiftflow.models.tables.audit_log import AuditLog
from shiftflow.models.tables.workflows import Workflow, WorkflowVersion
from shiftflow.producers.app import create_app
from tests.integration.api_support import seed_tenant, serve, worker

pytestmark = pytest.mark.integration

SMTP = {"host": "127.0.0.1", "port": 2525, "security": "none", "from": "robot@shiftflow.test"}


@pytest.fixture
def api(real_env: dict[str, str], tmp_path: Any) -> Iterator[dict[str, Any]]:
    env = {**real_env, "SHIFTFLOW_ARTIFACT_DIR": str(tmp_path / "artifacts")}
    with worker(env, threads=1) as settings:
        a, b = seed_tenant("alpha", roles=("OWNER",)), seed_tenant("beta", roles=("OWNER",))
        with serve(create_app(settings)) as base:
            with httpx.Client(base_url=base + "/api/v1", timeout=30) as client:
                yield {"client": client, "a": a, "b": b}


def _definition(mail: dict[str, Any]) -> dict[str, Any]:
    """Three steps before the mail step: its index is 3."""
    return {"name": "refused", "trigger": {"type": "manual"}, "steps": [
        {"id": "a", "type": "transform", "with": {"output": 1}},
        {"id": "b", "type": "transform", "with": {"output": 2}},
        {"id": "c", "type": "transform", "with": {"output": 3}},
        {"id": "mail", "type": "tool", "tool": "email.send", "connection": "smtp-main",
         "with": {"to": "ann@example.com", "subject": "hi", "text": "hello"}, **mail}]}


def _refused(api: dict[str, Any], mail: dict[str, Any], expected: str) -> None:
    c, a = api["client"], api["a"]
    before = (Workflow.select().count(), WorkflowVersion.select().count(), AuditLog.select().count())
    answer = c.post("/workflows", json={"definition": _definition(mail)}, headers=a.auth("OWNER"))
    assert answer.status_code == 422, answer.text
    assert expected in answer.json()["error"], answer.json()["error"]
    assert (Workflow.select().count(), WorkflowVersion.select().count(), AuditLog.select().count()) == before


def _connection(tenant: Any, name: str = "smtp-main") -> None:
    connections.create_connection(Principal.operator(tenant.workspace.id), "smtp", name, SMTP)


def test_an_unknown_tool_is_refused_naming_the_field(api):
    _connection(api["a"])
    _refused(api, {"tool": "email.sned"}, "steps[3].tool: unknown tool 'email.sned'")


def test_parameters_failing_the_schema_are_refused_naming_the_field(api):
    _connection(api["a"])
    _refused(api, {"with": {"to": "x", "subject": "hi", "text": "hello"}}, "steps[3].with.to: 'x' is not an email")


def test_a_tool_the_workspace_disabled_is_refused(api):
    c, a = api["client"], api["a"]
    _connection(a)
    assert c.put("/tools/email.send", json={"enabled": False}, headers=a.auth("OWNER")).status_code == 200
    _refused(api, {}, "steps[3].tool: email.send is disabled in this workspace")
    # Enabled again, the same definition is accepted.
    assert c.put("/tools/email.send", json={"enabled": True}, headers=a.auth("OWNER")).status_code == 200
    assert c.post("/workflows", json={"definition": _definition({})}, headers=a.auth("OWNER")).status_code == 201


def test_a_missing_connection_is_refused(api):
    _refused(api, {}, "steps[3].connection: no active connection 'smtp-main' in this workspace")


def test_another_workspaces_connection_is_refused(api):
    _connection(api["b"])  # beta has one of that name; alpha does not
    _refused(api, {}, "steps[3].connection: no active connection 'smtp-main' in this workspace")
