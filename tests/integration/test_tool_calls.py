"""``tool`` steps on real services: a worker on real RabbitMQ and PostgreSQL runs workflows
whose steps call ``email.send`` (a local aiosmtpd server, STARTTLS and AUTH) and
``notify.chat`` (a local webhook server); every call is a tool execution row and a queue
job row; a 429 with ``Retry-After`` parks the step with a durable timer, then it succeeds;
bad input fails the step naming the field, with nothing sent."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pymongo
import pytest
from prometheus_client import REGISTRY

from shiftflow.consumers import timers
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.enqueue import send
from shiftflow.kernel.errors import DefinitionError
from shiftflow.kernel.mongo import INTEGRATION_USAGE
from shiftflow.models.engine.connection_secrets import store_connection
from shiftflow.models.manage import catalog
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.integrations import Connection
from shiftflow.models.tables.queue_jobs import QueueJob
from shiftflow.models.tables.side_effects import SideEffect
from shiftflow.models.tables.tools import Tool as ToolRow
from shiftflow.models.tables.tools import ToolExecution
from tests.integration.api_support import worker
from tests.support.waiting import wait_until
from tests.tool_servers import PageServer, SelfSigned, SmtpServer, self_signed

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cert(tmp_path_factory: Any) -> SelfSigned:
    return self_signed(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def smtp(cert: SelfSigned) -> Iterator[SmtpServer]:
    server = SmtpServer(cert)
    yield server
    server.stop()


@contextlib.contextmanager
def _engine(env: dict[str, str]) -> Iterator[Any]:
    """A worker consuming every queue (tools.email included) and the timer loop (a thread:
    in a pool it is a Dramatiq fork, which an in-process worker does not start)."""
    with worker(env, threads=4):
        stop = threading.Event()
        loop = threading.Thread(target=timers.run_loop, args=(stop, 0.05), daemon=True)
        loop.start()
        try:
            yield catalog.ensure_workspace("tools")
        finally:
            stop.set()
            loop.join(10)


@pytest.fixture
def engine(real_env: dict[str, str], tmp_path: Any) -> Iterator[Any]:
    with _engine({**real_env, "SHIFTFLOW_ARTIFACT_DIR": str(tmp_path / "artifacts")}) as workspace:
        yield workspace


def _workflow(workspace: Any, name: str, *steps: dict[str, Any]) -> Any:
    return catalog.apply_definition(workspace, {"name": name, "trigger": {"type": "manual"},
                                                "steps": list(steps)}).workflow


def _run(workflow: Any, key: str, data: dict[str, Any], timeout: float = 30) -> Execution:
    send("triggers.start", TriggerPayload(workflow_id=str(workflow.id), dedup_key=key, source="manual", data=data))

    def finished() -> Execution | None:
        row = Execution.get_or_none((Execution.workflow == workflow.id) & (Execution.dedup_key == key))
        return row if row is not None and row.status in ("SUCCEEDED", "FAILED") else None

    return wait_until(finished, timeout=timeout, message=f"execution {key} finished")


def _step(execution: Execution, step_id: str) -> StepExecution:
    return StepExecution.get((StepExecution.execution == execution.id) & (StepExecution.step_id == step_id))


def _calls(step: StepExecution) -> list[ToolExecution]:
    return list(ToolExecution.select().where(ToolExecution.step_execution == step.id).order_by(ToolExecution.attempt))


def _jobs(execution: Execution) -> list[QueueJob]:
    return list(QueueJob.select().where(QueueJob.execution == execution.id).order_by(QueueJob.created_at))


MAIL = {"id": "mail", "type": "tool", "tool": "email.send", "connection": "smtp-main",
        "with": {"to": "{{ trigger.to }}", "subject": "Order {{ trigger.order }}", "text": "Thanks, {{ trigger.who }}."}}


def test_an_email_step_delivers_through_smtp_on_its_own_queue_and_is_recorded(engine, smtp, cert):
    store_connection(engine.id, "smtp", "smtp-main", smtp.credentials(cert))
    workflow = _workflow(engine, "mail", {"id": "prep", "type": "transform", "with": {"output": 1}}, MAIL,
                         {"id": "after", "type": "transform", "with": {"output": "{{ steps.mail.output.accepted }}"}})
    execution = _run(workflow, "m1", {"to": "ann@example.com", "order": "42", "who": "Ann"})

    assert execution.status == "SUCCEEDED", execution.error
    assert len(smtp.handler.messages) == 1
    envelope, message = smtp.handler.messages[0]
    assert envelope.rcpt_tos == ["ann@example.com"] and message["Subject"] == "Order 42"
    assert smtp.handler.tls_sessions == [True] and smtp.handler.logins == ["mailer"]
    step = _step(execution, "mail")
    assert step.output["accepted"] == ["ann@example.com"]
    assert _step(execution, "after").output == ["ann@example.com"]

    [call] = _calls(step)
    assert (call.status, call.attempt, call.queue, call.error) == ("SUCCEEDED", 1, "tools.email", None)
    assert call.input["to"] == "ann@example.com" and call.output["message_id"] == step.output["message_id"]
    assert call.duration_ms is not None and call.duration_ms >= 0 and call.execution_id == execution.id
    assert "s3cret" not in str(call.input) + str(call.output)  # the connection's password is never recorded
    assert ToolRow.get_by_id(call.tool_id).name == "email.send"
    assert ToolRow.get_by_id(call.tool_id).usage_count == 1

    [job] = _jobs(execution)
    assert (job.queue, job.actor, job.status, job.attempts, job.max_attempts) == \
        ("tools.email", "tools.email", "SUCCEEDED", 1, 4)
    assert job.started_at is not None and job.completed_at is not None and job.data["step_id"] == "mail"
    # email.send is an effect: once: it went through the ledger.
    effect = SideEffect.get(SideEffect.execution == execution.id)
    assert (effect.state, effect.kind) == ("DONE", "email.send")


def _parks(tool: str) -> float:
    return REGISTRY.get_sample_value("shiftflow_rate_limit_parks_total", {"tool": tool}) or 0.0


def test_a_chat_notification_that_is_rate_limited_parks_for_retry_after_then_succeeds(engine):
    answers = [(429, {"Retry-After": "2", "Content-Type": "text/plain"}, b"slow down")]
    times: list[float] = []

    def hook(handler: Any) -> tuple[int, dict[str, str], bytes]:
        times.append(time.monotonic())
        return answers.pop(0) if answers else (200, {"Content-Type": "text/plain"}, b"ok")

    chat = PageServer({"/hook": hook})
    try:
        store_connection(engine.id, "slack", "team-chat", {"webhook_url": chat.url + "/hook", "format": "slack"})
        workflow = _workflow(engine, "chat", {"id": "note", "type": "tool", "tool": "notify.chat",
                                              "connection": "team-chat", "with": {"text": "order {{ trigger.order }}"}})
        before = _parks("notify.chat")
        execution = _run(workflow, "c1", {"order": "7"})
    finally:
        chat.close()

    assert execution.status == "SUCCEEDED", execution.error
    assert len(times) == 2 and times[1] - times[0] >= 2.0, times  # waited as asked, not a blind retry
    assert chat.requests[1]["body"] == b'{"text": "order 7"}' or b'"order 7"' in chat.requests[1]["body"]
    assert _parks("notify.chat") == before + 1
    step = _step(execution, "note")
    assert step.retry_count == 1 and step.output["status"] == 200
    first, second = _calls(step)
    assert (first.attempt, first.status, second.attempt, second.status) == (1, "FAILED", 2, "SUCCEEDED")
    assert "rate limited, waiting 2 s as asked" in first.error
    jobs = _jobs(execution)
    assert [j.status for j in jobs] == ["RETRYING", "SUCCEEDED"] and {j.queue for j in jobs} == {"tools"}
    # notify.chat is an effect: once; the refusal put it back to PLANNED, so the second attempt sent it.
    effect = SideEffect.get(SideEffect.execution == execution.id)
    assert (effect.state, effect.attempts) == ("DONE", 2)


def test_rendered_parameters_failing_the_schema_fail_the_step_naming_the_field(engine, smtp, cert):
    store_connection(engine.id, "smtp", "smtp-main", smtp.credentials(cert))
    workflow = _workflow(engine, "bad-mail", MAIL)
    execution = _run(workflow, "b1", {"to": "not-an-email", "order": "1", "who": "x"})

    assert execution.status == "FAILED"
    step = _step(execution, "mail")
    assert step.status == "FAILED" and step.error == "steps[0].with.to: 'not-an-email' is not an email"
    [call] = _calls(step)
    assert call.status == "FAILED" and "is not an email" in call.error
    assert [j.status for j in _jobs(execution)] == ["FAILED"]
    assert smtp.handler.messages == []


def test_a_missing_or_foreign_connection_fails_the_step_naming_it(engine, smtp, cert):
    # Another workspace's connection of that name is not this workspace's. A missing one is
    # refused when applied (tests/integration/test_api_tool_steps_refused.py); here this
    # workspace's own goes away after the workflow was applied.
    store_connection(catalog.ensure_workspace("other").id, "smtp", "nope", smtp.credentials(cert))
    store_connection(engine.id, "smtp", "nope", smtp.credentials(cert))
    workflow = _workflow(engine, "no-conn", {**MAIL, "connection": "nope"})
    Connection.update(is_active=False).where((Connection.workspace == engine.id) & (Connection.name == "nope")).execute()
    execution = _run(workflow, "n1", {"to": "ann@example.com", "order": "1", "who": "x"})

    assert execution.status == "FAILED"
    assert _step(execution, "mail").error == "connection: no active connection 'nope' in this workspace"
    assert smtp.handler.messages == []


def test_a_connection_of_another_integration_is_refused(engine, smtp, cert):
    store_connection(engine.id, "slack", "smtp-main", {"webhook_url": "http://127.0.0.1:9/x"})
    execution = _run(_workflow(engine, "wrong-conn", MAIL), "w1", {"to": "ann@example.com", "order": "1", "who": "x"})

    assert execution.status == "FAILED"
    assert "connection: a slack connection cannot be used by tool email.send" in _step(execution, "mail").error


def test_bad_definitions_are_refused_when_applied(engine):
    with pytest.raises(DefinitionError, match=r"steps\[0\]\.tool: unknown tool 'email.sendd'"):
        _workflow(engine, "typo", {**MAIL, "tool": "email.sendd"})
    with pytest.raises(DefinitionError, match=r"steps\[0\]\.with\.to: 'x' is not an email"):
        _workflow(engine, "static", {**MAIL, "with": {**MAIL["with"], "to": "x"}})


def test_the_integrations_shared_rate_limit_parks_calls_over_it(real_env, tmp_path):
    """Slack limited to one call a second (burst 1) for the deployment: three notifications
    started together are spread out by parks, none refused, none sent at once."""
    times: list[float] = []

    def hook(handler: Any) -> tuple[int, dict[str, str], bytes]:
        times.append(time.monotonic())
        return 200, {"Content-Type": "text/plain"}, b"ok"

    chat = PageServer({"/hook": hook})
    env = {**real_env, "SHIFTFLOW_ARTIFACT_DIR": str(tmp_path / "a"), "SHIFTFLOW_INTEGRATION_LIMITS": "slack=1/s:1"}
    waits = REGISTRY.get_sample_value("shiftflow_rate_limit_waits_total", {"integration": "slack"}) or 0.0
    try:
        with _engine(env) as workspace:
            store_connection(workspace.id, "slack", "team-chat", {"webhook_url": chat.url + "/hook"})
            workflow = _workflow(workspace, "chat", {"id": "note", "type": "tool", "tool": "notify.chat",
                                                     "connection": "team-chat", "with": {"text": "hi"}})
            for n in range(3):
                send("triggers.start", TriggerPayload(workflow_id=str(workflow.id), dedup_key=f"k{n}",
                                                      source="manual", data={}))
            executions = [_run(workflow, f"k{n}", {}) for n in range(3)]
    finally:
        chat.close()

    assert [e.status for e in executions] == ["SUCCEEDED"] * 3
    assert len(times) == 3 and times[2] - times[0] >= 1.5, times  # one a second, not all at once
    assert (REGISTRY.get_sample_value("shiftflow_rate_limit_waits_total", {"integration": "slack"}) or 0) > waits
    parked = [_step(e, "note") for e in executions if _step(e, "note").retry_count > 0]
    assert parked and all("slack rate limit is reached (not called)" in _calls(s)[0].error for s in parked)
    # One integration_usage document per call (the worker flushed them when it stopped),
    # under the integration and the connection.
    with pymongo.MongoClient(real_env["SHIFTFLOW_MONGO_URL"]) as client:
        usage = list(client[real_env["SHIFTFLOW_MONGO_DB"]][INTEGRATION_USAGE].find({"integrationId": "slack"}))
    connection = str(Connection.get(Connection.name == "team-chat").id)
    assert {u["connectionId"] for u in usage} == {connection} and {u["action"] for u in usage} == {"notify.chat"}
    assert sum(u["success"] for u in usage) == 3
    assert sum(u["rateLimit"] for u in usage) == len(usage) - 3 == sum(s.retry_count for s in parked)


def test_the_http_step_and_the_http_request_tool_park_on_a_503_with_retry_after(engine):
    """The old ``http`` step (kept) and the same call as a ``tool`` step: a 503 asking for a
    second is waited out with a durable timer, then the call succeeds."""
    times: dict[str, list[float]] = {"/a": [], "/b": []}

    def route(handler: Any) -> tuple[int, dict[str, str], bytes]:
        seen = times[handler.path]
        seen.append(time.monotonic())
        if len(seen) == 1:
            return 503, {"Retry-After": "1", "Content-Type": "text/plain"}, b"busy"
        return 200, {"Content-Type": "application/json"}, b'{"ok": true}'

    service = PageServer({"/a": route, "/b": route})
    try:
        workflow = _workflow(engine, "http", {"id": "old", "type": "http", "with": {"url": service.url + "/a"}},
                             {"id": "new", "type": "tool", "tool": "http.request",
                              "with": {"url": service.url + "/b", "method": "POST", "json": {"n": 1}}})
        execution = _run(workflow, "h1", {})
    finally:
        service.close()

    assert execution.status == "SUCCEEDED", execution.error
    for path in ("/a", "/b"):
        assert len(times[path]) == 2 and times[path][1] - times[path][0] >= 1.0, times
    assert _step(execution, "old").output == {"status": 200, "json": {"ok": True}}
    assert _step(execution, "old").retry_count == 1
    new = _step(execution, "new")
    assert new.output == {"status": 200, "json": {"ok": True}} and new.retry_count == 1
    assert [c.status for c in _calls(new)] == ["FAILED", "SUCCEEDED"]
    assert _calls(_step(execution, "old")) == []  # the http step keeps its old records only


def test_screenshot_thumbnail_email_and_chat_each_run_on_their_own_queue(engine, smtp, cert):
    """A local page screenshotted in headless Chromium (``tools.browser``), the screenshot
    thumbnailed (``tools.media``), emailed as an attachment (``tools.email``) and announced
    in a chat (``tools``): every tool kind through its own actor, the artifacts passed on."""
    page = PageServer({"/page": (200, {"Content-Type": "text/html"},
                                 b"<html><body style='background:#0a0'><h1>Hello</h1></body></html>"),
                       "/hook": (200, {"Content-Type": "text/plain"}, b"ok")})
    try:
        store_connection(engine.id, "smtp", "smtp-main", smtp.credentials(cert))
        store_connection(engine.id, "slack", "team-chat", {"webhook_url": page.url + "/hook"})
        workflow = _workflow(
            engine, "pipeline",
            {"id": "shot", "type": "tool", "tool": "browser.screenshot",
             "with": {"url": page.url + "/page", "width": 640, "height": 480}},
            {"id": "thumb", "type": "tool", "tool": "media.image",
             "with": {"input": "{{ steps.shot.output.artifact }}", "operation": "thumbnail", "width": 160,
                      "height": 160, "format": "png", "name": "thumb.png"}},
            {"id": "mail", "type": "tool", "tool": "email.send", "connection": "smtp-main",
             "with": {"to": "ann@example.com", "subject": "Your screenshot", "text": "Attached.",
                      "attachments": [{"artifact": "{{ steps.thumb.output.artifact }}"}]}},
            {"id": "note", "type": "tool", "tool": "notify.chat", "connection": "team-chat",
             "with": {"text": "sent {{ steps.mail.output.message_id }}"}})
        execution = _run(workflow, "p1", {}, timeout=90)
    finally:
        page.close()

    assert execution.status == "SUCCEEDED", execution.error
    assert _step(execution, "thumb").output["width"] <= 160
    [(_, message)] = smtp.handler.messages
    [attachment] = list(message.iter_attachments())
    assert attachment.get_content_type() == "image/png" and attachment.get_content()[:4] == b"\x89PNG"
    assert page.hits.count("/hook") == 1
    queues = {job.data["step_id"]: (job.queue, job.actor, job.status) for job in _jobs(execution)}
    assert queues == {"shot": ("tools.browser", "tools.browser", "SUCCEEDED"),
                      "thumb": ("tools.media", "tools.media", "SUCCEEDED"),
                      "mail": ("tools.email", "tools.email", "SUCCEEDED"),
                      "note": ("tools", "tools.call", "SUCCEEDED")}
    calls = ToolExecution.select().where(ToolExecution.execution == execution.id)
    assert sorted(c.queue for c in calls) == ["tools", "tools.browser", "tools.email", "tools.media"]
    assert all(c.status == "SUCCEEDED" for c in calls)


def test_a_disabled_tool_fails_its_step_and_calls_nothing(engine, smtp, cert):
    store_connection(engine.id, "smtp", "smtp-main", smtp.credentials(cert))
    workflow = _workflow(engine, "off", MAIL)
    assert _run(workflow, "on", {"to": "ann@example.com", "order": "1", "who": "x"}).status == "SUCCEEDED"
    ToolRow.update(enabled=False).where(ToolRow.name == "email.send").execute()

    execution = _run(workflow, "off", {"to": "ann@example.com", "order": "2", "who": "x"})

    assert execution.status == "FAILED"
    assert _step(execution, "mail").error == "tool: email.send is disabled (enable it in the tool catalogue)"
    assert _calls(_step(execution, "mail")) == [] and len(smtp.handler.messages) == 1


def test_a_tool_its_workspace_disabled_fails_its_step_and_calls_nothing(engine, smtp, cert):
    from shiftflow.models.tables.tools import WorkspaceTool

    store_connection(engine.id, "smtp", "smtp-main", smtp.credentials(cert))
    workflow = _workflow(engine, "ws-off", MAIL)
    assert _run(workflow, "on", {"to": "ann@example.com", "order": "1", "who": "x"}).status == "SUCCEEDED"
    # As `PUT /api/v1/tools/email.send {"enabled": false}` leaves it for this workspace.
    WorkspaceTool.create(workspace=engine.id, tool_name="email.send", enabled=False)

    execution = _run(workflow, "off", {"to": "ann@example.com", "order": "2", "who": "x"})

    assert execution.status == "FAILED"
    assert _step(execution, "mail").error == "tool: email.send is disabled in this workspace (shiftflow tools enable)"
    assert _calls(_step(execution, "mail")) == [] and len(smtp.handler.messages) == 1
