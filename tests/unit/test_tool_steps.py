"""The ``tool`` step type: checked when applied (unknown tool, static parameters failing the
tool's schema, each naming the step and the field), routed to its tool's queue."""

from __future__ import annotations

from typing import Any

import pytest

from shiftflow.kernel.definition import validate
from shiftflow.kernel.errors import DefinitionError
from shiftflow.kernel.runnable import check_runnable


def _definition(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"name": "tools", "trigger": {"type": "manual"},
            "steps": [{"id": "first", "type": "transform", "with": {"output": 1}}, *steps]}


def _check(*steps: dict[str, Any]) -> None:
    check_runnable(validate(_definition(*steps)))


MAIL = {"id": "mail", "type": "tool", "tool": "email.send", "connection": "smtp-main",
        "with": {"to": "a@example.com", "subject": "hi", "text": "body"}}


def test_a_tool_step_runs_on_its_tools_queue_with_its_tools_effect():
    definition = validate(_definition(MAIL, {"id": "note", "type": "tool", "tool": "notify.chat",
                                             "with": {"text": "x"}, "effect": "repeatable"},
                                      {"id": "shot", "type": "tool", "tool": "browser.screenshot",
                                       "with": {"url": "http://x"}}))
    mail = definition.step("mail")
    assert (mail.actor, mail.effect, mail.tool, mail.connection) == ("tools.email", "once", "email.send", "smtp-main")
    assert definition.step("note").actor == "tools.call" and definition.step("note").effect == "repeatable"
    assert definition.step("shot").actor == "tools.browser"


def test_an_unknown_tool_is_refused_naming_the_step():
    with pytest.raises(DefinitionError, match=r"^steps\[1\]\.tool: unknown tool 'email.sned'; known tools: .*email\.send"):
        _check({**MAIL, "tool": "email.sned"})


def test_a_tool_step_without_a_tool_is_refused():
    step = {k: v for k, v in MAIL.items() if k != "tool"}
    with pytest.raises(DefinitionError, match=r"^steps\[1\]\.tool: a tool step names its tool"):
        validate(_definition(step))


def test_only_tool_steps_name_a_tool_or_a_connection():
    with pytest.raises(DefinitionError, match=r"^steps\[1\]\.connection: only tool and llm steps have a connection"):
        validate(_definition({"id": "t", "type": "transform", "connection": "x", "with": {}}))


def test_static_parameters_failing_the_schema_name_the_step_and_the_field():
    with pytest.raises(DefinitionError, match=r"^steps\[1\]\.with\.to: 'x' is not an email \(step 'mail', tool email.send\)"):
        _check({**MAIL, "with": {**MAIL["with"], "to": "x"}})
    with pytest.raises(DefinitionError, match=r"steps\[1\]\.with: 'subject' is a required property"):
        _check({**MAIL, "with": {"to": "a@example.com", "text": "t"}})
    with pytest.raises(DefinitionError, match=r"steps\[1\]\.with: unknown field 'bodyy'"):
        _check({**MAIL, "with": {**MAIL["with"], "bodyy": 1}})


def test_values_with_references_are_left_to_the_rendered_check():
    _check({**MAIL, "with": {"to": "{{ trigger.email }}", "subject": "{{ trigger.subject }}", "text": "x"}})
    _check({"id": "n", "type": "tool", "tool": "notify.chat", "connection": "chat",
            "with": {"text": "sent to {{ trigger.email }}", "username": "{{ trigger.name }}"}})


def test_a_tool_step_gets_credentials_from_its_connection_never_from_a_secret_reference():
    with pytest.raises(DefinitionError, match=r"steps\[1\]\.with\.headers\.Authorization: step 'call' \(tool\) may not"):
        _check({"id": "call", "type": "tool", "tool": "http.request",
            "with": {"url": "http://x", "headers": {"Authorization": "Bearer {{ secrets.crm.token }}"}}})


def test_the_http_step_keeps_working():
    definition = validate(_definition({"id": "h", "type": "http", "with": {"url": "http://x"}}))
    check_runnable(definition)
    assert definition.step("h").actor == "tools.call" and definition.step("h").effect == "repeatable"


@pytest.fixture
def dev_engine(tmp_path: Any) -> Any:
    """Dev mode: SQLite and the in-process broker (no worker: the test drives the steps)."""
    from shiftflow.kernel.db import bind_database
    from shiftflow.kernel.settings import Settings, configure
    from shiftflow.models.tables.registry import create_all

    settings = configure(Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_DATA_DIR": str(tmp_path),
                                            "SHIFTFLOW_HTTP_ALLOW_PRIVATE": "true"}))
    db = bind_database(settings.database_url)
    create_all(db)
    yield settings
    db.close()


def test_an_attempt_left_running_by_a_dead_worker_is_closed_when_the_step_is_taken_over(dev_engine, json_service):
    from shiftflow.kernel.contracts import StepPayload, TriggerPayload
    from shiftflow.models.engine import tool_calls
    from shiftflow.models.engine.run_step import run_step
    from shiftflow.models.engine.runs import claim_step
    from shiftflow.models.engine.start import start_execution
    from shiftflow.models.manage import catalog
    from shiftflow.models.tables.executions import StepExecution
    from shiftflow.models.tables.tools import ToolExecution

    workflow = catalog.apply_definition(catalog.ensure_workspace("t"), {"name": "w", "steps": [
        {"id": "post", "type": "tool", "tool": "http.request",
         "with": {"method": "POST", "url": json_service.url + "/echo", "json": {"n": "{{ trigger.n }}"}}}]}).workflow
    started = start_execution(TriggerPayload(str(workflow.id), "k", "test", {"n": 7}))
    assert started.execution is not None
    payload = StepPayload(str(started.execution.id), "post")
    # A delivery that claimed the step, wrote its RUNNING attempt, and died mid-call.
    claim = claim_step(payload, delivery_limit=5)
    assert claim.step is not None
    tool_calls.prepare(claim, claim.definition.step("post"), {"method": "POST"}, dev_engine)

    run_step(payload)  # the next delivery takes the step over (its holder is gone)

    step = StepExecution.get(StepExecution.step_id == "post")
    assert step.status == "SUCCEEDED", step.error
    first, second = ToolExecution.select().order_by(ToolExecution.attempt)
    assert (first.attempt, first.status, first.error) == (1, "FAILED", tool_calls.ABANDONED)
    assert (second.attempt, second.status, second.input) == (2, "SUCCEEDED", {"method": "POST", "url": json_service.url + "/echo", "json": {"n": 7}})
    assert second.output["status"] == 200
