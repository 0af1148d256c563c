"""The management API over real HTTP (uvicorn) on real PostgreSQL, RabbitMQ and MongoDB-wire.

Two seeded workspaces, ``alpha`` (A) and ``beta`` (B), each with a member and an API key
per role. The endpoint lists come from the OpenAPI document, so an endpoint added
later is covered by the role-matrix, audit and tenant-isolation tests without edits
(or makes them fail until it is described).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
import uuid

import httpx
import pytest

from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.mongo import get_sink
from shiftflow.kernel.signatures import signed_headers
from shiftflow.models.engine.connection_secrets import store_connection
from shiftflow.models.engine.start import start_execution
from shiftflow.models.manage import catalog, connections, prompts, tasks
from shiftflow.models.manage.access import MATRIX, ROLES, Principal
from shiftflow.models.tables import webhook_secrets
from shiftflow.models.tables.artifacts import Artifact
from shiftflow.models.tables.audit_log import AuditLog
from shiftflow.models.tables.dead_letters import DeadLetter
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.patterns import PatternWorkspace
from shiftflow.models.tables.queue_jobs import QueueJob
from shiftflow.models.tables.side_effects import SideEffect
from shiftflow.models.tables.templates import WorkflowTemplate
from shiftflow.models.tables.tenancy import ApiKey, WorkspaceMember
from shiftflow.models.tables.tools import Tool as ToolRow
from shiftflow.models.tables.tools import ToolExecution
from shiftflow.models.tables.workflows import Workflow
from shiftflow.producers.api import spec
from shiftflow.producers.app import create_app
from tests.integration.api_support import SIMPLE, seed_tenant, serve, worker
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

#: A workflow that parks on a one-hour durable timer: an execution to cancel.
WAITING = {
    "name": "waiting",
    "trigger": {"type": "manual"},
    "steps": [
        {"id": "first", "type": "transform", "with": {"output": {"ok": True}}},
        {"id": "pause", "type": "wait", "with": {"seconds": 3600}},
        {"id": "after", "type": "transform", "with": {"output": {"done": True}}},
    ],
}

#: The audit action each mutating operation of the document writes.
AUDITED = {
    "updateWorkspace": "workspace.updated",
    "deleteWorkspace": "workspace.deleted",
    "addMember": "member.added",
    "setMemberRole": "member.role_changed",
    "removeMember": "member.removed",
    "createKey": "api_key.created",
    "revokeKey": "api_key.revoked",
    "applyWorkflow": "workflow.created",
    "activateWorkflow": "workflow.active",
    "pauseWorkflow": "workflow.paused",
    "archiveWorkflow": "workflow.archived",
    "runWorkflow": "execution.triggered",
    "cancelExecution": "execution.cancelled",
    "rerunExecution": "execution.rerun",
    "replayDeadLetters": "dead_letter.replayed",
    "createFromTemplate": "workflow.created",
    "decideApproval": "execution.approval_decided",
    "sendEvent": "event.delivered",
    "settleEffect": "effect.settled",
    "setToolEnabled": "tool.disabled",
    "createConnection": "connection.created",
    "updateConnection": "connection.updated",
    "testConnection": "connection.tested",
    "deleteConnection": "connection.deleted",
    "createPatternWorkspace": "pattern.created",
    "sendPatternFeedback": "pattern.feedback_sent",
    "setLlmBudget": "workspace.llm_budget_set",
    "approvePatternRun": "execution.approval_decided",
    "createTask": "task.created",
    "approveTask": "execution.approval_decided",
    "pauseTask": "task.paused",
    "resumeTask": "task.resumed",
    "cancelTask": "execution.cancelled",
    "createPrompt": "prompt.created",
    "addPromptVersion": "prompt.version_added",
    "publishPromptVersion": "prompt.published",
    "archivePromptVersion": "prompt.archived",
    "archivePrompt": "prompt.archived",
    "addPromptValidation": "prompt.validation_added",
    "removePromptValidation": "prompt.validation_removed",
    "runPrompt": "execution.triggered",
}
#: Agent-task operations: audited in tests/integration/test_tasks.py (they need an LLM connection).
TASK_OPS = ("createTask", "approveTask", "pauseTask", "resumeTask", "cancelTask")


@pytest.fixture
def api(real_env):
    with worker(real_env) as settings:
        a, b = seed_tenant("alpha"), seed_tenant("beta")
        with serve(create_app(settings)) as base:
            with httpx.Client(
                base_url=base + "/api/v1", timeout=15, headers={"User-Agent": "shiftflow-tests/1.0"}
            ) as client:
                yield {"client": client, "a": a, "b": b, "settings": settings}


def _url(path: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        path = path.replace("{" + name + "}", str(value))
    assert "{" not in path, f"no value for a path parameter of {path}"
    return path


def _example(op: dict) -> dict | None:
    body = op.get("requestBody")
    return body["content"]["application/json"]["example"] if body else None


def _execution_for(workflow_id, key: str, data: dict | None = None) -> Execution:
    """Start an execution without a broker (its messages are not needed)."""
    started = start_execution(
        TriggerPayload(workflow_id=str(workflow_id), dedup_key=key, source="manual", data=data or {"n": 1})
    )
    return started.execution


def _dead_letter(workflow_id, key: str, queue: str = "triggers", **fields) -> DeadLetter:
    payload = {
        "actor_name": "triggers.start",
        "queue_name": queue,
        "message_id": key,
        "args": [],
        "kwargs": {
            "payload": {"workflow_id": str(workflow_id), "dedup_key": key, "source": "test", "data": {"n": 7}}
        },
        "options": {"broker_priority": 3},
    }
    return DeadLetter.create(
        message_id=key, queue=queue, actor="triggers.start", payload=payload, error="NotFound", **fields
    )


def _executions_by_key(client, auth, key):
    response = client.get("/executions", params={"key": key}, headers=auth)
    assert response.status_code == 200, response.text
    return response.json()["items"]


# --------------------------------------------------------------------------- keys


def test_keys_are_shown_once_and_stored_as_hashes(api):
    c, a = api["client"], api["a"]
    response = c.post("/keys", json={"name": "ci", "scopes": ["read"]}, headers=a.auth("MEMBER"))
    assert response.status_code == 201, response.text
    created = response.json()
    key = created["key"]
    assert key.startswith("sfk_") and key.startswith(created["prefix"] + "_")
    assert len(key.split("_", 2)[2]) >= 43  # >= 256 bits of secret, url-safe base64
    row = ApiKey.get_by_id(created["id"])
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in str(row.__data__) and row.prefix == created["prefix"]
    listed = c.get("/keys", headers=a.auth("MEMBER")).json()["items"]
    assert created["id"] in {k["id"] for k in listed}
    assert key not in str(listed)  # shown once: never again
    # A member sees only their own keys, an admin all of them.
    assert {k["user_id"] for k in listed} == {str(a.users["MEMBER"].id)}
    assert len(c.get("/keys", headers=a.auth("ADMIN")).json()["items"]) >= 5

    # The new key works, with its scopes: read yes, write no.
    mine = {"Authorization": f"Bearer {key}"}
    assert c.get("/workflows", headers=mine).status_code == 200
    refused = c.post("/workflows", json=_example(spec.PATHS["/workflows"]["post"]), headers=mine)
    assert refused.status_code == 403 and "scopes" in refused.json()["error"]
    # A key cannot mint a key with more scopes than its own.
    assert c.post("/keys", json={"name": "x", "scopes": ["*"]}, headers=mine).status_code == 403
    # last_used_at is stamped.
    assert ApiKey.get_by_id(created["id"]).last_used_at is not None


def test_missing_malformed_unknown_expired_and_revoked_keys_get_401(api):
    c, a = api["client"], api["a"]
    missing = c.get("/workspace")
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert c.get("/workspace", headers={"Authorization": "Bearer nope"}).status_code == 401
    forged = a.keys["VIEWER"][:-4] + "AAAA"
    assert (
        c.get("/workspace", headers={"Authorization": f"Bearer {forged}"}).json()["error"]
        == "unknown API key"
    )

    created = c.post(
        "/keys", json={"name": "short-lived", "expires_at": "2999-01-01T00:00:00Z"}, headers=a.auth("ADMIN")
    ).json()
    short = {"Authorization": f"Bearer {created['key']}"}
    assert c.get("/workspace", headers=short).status_code == 200
    ApiKey.update(expires_at=dt.datetime(2000, 1, 1)).where(ApiKey.id == created["id"]).execute()
    expired = c.get("/workspace", headers=short)
    assert expired.status_code == 401 and "expired" in expired.json()["error"]
    past = c.post("/keys", json={"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, headers=a.auth("ADMIN"))
    assert past.status_code == 422 and "expires_at" in past.json()["error"]

    assert c.delete(f"/keys/{a.key_ids['VIEWER']}", headers=a.auth("ADMIN")).status_code == 204
    revoked = c.get("/workspace", headers=a.auth("VIEWER"))
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]
    assert c.delete(f"/keys/{a.key_ids['VIEWER']}", headers=a.auth("ADMIN")).status_code == 409

    # Removing a member revokes their keys; demoting one changes what their key may do at once.
    member = WorkspaceMember.get(workspace=a.workspace.id, user=a.users["MEMBER"].id)
    assert (
        c.patch(f"/members/{member.id}", json={"role": "VIEWER"}, headers=a.auth("ADMIN")).status_code == 200
    )
    assert c.post("/workflows", json={"definition": SIMPLE}, headers=a.auth("MEMBER")).status_code == 403
    assert c.delete(f"/members/{member.id}", headers=a.auth("ADMIN")).status_code == 204
    assert c.get("/workspace", headers=a.auth("MEMBER")).status_code == 401


# --------------------------------------------------------------------------- roles


def test_role_matrix_over_every_operation(api):
    """Each role gets 403 exactly for the operations whose permission it lacks."""
    c, a = api["client"], api["a"]
    checked = 0
    for method, path, op in spec.operations():
        permission = op["x-permission"]
        if permission is None or op["operationId"] in ("deleteWorkspace", "createKey", "revokeKey"):
            continue  # no permission needed; destructive or per-key: tested on their own below
        values = {
            name: (
                1 if name == "version" else ("no-such-template" if name == "template_key" else uuid.uuid4())
            )
            for name in (
                "workflow_id",
                "execution_id",
                "member_id",
                "key_id",
                "dead_letter_id",
                "effect_id",
                "version",
                "template_key",
                "connection_id",
                "artifact_id",
                "tool_execution_id",
                "queue_job_id",
                "pattern_id",
                "task_id",
                "prompt_id",
                "validation_id",
            )
        }
        values["step_id"] = "approve"
        # Registry names are checked before the caller: give real ones, so the role decides.
        values["tool_name"], values["integration_key"] = "http.request", "smtp"
        for role in ROLES:
            response = c.request(method, _url(path, values), json=_example(op), headers=a.auth(role))
            allowed = permission in MATRIX[role]
            assert (response.status_code == 403) == (not allowed), (role, method, path, response.text)
            assert response.status_code < 500
            checked += 1
    assert checked >= 4 * 20

    # Keys: viewers are read-only, members manage their own, admins everyone's.
    assert c.post("/keys", json={"name": "v"}, headers=a.auth("VIEWER")).status_code == 403
    assert c.post("/keys", json={"name": "m"}, headers=a.auth("MEMBER")).status_code == 201
    other = {"name": "for-viewer", "user_id": str(a.users["VIEWER"].id)}
    assert c.post("/keys", json=other, headers=a.auth("MEMBER")).status_code == 403
    assert c.post("/keys", json=other, headers=a.auth("ADMIN")).status_code == 201
    assert c.delete(f"/keys/{a.key_ids['VIEWER']}", headers=a.auth("MEMBER")).status_code == 404  # not theirs
    assert c.delete(f"/keys/{a.key_ids['VIEWER']}", headers=a.auth("VIEWER")).status_code == 403

    # Ownership: admins may not make owners or delete the workspace; owners may.
    invite = {"email": "new-owner@alpha.example", "role": "OWNER"}
    assert c.post("/members", json=invite, headers=a.auth("ADMIN")).status_code == 403
    assert c.post("/members", json=invite, headers=a.auth("OWNER")).status_code == 201
    owner = WorkspaceMember.get(workspace=a.workspace.id, user=a.users["OWNER"].id)
    assert (
        c.patch(f"/members/{owner.id}", json={"role": "MEMBER"}, headers=a.auth("ADMIN")).status_code == 403
    )
    assert c.delete("/workspace", headers=a.auth("ADMIN")).status_code == 403
    assert c.delete("/workspace", headers=a.auth("OWNER")).status_code == 204
    assert c.get("/workspace", headers=a.auth("OWNER")).status_code == 401  # its keys went with it
    assert AuditLog.get_or_none(
        AuditLog.action == "workspace.deleted", AuditLog.workspace_id == a.workspace.id
    )


def test_the_last_owner_cannot_leave(api):
    c, b = api["client"], api["b"]
    owner = WorkspaceMember.get(workspace=b.workspace.id, user=b.users["OWNER"].id)
    demoted = c.patch(f"/members/{owner.id}", json={"role": "ADMIN"}, headers=b.auth("OWNER"))
    assert demoted.status_code == 409 and "owner" in demoted.json()["error"]
    assert c.delete(f"/members/{owner.id}", headers=b.auth("OWNER")).status_code == 409
    assert WorkspaceMember.get_by_id(owner.id).role == "OWNER"


# --------------------------------------------------------------------------- audit


def test_every_mutation_writes_an_audit_entry(api):
    c, a = api["client"], api["a"]
    auth = a.auth("OWNER")
    mutating = {op["operationId"] for method, _, op in spec.operations() if method != "GET"}
    assert mutating == set(AUDITED), "describe the audit action of every mutating operation"

    # Rename: before, after, who, from where.
    assert c.patch("/workspace", json={"name": "Alpha Corp"}, headers=auth).status_code == 200
    entry = c.get("/audit-log", params={"action": "workspace.updated"}, headers=auth).json()["items"][0]
    assert entry["before"]["name"] == "alpha" and entry["after"]["name"] == "Alpha Corp"
    assert entry["ip"] == "127.0.0.1" and entry["user_agent"] == "shiftflow-tests/1.0"
    assert entry["user_id"] == str(a.users["OWNER"].id) and entry["api_key_id"] == a.key_ids["OWNER"]

    member = c.post("/members", json={"email": "eve@alpha.example", "role": "VIEWER"}, headers=auth).json()
    assert c.patch(f"/members/{member['id']}", json={"role": "MEMBER"}, headers=auth).status_code == 200
    assert c.delete(f"/members/{member['id']}", headers=auth).status_code == 204
    key = c.post("/keys", json={"name": "temp"}, headers=auth).json()
    assert c.delete(f"/keys/{key['id']}", headers=auth).status_code == 204
    workflow = c.post("/workflows", json={"definition": WAITING}, headers=auth).json()
    wid = workflow["id"]
    assert c.post(f"/workflows/{wid}/pause", headers=auth).json()["status"] == "PAUSED"
    assert c.post(f"/workflows/{wid}/run", json={}, headers=auth).status_code == 409  # paused
    assert c.post(f"/workflows/{wid}/activate", headers=auth).json()["status"] == "ACTIVE"
    accepted = c.post(f"/workflows/{wid}/run", json={"input": {"n": 1}}, headers=auth)
    assert accepted.status_code == 202, accepted.text
    key_of_run = accepted.json()["execution_key"]
    running = wait_until(lambda: _executions_by_key(c, auth, key_of_run), timeout=30)[0]
    wait_until(
        lambda: any(
            s["status"] == "WAITING"
            for s in c.get(f"/executions/{running['id']}", headers=auth).json()["steps"]
        ),
        timeout=30,
    )
    assert c.post(f"/executions/{running['id']}/cancel", headers=auth).status_code == 200
    assert c.post(f"/executions/{running['id']}/rerun", headers=auth).status_code == 202
    letter = _dead_letter(wid, "audit-dl")
    replay = c.post("/dead-letters/replay", json={"ids": [str(letter.id)]}, headers=auth)
    assert replay.status_code == 200 and replay.json()["replayed"][0]["outcome"] == "replayed"
    WorkflowTemplate.create(
        key="audit-tpl", name="T", category="test", definition=dict(SIMPLE, name="from-tpl")
    )
    assert c.post("/templates/audit-tpl/workflows", json={}, headers=auth).status_code == 201
    assert c.post(f"/workflows/{wid}/archive", headers=auth).json()["status"] == "ARCHIVED"
    assert c.post("/events", json={"key": "nobody-waits"}, headers=auth).json() == {
        "key": "nobody-waits",
        "resumed": 0,
    }
    assert c.put("/tools/http.request", json={"enabled": False}, headers=auth).status_code == 200
    made = c.post("/connections", json={"integration": "http", "name": "api",
                                        "credentials": {"auth": "bearer", "token": "t-123456", "base_url": "https://api.example.com"}}, headers=auth)
    assert made.status_code == 201, made.text
    assert c.patch(f"/connections/{made.json()['id']}", json={"name": "api2"}, headers=auth).status_code == 200
    assert c.delete(f"/connections/{made.json()['id']}", headers=auth).status_code == 204
    prompt = c.post("/prompts", json={"name": "audited", "template": "Say {{ w }}.",
                                      "variables": [{"name": "w", "type": "string", "default": "hi"}],
                                      "config": {"model": "gpt-4o-mini"}}, headers=auth)
    assert prompt.status_code == 201, prompt.text
    pid = prompt.json()["id"]
    check = c.post(f"/prompts/{pid}/validations", json={"name": "n", "type": "FUNCTION",
                                                         "config": {"name": "non_empty"}}, headers=auth)
    assert check.status_code == 201, check.text
    assert c.post(f"/prompts/{pid}/versions", json={"template": "Say {{ w }}!", "config": {"model": "gpt-4o-mini"},
                                                    "variables": [{"name": "w"}]}, headers=auth).status_code == 201
    assert c.post(f"/prompts/{pid}/versions/1/publish", headers=auth).status_code == 200
    assert c.post(f"/prompts/{pid}/versions/2/archive", headers=auth).status_code == 200
    assert c.post(f"/prompts/{pid}/run", json={"priority": "LOW"}, headers=auth).status_code == 202
    assert c.delete(f"/prompts/{pid}/validations/{check.json()['id']}", headers=auth).status_code == 204
    assert c.post(f"/prompts/{pid}/archive", headers=auth).status_code == 200
    assert c.put("/llm-budget", json={"llm_daily_budget_usd": "1"}, headers=auth).status_code == 200

    actions = {e.action for e in AuditLog.select().where(AuditLog.workspace_id == a.workspace.id)}
    # Deleting the workspace, deciding an approval, settling an effect and testing a
    # connection are audited in their own tests (test_effects_settle, test_api_tools).
    missing = {
        op: action
        for op, action in AUDITED.items()
        if action not in actions
        and op not in ("deleteWorkspace", "decideApproval", "settleEffect", "testConnection", *TASK_OPS,
                       # the pattern-workspace flow is audited in test_multi_phase_api
                       "createPatternWorkspace", "sendPatternFeedback", "approvePatternRun")
    }
    assert not missing, missing
    cancel = AuditLog.get(AuditLog.action == "execution.cancelled", AuditLog.entity_id == running["id"])
    assert (
        cancel.changes["before"]["status"] == "RUNNING" and cancel.changes["after"]["status"] == "CANCELLED"
    )
    assert cancel.ip_address == "127.0.0.1" and cancel.user_agent == "shiftflow-tests/1.0"
    # Reads write nothing.
    before = AuditLog.select().count()
    c.get("/workflows", headers=auth)
    c.get(f"/executions/{running['id']}", headers=auth)
    assert AuditLog.select().count() == before


# --------------------------------------------------------------------------- tenant isolation


def test_a_key_of_workspace_a_gets_404_for_every_object_of_workspace_b(api):
    c, a, b = api["client"], api["a"], api["b"]
    auth = a.auth("OWNER")  # every permission: only the workspace boundary can refuse
    b_workflow = catalog.apply_definition(b.workspace, WAITING).workflow
    b_execution = _execution_for(b_workflow.id, "b:1")
    b_letter = _dead_letter(b_workflow.id, "b-dl")
    b_step_letter = DeadLetter.create(
        message_id="b-step",
        queue="steps",
        actor="steps.run",
        execution_id=str(b_execution.id),
        payload={
            "actor_name": "steps.run",
            "kwargs": {"payload": {"execution_id": str(b_execution.id), "step_id": "first"}},
        },
        error="x",
    )
    b_member = WorkspaceMember.get(workspace=b.workspace.id, user=b.users["VIEWER"].id)
    b_effect = SideEffect.create(workspace=b.workspace.id, execution=b_execution.id, step_id="first", iteration=0,
                                 kind="http", state="UNKNOWN", request_hash="0" * 64)
    b_connection = connections.create_connection(Principal.operator(b.workspace.id), "http", "b-api",
                                                 {"auth": "bearer", "token": "b-token-123456", "base_url": "https://api.example.com"})
    b_artifact = Artifact.create(workspace=b.workspace.id, execution=b_execution.id, type="TEXT", name="b.txt",
                                 url="local:2026/01/01/x/b.txt", size_bytes=1)
    b_tool = ToolRow.get_or_create(name="notify.chat", defaults={"display_name": "notify.chat"})[0]
    b_call = ToolExecution.create(workspace=b.workspace.id, tool=b_tool.id, execution=b_execution.id,
                                  status="SUCCEEDED", input={"text": "b"})
    b_job = QueueJob.create(workspace=b.workspace.id, message_id="b-job", queue="tools", actor="tools.call",
                            execution=b_execution.id, status="SUCCEEDED", data={"step_id": "first"})
    b_pattern = PatternWorkspace.create(workspace=b.workspace.id, pattern_type="bos", name="B's", category="p")
    store_connection(b.workspace.id, "openai", "b-llm", {"api_key": "sk-b", "base_url": "http://127.0.0.1:9/v1"})
    b_task, _unsent = tasks.create_task(Principal.operator(b.workspace.id), "b's task", approve_required=True)
    b_operator = Principal.operator(b.workspace.id)
    b_prompt = prompts.create_prompt(b_operator, name="b-prompt", template="B {{ x }}",
                                     variables=[{"name": "x", "default": "y"}], config={"model": "gpt-4o-mini"})
    prompts.publish(b_operator, b_prompt.id, 1)
    b_validation = prompts.add_validation(b_operator, b_prompt.id, name="b", type="REGEX", config={"pattern": "B"})
    b_ids = {
        "tool_execution_id": b_call.id,
        "queue_job_id": b_job.id,
        "pattern_id": b_pattern.id,
        "task_id": b_task["id"],
        "connection_id": b_connection["id"],
        "artifact_id": b_artifact.id,
        "workflow_id": b_workflow.id,
        "execution_id": b_execution.id,
        "member_id": b_member.id,
        "key_id": b.key_ids["VIEWER"],
        "dead_letter_id": b_letter.id,
        "effect_id": b_effect.id,
        "version": 1,
        "step_id": "approve",
        "prompt_id": b_prompt.id,
        "validation_id": b_validation.id,
    }

    checked = []
    for method, path, op in spec.operations():
        names = [p["name"] for p in op.get("parameters", ()) if p["in"] == "path"]
        if not names:
            continue
        if op["x-tenant"] == "global":
            # Catalogues shared by every workspace: templates, the tool registry (a workspace's
            # tool switch is its own row: test_api_tools), the integration catalogue.
            assert path.startswith(("/templates/", "/tools/", "/integrations/")), f"{path} is not tenant data?"
            continue
        response = c.request(
            method, _url(path, {n: b_ids[n] for n in names}), json=_example(op), headers=auth
        )
        assert response.status_code == 404, (method, path, response.status_code, response.text)
        checked.append(op["operationId"])
    assert len(checked) >= 15

    # Lists of A never show B's objects; filters and body references to B's objects find nothing.
    b_strings = [str(v) for v in b_ids.values() if not isinstance(v, int)] + [str(b_step_letter.id)]
    for method, path, _op in spec.operations():
        if method == "GET" and "{" not in path and path != "/openapi.json":
            text = c.get(path, headers=auth).text
            assert not any(s in text for s in b_strings), path
    assert (
        c.get("/executions", params={"workflow_id": str(b_workflow.id)}, headers=auth).json()["items"] == []
    )
    assert (
        c.post("/keys", json={"name": "x", "user_id": str(b.users["VIEWER"].id)}, headers=auth).status_code
        == 404
    )
    assert c.post("/dead-letters/replay", json={"ids": [str(b_letter.id)]}, headers=auth).status_code == 404
    replay_all = c.post("/dead-letters/replay", json={"queue": "triggers"}, headers=auth).json()
    assert replay_all["matched"] == 0
    # And B's objects are as they were.
    assert Workflow.get_by_id(b_workflow.id).status == "ACTIVE"
    assert Execution.get_by_id(b_execution.id).status == "RUNNING"
    assert ApiKey.get_by_id(b.key_ids["VIEWER"]).revoked_at is None
    assert WorkspaceMember.get_or_none(WorkspaceMember.id == b_member.id) is not None
    assert DeadLetter.get_by_id(b_letter.id).replayed_at is None
    assert SideEffect.get_by_id(b_effect.id).state == "UNKNOWN"
    assert connections.get_connection(Principal.operator(b.workspace.id), b_connection["id"]).name == "b-api"
    assert c.get(f"/executions/{b_execution.id}", headers=b.auth("VIEWER")).status_code == 200


# --------------------------------------------------------------------------- lists


def test_cursor_pages_are_stable_while_rows_are_inserted(api):
    c, a = api["client"], api["a"]
    auth = a.auth("VIEWER")
    workflow = catalog.apply_definition(a.workspace, SIMPLE).workflow
    same_time = dt.datetime(2030, 1, 1, 12, 0, 0)
    originals = set()
    for i in range(7):  # four share one created_at: the id breaks the tie
        row = Execution.create(
            workflow=workflow.id,
            workflow_version=1,
            workspace=a.workspace.id,
            dedup_key=f"page:{i}",
            status="SUCCEEDED",
            completed_at=same_time,
            created_at=same_time if i < 4 else same_time - dt.timedelta(minutes=i),
        )
        originals.add(str(row.id))
    seen: list[str] = []
    page = c.get("/executions", params={"limit": 3}, headers=auth).json()
    seen += [e["id"] for e in page["items"]]
    for i in range(2):  # newer rows arrive while the client pages
        Execution.create(
            workflow=workflow.id,
            workflow_version=1,
            workspace=a.workspace.id,
            dedup_key=f"late:{i}",
            status="SUCCEEDED",
            completed_at=same_time,
            created_at=same_time + dt.timedelta(hours=1),
        )
    while page["next_cursor"]:
        page = c.get("/executions", params={"limit": 3, "cursor": page["next_cursor"]}, headers=auth).json()
        seen += [e["id"] for e in page["items"]]
    assert len(seen) == len(set(seen)) == 7 and set(seen) == originals
    stamps = [Execution.get_by_id(i).created_at for i in seen]
    assert stamps == sorted(stamps, reverse=True)

    bad = c.get("/executions", params={"cursor": "not-a-cursor"}, headers=auth)
    assert bad.status_code == 422 and "cursor" in bad.json()["error"]
    assert c.get("/executions", params={"limit": 0}, headers=auth).status_code == 422
    assert c.get("/executions", params={"status": "BOGUS"}, headers=auth).status_code == 422
    window = c.get(
        "/executions", params={"since": "2030-01-01T11:55:00Z", "until": "2030-01-01T12:00:00Z"}, headers=auth
    ).json()["items"]
    assert {e["dedup_key"] for e in window} == {"page:4", "page:5"}  # since inclusive, until exclusive


# --------------------------------------------------------------------------- trigger


def test_manual_trigger_with_an_idempotency_key_runs_once(api):
    c, a = api["client"], api["a"]
    auth = a.auth("MEMBER")
    workflow = c.post("/workflows", json={"definition": SIMPLE}, headers=auth).json()
    path = f"/workflows/{workflow['id']}/run"
    first = c.post(
        path, json={"input": {"n": 5}, "priority": "HIGH"}, headers={**auth, "Idempotency-Key": "order-5"}
    )
    again = c.post(path, json={"input": {"n": 5}}, headers={**auth, "Idempotency-Key": "order-5"})
    assert first.status_code == again.status_code == 202, first.text
    key = first.json()["execution_key"]
    assert key == again.json()["execution_key"] == "manual:order-5"
    found = wait_until(
        lambda: [e for e in _executions_by_key(c, auth, key) if e["status"] == "SUCCEEDED"], timeout=30
    )
    assert len(found) == 1 and found[0]["priority"] == "HIGH"
    detail = c.get(f"/executions/{found[0]['id']}", headers=auth).json()
    assert detail["trigger"] == {"n": 5}
    assert [(s["step_id"], s["status"]) for s in detail["steps"]] == [
        ("check", "SUCCEEDED"),
        ("shape", "SUCCEEDED"),
    ]
    assert detail["steps"][1]["output"] == {"n": 5}
    sink = get_sink()
    assert sink is not None and sink.flush(10)
    logs = c.get(f"/executions/{found[0]['id']}/logs", headers=auth).json()["items"]
    assert logs[0]["message"] == "execution created" and logs[-1]["message"] == "execution succeeded"
    # Without a key every request is a new execution; bad input names its field.
    other = c.post(path, json={}, headers=auth).json()["execution_key"]
    assert other.startswith("manual:") and other != key
    bad = c.post(path, json={"input": [1, 2]}, headers=auth)
    assert bad.status_code == 422 and "input" in bad.json()["error"]
    assert (
        c.post(path, content=b"{not json", headers={**auth, "content-type": "application/json"}).status_code
        == 400
    )
    nul = c.post(path, json={"input": {"x": "a\u0000b"}}, headers=auth)
    assert nul.status_code == 422 and "u0000" in nul.json()["error"]


def test_workflow_versions_and_templates(api):
    c, a = api["client"], api["a"]
    auth = a.auth("ADMIN")
    created = c.post("/workflows", json={"definition": SIMPLE, "activate": False}, headers=auth)
    assert created.status_code == 201 and created.json()["status"] == "DRAFT"
    wid = created.json()["id"]
    same = c.post("/workflows", json={"definition": SIMPLE}, headers=auth)
    assert same.status_code == 200 and same.json()["changed"] is False
    changed = dict(SIMPLE, vars={"v": 2})
    second = c.post("/workflows", json={"definition": changed}, headers=auth).json()
    assert second["version"] == 2 and second["id"] == wid
    versions = c.get(f"/workflows/{wid}/versions", headers=auth).json()["items"]
    assert [v["version"] for v in versions] == [2, 1]
    assert c.get(f"/workflows/{wid}/versions/1", headers=auth).json()["definition"]["name"] == "simple"
    assert c.get(f"/workflows/{wid}/versions/9", headers=auth).status_code == 404
    invalid = c.post(
        "/workflows", json={"definition": {"name": "x", "steps": [{"id": "a", "type": "nope"}]}}, headers=auth
    )
    assert invalid.status_code == 422 and "steps" in invalid.json()["error"]

    WorkflowTemplate.create(key="hello", name="Hello", category="demo", definition=dict(SIMPLE, name="hello"))
    assert "hello" in {t["key"] for t in c.get("/templates", headers=auth).json()["items"]}
    made = c.post("/templates/hello/workflows", json={"name": "my hello"}, headers=auth)
    assert made.status_code == 201 and made.json()["name"] == "my hello" and made.json()["status"] == "DRAFT"
    assert made.json()["template_id"] == str(WorkflowTemplate.get(key="hello").id)
    assert c.post("/templates/hello/workflows", json={"name": "my hello"}, headers=auth).status_code == 409
    assert WorkflowTemplate.get(key="hello").usage_count == 1
    assert c.post("/templates/nope/workflows", json={}, headers=auth).status_code == 404


# --------------------------------------------------------------------------- signals

#: An order that needs a person's approval, then waits for its payment event.
GATED = {
    "name": "gated-order",
    "trigger": {"type": "manual"},
    "steps": [
        {"id": "approve", "type": "approval", "timeout": 3600},
        {"id": "paid", "type": "wait_event", "timeout": 3600, "with": {"key": "order-{{ trigger.n }}"}},
        {"id": "done", "type": "transform", "with": {"output": {"paid": "{{ steps.paid.output.event.paid }}"}}},
    ],
}

#: What a payment provider's signed webhook runs: one step that sends the order's event.
PAYMENTS = {
    "name": "payments",
    "trigger": {"type": "webhook"},
    "steps": [
        {
            "id": "notify",
            "type": "event",
            "with": {"key": "order-{{ trigger.order }}", "data": {"paid": "{{ trigger.paid }}"}},
        }
    ],
}


def _step_status(c, auth, execution_id: str, step_id: str) -> str:
    steps = c.get(f"/executions/{execution_id}", headers=auth).json()["steps"]
    return next((s["status"] for s in steps if s["step_id"] == step_id), "")


def _run_gated(c, auth, n: int) -> str:
    wid = c.post("/workflows", json={"definition": GATED}, headers=auth).json()["id"]
    key = c.post(f"/workflows/{wid}/run", json={"input": {"n": n}}, headers=auth).json()["execution_key"]
    eid = wait_until(lambda: _executions_by_key(c, auth, key), timeout=30)[0]["id"]
    wait_until(lambda: _step_status(c, auth, eid, "approve") == "WAITING", timeout=30)
    return eid


def test_approvals_and_events_resume_waiting_executions(api):
    """An approval decided over the API, then a payment event sent by a signed webhook
    (through a workflow with an ``event`` step) and over the API, each resume exactly the
    steps of their own workspace."""
    c, a, b = api["client"], api["a"], api["b"]
    auth = a.auth("MEMBER")
    eid = _run_gated(c, auth, 7)
    assert c.post(f"/executions/{eid}/approvals/approve", json={"approved": True},
                  headers=a.auth("VIEWER")).status_code == 403
    decided = c.post(f"/executions/{eid}/approvals/approve", json={"comment": "fine"}, headers=auth)
    assert decided.status_code == 200, decided.text
    assert decided.json()["approved"] is True and decided.json()["by"] == f"user {a.users['MEMBER'].id}"
    again = c.post(f"/executions/{eid}/approvals/approve", json={}, headers=auth)
    assert again.status_code == 409 and "no approval step" in again.json()["error"]
    assert c.post(f"/executions/{eid}/approvals/approve", json={}, headers=b.auth("OWNER")).status_code == 404
    wait_until(lambda: _step_status(c, auth, eid, "paid") == "WAITING", timeout=30)
    entry = AuditLog.get(AuditLog.action == "execution.approval_decided", AuditLog.entity_id == eid)
    assert entry.changes["after"] == {"step_id": "approve", "status": "SUCCEEDED", "approved": True,
                                      "comment": "fine"}

    # Workspace B's event with the same key reaches nothing of A's.
    assert c.post("/events", json={"key": "order-7", "data": {"paid": True}},
                  headers=b.auth("OWNER")).json()["resumed"] == 0
    assert _step_status(c, auth, eid, "paid") == "WAITING"

    # The payment provider's signed webhook runs the payments workflow, whose event step resumes A's order.
    payments = catalog.apply_definition(a.workspace, PAYMENTS).workflow
    hook = catalog.create_webhook(payments)
    body = json.dumps({"order": 7, "paid": True}).encode()
    headers = signed_headers("standard", webhook_secrets.reveal(hook)[0], body, int(time.time()), "pay-7")
    root = str(c.base_url).rstrip("/").removesuffix("/api/v1")
    posted = httpx.post(f"{root}/hooks/{hook.token}", content=body,
                        headers={**headers, "content-type": "application/json"}, timeout=15)
    assert posted.status_code == 202, posted.text
    done = wait_until(lambda: c.get(f"/executions/{eid}", headers=auth).json()["status"] == "SUCCEEDED"
                      and c.get(f"/executions/{eid}", headers=auth).json(), timeout=30)
    assert [s["output"] for s in done["steps"] if s["step_id"] == "done"] == [{"paid": True}]
    sender = wait_until(lambda: [e for e in _executions_by_key(c, auth, "standard:pay-7")
                                 if e["status"] == "SUCCEEDED"], timeout=30)[0]
    notify = c.get(f"/executions/{sender['id']}", headers=auth).json()["steps"][0]
    assert notify["output"] == {"key": "order-7", "resumed": 1}

    # Over the API: a rejected approval fails its execution; an event resumes a waiting step.
    rejected = _run_gated(c, auth, 8)
    no = c.post(f"/executions/{rejected}/approvals/approve", json={"approved": False, "comment": "too big"},
                headers=auth)
    assert no.status_code == 200 and no.json()["approved"] is False
    failed = wait_until(lambda: (d := c.get(f"/executions/{rejected}", headers=auth).json())["status"] == "FAILED"
                        and d, timeout=30)
    assert "rejected by" in failed["error"] and "too big" in failed["error"]
    waiting = _run_gated(c, auth, 9)
    assert c.post(f"/executions/{waiting}/approvals/approve", json={}, headers=auth).status_code == 200
    wait_until(lambda: _step_status(c, auth, waiting, "paid") == "WAITING", timeout=30)
    sent = c.post("/events", json={"key": "order-9", "data": {"paid": False}}, headers=auth)
    assert sent.status_code == 200 and sent.json() == {"key": "order-9", "resumed": 1}
    wait_until(lambda: c.get(f"/executions/{waiting}", headers=auth).json()["status"] == "SUCCEEDED", timeout=30)
    bad = c.post("/events", json={"key": "", "data": {}}, headers=auth)
    assert bad.status_code == 422 and "key" in bad.json()["error"]
