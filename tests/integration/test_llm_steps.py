"""``llm`` steps on real services: a worker on real RabbitMQ, PostgreSQL and Redis runs
workflows whose ``llm`` steps call the fake provider over real HTTP, inline and through
stored prompts (published versions, typed variables, sandboxed templates, validations
with retries); a 429 with ``Retry-After`` parks the step for that long; a step delivered
again after its call reuses the recorded answer, so the call is made and costed once."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import REGISTRY

from shiftflow.consumers import timers
from shiftflow.fakes.llm import FakeLlm, FakeLlmServer
from shiftflow.kernel import failpoints
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.enqueue import send
from shiftflow.kernel.errors import DefinitionError, TransientError
from shiftflow.models.engine.connection_secrets import store_connection
from shiftflow.models.manage import catalog, prompts
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.problems import Conflict, InvalidInput
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.llm_calls import LlmCall
from shiftflow.models.tables.prompts import PromptVersion
from tests.integration.api_support import worker
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

KEY = "sk-test-llm-steps-0123456789"
ANSWER = {"type": "object", "required": ["echo"], "properties": {"echo": {"type": "string"}}}


@pytest.fixture
def fake() -> Iterator[tuple[FakeLlm, FakeLlmServer]]:
    model = FakeLlm(api_key=KEY)
    with FakeLlmServer(model) as server:
        yield model, server


@contextlib.contextmanager
def _engine(env: dict[str, str]) -> Iterator[Any]:
    with worker(env, threads=4):
        stop = threading.Event()
        loop = threading.Thread(target=timers.run_loop, args=(stop, 0.05), daemon=True)
        loop.start()
        try:
            yield catalog.ensure_workspace("llm")
        finally:
            stop.set()
            loop.join(10)


@pytest.fixture
def engine(real_env: dict[str, str], fake: Any) -> Iterator[Any]:
    _, server = fake
    with _engine(real_env) as workspace:
        store_connection(workspace.id, "openai", "openai-main", {"api_key": KEY, "base_url": server.openai_base_url})
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


def _calls(execution: Execution) -> list[LlmCall]:
    return list(LlmCall.select().where(LlmCall.execution == execution.id).order_by(LlmCall.attempt))


ASK = {"id": "ask", "type": "llm", "connection": "openai-main", "model": "gpt-4o-mini",
       "system": "Answer in JSON.", "prompt": "json please: {{ trigger.question }}", "max_tokens": 200,
       "response_format": {"json_schema": ANSWER}}


def test_an_inline_llm_step_answers_json_on_the_llm_queue_and_is_recorded(engine, fake):
    model, _ = fake
    workflow = _workflow(engine, "inline", ASK,
                         {"id": "after", "type": "transform", "with": {"output": "{{ steps.ask.output.json.echo }}"}})
    execution = _run(workflow, "i1", {"question": "what is a queue?"})

    assert execution.status == "SUCCEEDED", execution.error
    step = _step(execution, "ask")
    assert step.output["json"] == step.output["validated"] and isinstance(step.output["json"]["echo"], str)
    assert step.output["validation"] == {"status": "PASSED", "errors": []} and step.output["attempts"] == 1
    assert _step(execution, "after").output == step.output["json"]["echo"]
    [request] = model.requests
    assert request.body["messages"][-1]["content"] == "json please: what is a queue?"
    [call] = _calls(execution)
    assert (call.status, call.validation_status, call.model, call.call_key) == \
        ("SUCCEEDED", "PASSED", "gpt-4o-mini", "v1")
    assert Decimal(step.output["cost_usd"]) == Decimal(call.cost_usd) > 0
    assert step.output["usage"]["total"] == call.token_usage["total"] > 0


def test_the_llm_step_type_is_checked_when_applied_naming_the_field(engine):
    with pytest.raises(DefinitionError, match=r"steps\[0\]\.connection: an llm step names its connection"):
        _workflow(engine, "bad1", {k: v for k, v in ASK.items() if k != "connection"})
    with pytest.raises(DefinitionError, match=r"steps\[0\]\.response_format\.json_schema: not a valid JSON Schema"):
        _workflow(engine, "bad2", {**ASK, "response_format": {"json_schema": {"type": "nope"}}})
    with pytest.raises(DefinitionError, match=r"steps\[0\]\.system: a stored prompt's version sets system"):
        _workflow(engine, "bad3", {"id": "p", "type": "llm", "prompt": "x", "system": "s"})


def _parks() -> float:
    return REGISTRY.get_sample_value("shiftflow_rate_limit_parks_total", {"tool": "llm"}) or 0.0


def test_a_rate_limited_call_parks_for_retry_after_then_succeeds(engine, fake):
    model, _ = fake
    model.fail_next(429, retry_after=2)
    workflow = _workflow(engine, "limited", {**ASK, "response_format": "json"})
    before = _parks()
    execution = _run(workflow, "r1", {"question": "hi"})

    assert execution.status == "SUCCEEDED", execution.error
    assert len(model.requests) == 2
    assert model.requests[1].at - model.requests[0].at >= 2.0  # waited as asked, not a blind retry
    assert _parks() == before + 1
    first, second = _calls(execution)
    assert (first.status, Decimal(first.cost_usd), second.status) == ("FAILED", Decimal(0), "SUCCEEDED")
    assert _step(execution, "ask").retry_count == 1


def _prompt(workspace: Any, name: str, pattern: str, *, retries: int = 2, publish: bool = True) -> Any:
    actor = Principal(workspace_id=workspace.id, role="OWNER", via="cli")
    prompt = prompts.create_prompt(
        actor, name=name, template="Reply in json about {{ topic | upper }} for {{ who }}.",
        variables=[{"name": "topic", "type": "string", "required": True},
                   {"name": "who", "type": "string", "default": "everyone", "options": ["everyone", "ann"]}],
        config={"connection": "openai-main", "model": "gpt-4o-mini", "response_format": "json",
                "max_validation_retries": retries})
    prompts.add_validation(actor, prompt.id, name="shape", type="SCHEMA",
                           config={"type": "object", "required": ["echo"],
                                   "properties": {"echo": {"type": "string", "pattern": pattern}}})
    if publish:
        prompts.publish(actor, prompt.id, 1)
    return prompt


def test_a_stored_prompt_renders_its_published_version_and_retries_a_failed_validation(engine, fake):
    model, _ = fake
    # The fake echoes the last user message: the first answer echoes the rendered template
    # and fails the pattern; the second echoes the validation feedback and passes.
    prompt = _prompt(engine, "greeter", "^Your answer failed validation")
    workflow = _workflow(engine, "stored", {"id": "p", "type": "llm", "prompt": "greeter",
                                            "variables": {"topic": "{{ trigger.topic }}"}})
    execution = _run(workflow, "s1", {"topic": "queues"})

    assert execution.status == "SUCCEEDED", execution.error
    step = _step(execution, "p")
    assert step.output["attempts"] == 2 and step.output["validation"]["status"] == "PASSED"
    first, second = model.requests
    assert first.body["messages"][-1]["content"] == "Reply in json about QUEUES for everyone."
    assert "does not match" in second.body["messages"][-1]["content"]
    calls = _calls(execution)
    assert [(c.validation_status, c.call_key) for c in calls] == [("FAILED", "v1"), ("PASSED", "v2")]
    assert "shape: at echo:" in calls[0].validation_errors[0]
    assert calls[1].validated_output == step.output["validated"]
    version = PromptVersion.get(PromptVersion.prompt == prompt.id)
    assert all(c.prompt_id == prompt.id and c.prompt_version_id == version.id for c in calls)
    assert calls[0].inputs == {"topic": "queues", "who": "everyone"}
    total = sum(Decimal(c.cost_usd) for c in calls)
    assert Decimal(step.output["cost_usd"]) == total


def test_a_prompt_failing_validation_after_its_retries_fails_listing_the_reasons(engine, fake):
    model, _ = fake
    _prompt(engine, "never", "^never matches$", retries=1)
    workflow = _workflow(engine, "never", {"id": "p", "type": "llm", "prompt": "never", "variables": {"topic": "x"}})
    execution = _run(workflow, "n1", {})

    assert execution.status == "FAILED"
    error = _step(execution, "p").error
    assert error.startswith("the output failed validation after 2 attempts: shape: at echo:"), error
    assert len(model.requests) == 2
    assert [c.validation_status for c in _calls(execution)] == ["FAILED", "FAILED"]


def test_bad_prompt_input_is_refused_naming_the_field(engine, fake):
    model, _ = fake
    _prompt(engine, "draft-only", "x", publish=False)
    _prompt(engine, "typed", "x")
    cases = [
        ({"prompt": "draft-only", "variables": {"topic": "x"}}, "steps[0].version: prompt 'draft-only' has no "
                                                                "published version: publish one first"),
        ({"prompt": "typed", "variables": {}}, "steps[0].variables.topic: required string variable is missing"),
        ({"prompt": "typed", "variables": {"topic": "x", "who": "bob"}},
         "steps[0].variables.who: 'bob' is not one of 'everyone', 'ann'"),
        ({"prompt": "typed", "version": 1, "variables": {"topic": 3}},
         "steps[0].variables.topic: expected a string, got int"),
        ({"prompt": "nope"}, "steps[0].prompt: no prompt 'nope' in this workspace"),
    ]
    for n, (fields, message) in enumerate(cases):
        execution = _run(_workflow(engine, f"bad{n}", {"id": "p", "type": "llm", **fields}), f"b{n}", {})
        assert execution.status == "FAILED" and _step(execution, "p").error == message
    assert model.requests == [] and LlmCall.select().count() == 0

    actor = Principal(workspace_id=engine.id, role="OWNER", via="cli")
    with pytest.raises(InvalidInput, match="variables.topic: required string variable is missing"):
        prompts.run_prompt(actor, "typed", variables={})
    with pytest.raises(InvalidInput, match="version: version 1 of prompt 'draft-only' is DRAFT"):
        prompts.run_prompt(actor, "draft-only", variables={"topic": "x"}, version=1)
    with pytest.raises(Conflict, match="only a draft is published"):
        prompts.publish(actor, "typed", 1)


def test_a_version_never_changes_once_made(engine):
    prompt = _prompt(engine, "fixed", "x")
    version = PromptVersion.get(PromptVersion.prompt == prompt.id)
    version.template = "changed"
    with pytest.raises(Exception, match="prompt version 1 is immutable"):
        version.save()


def test_a_step_delivered_again_after_its_call_reuses_the_recorded_answer(engine, fake, monkeypatch):
    """The worker "dies" after the call was recorded and before the step's result was
    committed (a transient failure at that point, so Dramatiq delivers the message again):
    the next delivery finds the recorded answer and neither calls nor counts it again."""
    model, _ = fake
    real_hit = failpoints.hit
    fired: list[str] = []

    def hit(point: str, key: str = "") -> None:
        if point == "step.after_work" and key == "ask" and not fired:
            fired.append(key)
            raise TransientError("worker lost after the call")
        real_hit(point, key)

    monkeypatch.setattr(failpoints, "hit", hit)
    workflow = _workflow(engine, "again", {**ASK, "response_format": "json"})
    execution = _run(workflow, "a1", {"question": "once"}, timeout=60)

    assert execution.status == "SUCCEEDED", execution.error
    assert fired == ["ask"] and len(model.requests) == 1
    [call] = _calls(execution)
    assert call.status == "SUCCEEDED"
    assert _step(execution, "ask").output["call_id"] == str(call.id)
