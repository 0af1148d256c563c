"""Agent tasks through the management API on real services: PostgreSQL, RabbitMQ, the
MongoDB wire, a worker consuming every queue, the fake LLM provider over real HTTP
(scripted to answer plans) and a loopback JSON service the planned ``http.request`` calls
reach. Planning, re-planning, approval, references between calls, pause/resume, cancel,
and the bad inputs (a refused plan, a task not awaiting approval, a missing LLM
connection, another workspace's task) with nothing half-written."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shiftflow.fakes.llm import FakeLlm, FakeLlmServer
from shiftflow.models.engine.connection_secrets import store_connection
from shiftflow.models.tables.audit_log import AuditLog
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.llm_calls import LlmCall
from shiftflow.models.tables.tools import ToolExecution
from shiftflow.models.tables.workflows import Workflow, WorkflowVersion
from shiftflow.producers.app import create_app
from tests.integration.api_support import seed_tenant, serve, worker
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def llm() -> Iterator[tuple[FakeLlm, FakeLlmServer]]:
    fake = FakeLlm(api_key="sk-test")
    with FakeLlmServer(fake) as server:
        yield fake, server


@pytest.fixture
def api(real_env: dict[str, str], tmp_path: Any, llm: Any) -> Iterator[dict[str, Any]]:
    env = {**real_env, "SHIFTFLOW_ARTIFACT_DIR": str(tmp_path / "artifacts"), "SHIFTFLOW_TASK_MODEL": "fake-echo"}
    fake, server = llm
    with worker(env, threads=4) as settings:
        a, b = seed_tenant("alpha"), seed_tenant("beta")
        store_connection(a.workspace.id, "openai", "planner",
                         {"api_key": "sk-test", "base_url": server.openai_base_url})
        with serve(create_app(settings)) as base:
            with httpx.Client(base_url=base + "/api/v1", timeout=30,
                              headers={"User-Agent": "shiftflow-tests/1.0"}) as client:
                yield {"client": client, "a": a, "b": b, "fake": fake}


def _two_calls(url: str) -> dict[str, Any]:
    """A plan of two HTTP calls, the second using the first one's answer."""
    return {"steps": [
        {"tool": "http.request", "params": {"url": f"{url}/first", "method": "POST", "json": {"token": "abc"}},
         "why": "ask the first service"},
        {"tool": "http.request", "params": {"url": f"{url}/second", "method": "POST",
                                            "json": {"from_first": "{{ steps.1.output.json.received.token }}"}}},
    ]}


def _settled(client: httpx.Client, headers: dict[str, str], task_id: str, *stages: str,
             timeout: float = 30) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        story = client.get(f"/tasks/{task_id}", headers=headers).json()
        return story if story["stage"] in stages else None

    return wait_until(reached, timeout=timeout)


def test_task_is_planned_approved_and_run_with_references_between_calls(api, json_service):
    c, a, fake = api["client"], api["a"], api["fake"]
    fake.script("[[plan-two-calls]]", json=_two_calls(json_service.url))
    created = c.post("/tasks", json={"intent": "call both services [[plan-two-calls]]", "approve_required": True},
                     headers=a.auth("MEMBER"))
    assert created.status_code == 202, created.text
    task = created.json()
    assert task["stage"] == "planning" and task["connection"] == "planner" and task["approve_required"] is True
    # Approving before the plan waits for approval is refused.
    early = c.post(f"/tasks/{task['id']}/approve", headers=a.auth("MEMBER"))
    assert early.status_code in (409, 200)
    if early.status_code == 409:
        assert "not awaiting approval" in early.json()["error"]
    story = _settled(c, a.auth("VIEWER"), task["id"], "awaiting_approval", "succeeded", "failed")
    assert story["stage"] == "awaiting_approval", story
    assert [p["tool"] for p in story["plan"]] == ["http.request", "http.request"]
    assert story["total_steps"] == 2 and story["current_step"] == 0
    assert json_service.calls == []  # nothing runs before the approval
    assert len(story["llm_calls"]) == 1 and story["llm_calls"][0]["status"] == "SUCCEEDED"
    assert story["cost_usd"] > 0 and story["llm_calls"][0]["model"] == "fake-echo"

    approved = c.post(f"/tasks/{task['id']}/approve", json={"comment": "fine"}, headers=a.auth("MEMBER"))
    assert approved.status_code == 200, approved.text
    again = c.post(f"/tasks/{task['id']}/approve", headers=a.auth("MEMBER"))
    assert again.status_code == 409 and "not awaiting approval" in again.json()["error"]

    story = _settled(c, a.auth("VIEWER"), task["id"], "succeeded", "failed")
    assert story["status"] == "SUCCEEDED", story
    assert story["current_step"] == 2 and story["total_steps"] == 2
    assert [(t["step_number"], t["tool"], t["status"], t["queue"]) for t in story["tool_executions"]] == [
        (1, "http.request", "SUCCEEDED", "tools"), (2, "http.request", "SUCCEEDED", "tools")]
    assert [call["path"] for call in json_service.calls] == ["/first", "/second"]
    assert json_service.calls[1]["body"] == {"from_first": "abc"}  # the first result fed the second call
    assert [s["step_id"] for s in story["steps"]] == ["plan", "approve", "step_1", "step_2"]

    logs = c.get(f"/tasks/{task['id']}/logs", headers=a.auth("VIEWER"))
    assert logs.status_code == 200
    messages = [line["message"] for line in logs.json()["items"]]
    assert any("plan accepted: 2 tool call(s)" in m for m in messages), messages
    listed = c.get("/tasks", headers=a.auth("VIEWER")).json()["items"]
    assert [t["id"] for t in listed] == [task["id"]]
    assert c.get("/tasks", params={"status": "FAILED"}, headers=a.auth("VIEWER")).json()["items"] == []


def test_a_refused_plan_is_sent_back_and_the_corrected_one_runs(api, json_service):
    c, a, fake = api["client"], api["a"], api["fake"]
    # The first answer names a tool that does not exist and a field http.request does not take;
    # the answer to the refusal (whose text says "refused") is right.
    fake.script("[[sloppy]]", json={"steps": [{"tool": "web.fetch", "params": {"url": json_service.url}},
                                              {"tool": "http.request", "params": {"link": json_service.url}}]})
    fake.script("The plan was refused", json=_two_calls(json_service.url))
    task = c.post("/tasks", json={"intent": "do it [[sloppy]]"}, headers=a.auth("MEMBER")).json()
    story = _settled(c, a.auth("VIEWER"), task["id"], "succeeded", "failed")
    assert story["status"] == "SUCCEEDED", story
    assert [call["round"] for call in story["llm_calls"]] == [1, 2]
    refused = fake.requests[1].body["messages"][-1]["content"]
    assert "steps[0].tool: unknown tool 'web.fetch'" in refused
    assert "steps[1].params: unknown field 'link'" in refused or "link" in refused
    assert len(story["tool_executions"]) == 2


def test_a_plan_refused_every_time_fails_the_task_naming_the_problems(api, json_service):
    c, a, fake = api["client"], api["a"], api["fake"]
    fake.script("[[hopeless]]", json={"steps": [{"tool": "web.fetch", "params": {}}]})
    fake.script("The plan was refused", json={"steps": [{"tool": "web.fetch", "params": {}}]})
    task = c.post("/tasks", json={"intent": "do it [[hopeless]]"}, headers=a.auth("MEMBER")).json()
    story = _settled(c, a.auth("VIEWER"), task["id"], "failed", "succeeded")
    assert story["status"] == "FAILED"
    assert "no acceptable plan after 3 attempt(s)" in story["error"]
    assert "unknown tool 'web.fetch'" in story["error"]
    assert story["plan"] is None and story["tool_executions"] == [] and len(story["llm_calls"]) == 3
    # Nothing half-written: no plan version, no tool step rows.
    execution = Execution.get_by_id(task["id"])
    assert execution.workflow_version == 1
    assert WorkflowVersion.select().where(WorkflowVersion.workflow == execution.workflow_id).count() == 1
    assert [s.step_id for s in StepExecution.select().where(StepExecution.execution == execution.id)] == ["plan"]
    assert json_service.calls == []


def test_pause_holds_the_next_step_and_resume_runs_it(api, json_service):
    c, a, fake = api["client"], api["a"], api["fake"]
    fake.script("[[pausable]]", json=_two_calls(json_service.url))
    task = c.post("/tasks", json={"intent": "x [[pausable]]", "approve_required": True},
                  headers=a.auth("MEMBER")).json()
    _settled(c, a.auth("VIEWER"), task["id"], "awaiting_approval")
    paused = c.post(f"/tasks/{task['id']}/pause", headers=a.auth("MEMBER"))
    assert paused.status_code == 200 and paused.json()["status"] == "PAUSED"
    assert c.post(f"/tasks/{task['id']}/pause", headers=a.auth("MEMBER")).status_code == 409
    assert c.post(f"/tasks/{task['id']}/approve", headers=a.auth("MEMBER")).status_code == 200
    first = wait_until(lambda: StepExecution.get_or_none((StepExecution.execution == task["id"])
                                                         & (StepExecution.step_id == "step_1")), timeout=10)
    import time

    time.sleep(1.5)  # the step's message was delivered and dropped: the task is paused
    assert StepExecution.get_by_id(first.id).status == "PENDING"
    assert json_service.calls == [] and ToolExecution.select().count() == 0
    resumed = c.post(f"/tasks/{task['id']}/resume", headers=a.auth("MEMBER"))
    assert resumed.status_code == 200, resumed.text
    story = _settled(c, a.auth("VIEWER"), task["id"], "succeeded", "failed")
    assert story["status"] == "SUCCEEDED" and len(json_service.calls) == 2
    assert c.post(f"/tasks/{task['id']}/resume", headers=a.auth("MEMBER")).status_code == 409
    assert c.post(f"/tasks/{task['id']}/cancel", headers=a.auth("MEMBER")).status_code == 409
    audited = [e.action for e in AuditLog.select().where(AuditLog.entity_id == task["id"])
               .order_by(AuditLog.created_at)]
    assert audited == ["task.created", "task.paused", "execution.approval_decided", "task.resumed"]


def test_bad_input_is_refused_with_nothing_written(api, json_service):
    c, a, b, fake = api["client"], api["a"], api["b"], api["fake"]
    before = Execution.select().count()
    no_llm = c.post("/tasks", json={"intent": "anything"}, headers=b.auth("MEMBER"))
    assert no_llm.status_code == 422 and "connection" in no_llm.json()["error"]
    assert "no LLM connection" in no_llm.json()["error"]
    named = c.post("/tasks", json={"intent": "anything", "connection": "nope"}, headers=a.auth("MEMBER"))
    assert named.status_code == 422 and "'nope'" in named.json()["error"] and "planner" in named.json()["error"]
    empty = c.post("/tasks", json={"intent": "  "}, headers=a.auth("MEMBER"))
    assert empty.status_code == 422 and "intent" in empty.json()["error"]
    assert c.post("/tasks", json={"intent": "x"}, headers=a.auth("VIEWER")).status_code == 403
    assert Execution.select().count() == before
    assert not Workflow.select().where(Workflow.workspace == b.workspace.id).exists()

    fake.script("[[cancel-me]]", json=_two_calls(json_service.url))
    task = c.post("/tasks", json={"intent": "x [[cancel-me]]", "approve_required": True},
                  headers=a.auth("MEMBER")).json()
    # Another workspace's task is not found, whatever the verb.
    for method, path in (("GET", ""), ("GET", "/logs"), ("POST", "/approve"), ("POST", "/pause"),
                         ("POST", "/resume"), ("POST", "/cancel")):
        answer = c.request(method, f"/tasks/{task['id']}{path}", headers=b.auth("OWNER"))
        assert answer.status_code == 404, (method, path, answer.text)
    # An execution that is not a task is not a task.
    other = LlmCall.select().count()
    assert c.get("/tasks/00000000-0000-4000-8000-000000000000", headers=a.auth("VIEWER")).status_code == 404
    _settled(c, a.auth("VIEWER"), task["id"], "awaiting_approval")
    cancelled = c.post(f"/tasks/{task['id']}/cancel", headers=a.auth("MEMBER"))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    assert c.post(f"/tasks/{task['id']}/approve", headers=a.auth("MEMBER")).status_code == 409
    assert json_service.calls == [] and LlmCall.select().count() >= other


def test_a_task_whose_llm_connection_vanished_fails_naming_it(api):
    """A task whose connection was deleted after it was created (here: a task row naming one
    that never existed, past the API's check) fails at planning, naming the connection."""
    c, a = api["client"], api["a"]
    from shiftflow.kernel.contracts import TriggerPayload
    from shiftflow.kernel.enqueue import send_all
    from shiftflow.models.engine.start import start_execution

    first = c.post("/tasks", json={"intent": "x"}, headers=a.auth("MEMBER")).json()
    workflow_id = Execution.get_by_id(first["id"]).workflow_id
    started = start_execution(TriggerPayload(str(workflow_id), "task:vanished", "manual",
                                             {"intent": "x", "connection": "gone"}))
    send_all(started.outgoing)
    assert started.execution is not None
    story = _settled(c, a.auth("VIEWER"), str(started.execution.id), "failed", "succeeded")
    assert story["status"] == "FAILED" and "connection 'gone'" in story["error"], story
    assert story["llm_calls"] == []


def test_a_task_cancelled_while_its_plan_is_asked_keeps_no_plan(api, json_service):
    c, a, fake = api["client"], api["a"], api["fake"]
    fake.script("[[slow-plan]]", json=_two_calls(json_service.url))
    fake.slow_next(3)
    task = c.post("/tasks", json={"intent": "x [[slow-plan]]"}, headers=a.auth("MEMBER")).json()
    wait_until(lambda: LlmCall.get_or_none(LlmCall.status == "RUNNING"), timeout=20)
    cancelled = c.post(f"/tasks/{task['id']}/cancel", headers=a.auth("MEMBER"))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    wait_until(lambda: LlmCall.get_or_none(LlmCall.status == "SUCCEEDED"), timeout=20)
    import time

    time.sleep(1)  # the planner records what it can once the answer is in
    execution = Execution.get_by_id(task["id"])
    assert execution.status == "CANCELLED" and execution.workflow_version == 1
    assert not (execution.context or {}).get("plan")
    assert WorkflowVersion.select().where(WorkflowVersion.workflow == execution.workflow_id).count() == 1
    assert json_service.calls == []
