"""Agent task plans (``kernel.agent_plan``): every problem of a plan is named, references
between calls must point backwards, connections must fit, and an accepted plan becomes a
definition the engine accepts."""

from __future__ import annotations

from shiftflow.kernel.agent_plan import (
    PLANNING_DEFINITION,
    catalogue_text,
    check,
    parse_answer,
    to_definition,
)
from shiftflow.kernel.definition import validate
from shiftflow.kernel.runnable import check_runnable
from shiftflow.kernel.tools.registry import default_registry

TOOLS = {tool.name: tool for tool in default_registry()}
CONNECTIONS = {"mail": "smtp", "planner": "openai"}

SHOT = {"tool": "browser.screenshot", "params": {"url": "http://example.test/"}}
THUMB = {"tool": "media.image", "params": {"input": "{{ steps.1.output.artifact }}", "operation": "thumbnail",
                                           "width": 100}}
MAIL = {"tool": "email.send", "params": {"to": "a@example.test", "subject": "s", "text": "t",
                                         "attachments": [{"artifact": "{{ steps.2.output.artifact }}"}]}}


def test_a_good_plan_becomes_steps_on_the_tools_queues_with_references_rewritten():
    checked = check({"steps": [SHOT, THUMB, MAIL]}, TOOLS, CONNECTIONS)
    assert checked.ok, checked.problems
    assert checked.calls[2].connection == "mail"  # the only smtp connection, chosen
    data = to_definition(checked.calls, approval=True)
    definition = validate(data)
    check_runnable(definition)
    assert [s.id for s in definition.steps] == ["plan", "approve", "step_1", "step_2", "step_3"]
    assert [s.actor for s in definition.steps] == ["llm.call", "steps.run", "tools.browser", "tools.media",
                                                   "tools.email"]
    assert definition.step("step_2").inputs["input"] == "{{ steps.step_1.output.artifact }}"
    assert definition.step("step_3").effect == "once"
    assert [s.id for s in validate(to_definition(checked.calls, approval=False)).steps][:2] == ["plan", "step_1"]
    validate(PLANNING_DEFINITION)


def test_every_problem_is_named_with_its_place():
    plan = {"steps": [
        {"tool": "web.fetch", "params": {}},
        {"tool": "browser.screenshot", "params": {"link": "x"}},
        {"tool": "media.image", "params": {"input": "{{ steps.3.output.artifact }}", "operation": "thumbnail"}},
        {"tool": "email.send", "params": {"to": "a@example.test", "subject": "s", "text": "t"},
         "connection": "planner"},
        {"tool": "http.request", "params": {"url": "http://x.test"}, "connection": "mail", "colour": 1},
    ]}
    checked = check(plan, TOOLS, CONNECTIONS)
    assert not checked.ok and checked.calls == []
    text = "\n".join(checked.problems)
    assert "steps[0].tool: unknown tool 'web.fetch'; known tools: " in text and "email.send" in text
    assert "steps[1].params: unknown field 'link'" in text or "steps[1].params" in text
    assert "steps[1].params" in text and "url" in text  # the required url is missing
    assert "steps[2].params: reference {{ steps.3.output.artifact }} names no earlier step" in text
    assert "steps[3].connection: 'planner' is a openai connection; tool email.send needs a smtp one" in text
    assert "steps[4]: unknown field 'colour'" in text
    assert "steps[4].connection: tool http.request takes no connection" in text


def test_disabled_tools_are_unknown_and_answers_that_are_not_plans_are_refused():
    enabled = {name: tool for name, tool in TOOLS.items() if name != "email.send"}
    assert "unknown tool 'email.send'" in check({"steps": [MAIL]}, enabled, CONNECTIONS).problems[0]
    assert check({"steps": []}, TOOLS, CONNECTIONS).problems == ["plan.steps: the plan holds no tool call"]
    assert check(["x"], TOOLS, CONNECTIONS).problems == ["plan: expected a JSON object with a list 'steps'"]
    assert parse_answer("not json")[1][0].startswith("plan: the answer is not JSON")
    assert parse_answer('{"steps": []}') == ({"steps": []}, [])
    two_mail = {"mail": "smtp", "mail2": "smtp"}
    plain = {"steps": [{**MAIL, "params": {k: v for k, v in MAIL["params"].items() if k != "attachments"}}]}
    assert check(plain, TOOLS, two_mail).problems == [
        "steps[0].connection: tool email.send needs one of the connections mail, mail2"]
    assert "none exists" in check(plain, TOOLS, {}).problems[0]
    other = {"steps": [{**SHOT, "params": {"url": "{{ vars.x }}"}}]}
    assert "is not steps.N.output" in check(other, TOOLS, CONNECTIONS).problems[0]


def test_the_planner_sees_the_tools_schemas_and_the_connections():
    text = catalogue_text(TOOLS.values(), CONNECTIONS)
    assert "- email.send (needs a connection of kind smtp)" in text
    assert '"required": ["to", "subject"]' in text
    assert "- mail (kind smtp)" in text
