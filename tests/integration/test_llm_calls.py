"""``call_llm`` on real PostgreSQL and Redis against the fake provider over real HTTP: the
connection's key is used, the call is recorded with tokens, latency and cost; the daily
budget refuses a call naming the limit, with nothing written; a 429/529 becomes
``RateLimited`` with the provider's wait; a connection without a key is refused naming the
field; a step delivered again reuses the answer it already paid for."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from shiftflow.fakes.llm import FakeLlm, FakeLlmServer
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.errors import RateLimited
from shiftflow.kernel.llm import BudgetExceeded, InvalidCredentials, LlmRejected, LlmRequest, Message, cost
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine import llm_calls
from shiftflow.models.engine.connection_secrets import store_connection
from shiftflow.models.manage import catalog
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.llm_calls import LlmCall
from shiftflow.models.tables.tenancy import Workspace

pytestmark = pytest.mark.integration

KEY = "sk-test-llm-calls-0123456789"


@pytest.fixture
def fake() -> Iterator[tuple[FakeLlm, FakeLlmServer]]:
    model = FakeLlm(api_key=KEY)
    with FakeLlmServer(model) as server:
        yield model, server


@pytest.fixture
def env(real_env: dict[str, str], redis_prefix: str) -> Iterator[Settings]:
    settings = configure(Settings.from_env({**real_env, "SHIFTFLOW_REDIS_PREFIX": redis_prefix}))
    bind_database(real_env["SHIFTFLOW_DATABASE_URL"])
    yield settings


def _step(workspace: Any, name: str) -> tuple[Execution, StepExecution]:
    workflow = catalog.apply_definition(workspace, {
        "name": name, "trigger": {"type": "manual"},
        "steps": [{"id": "s", "type": "transform", "with": {"output": 1}}]}).workflow
    execution = Execution.create(workflow=workflow.id, workflow_version=1, workspace=workspace.id,
                                 dedup_key=name, status="RUNNING", started_at=utcnow())
    step = StepExecution.create(execution=execution.id, step_id="s", step_type="llm", status="RUNNING",
                                 started_at=utcnow())
    return execution, step


def _ask(text: str = "what is a queue", **kw: Any) -> LlmRequest:
    return LlmRequest(model="gpt-4o-mini", messages=(Message.user(text),), max_tokens=kw.pop("max_tokens", 50), **kw)


def test_a_call_is_made_with_the_connections_key_and_recorded_with_tokens_latency_and_cost(env, fake):
    model, server = fake
    workspace = catalog.ensure_workspace("llm-a")
    store_connection(workspace.id, "openai", "openai-main", {"api_key": KEY, "base_url": server.openai_base_url})
    execution, step = _step(workspace, "a")

    result = llm_calls.call_llm(workspace.id, "openai-main", _ask(), execution_id=execution.id,
                                step_execution_id=step.id, inputs={"q": "queue"})

    assert result.completion.text == "echo: what is a queue" and not result.reused
    [request] = model.requests
    assert request.headers["authorization"] == f"Bearer {KEY}"
    row = LlmCall.get_by_id(result.call_id)
    assert (row.status, row.provider, row.attempt, row.call_key, row.error) == \
        ("SUCCEEDED", "openai", 1, "call", None)
    assert row.token_usage["input"] == result.completion.tokens_in > 0
    assert row.token_usage["output"] == result.completion.tokens_out > 0
    assert row.latency_ms >= 1 and row.inputs == {"q": "queue"} and row.output == "echo: what is a queue"
    expected = cost(result.completion.model, result.completion.tokens_in, result.completion.tokens_out)
    assert Decimal(row.cost_usd) == result.cost == expected and expected.as_tuple().exponent == -6
    assert result.output()["usage"]["total"] == result.completion.tokens_total
    assert KEY not in str(row.__data__)


def test_a_redelivered_step_reuses_the_answer_it_paid_for_and_an_abandoned_call_is_closed(env, fake):
    model, server = fake
    workspace = catalog.ensure_workspace("llm-b")
    store_connection(workspace.id, "openai", "openai-main", {"api_key": KEY, "base_url": server.openai_base_url})
    execution, step = _step(workspace, "b")
    first = llm_calls.call_llm(workspace.id, "openai-main", _ask(), execution_id=execution.id,
                               step_execution_id=step.id)
    again = llm_calls.call_llm(workspace.id, "openai-main", _ask(), execution_id=execution.id,
                               step_execution_id=step.id)
    assert again.reused and again.call_id == first.call_id and again.completion == first.completion
    assert len(model.requests) == 1 and LlmCall.select().count() == 1

    # A worker that died during its call left the row RUNNING: the next delivery closes it
    # (its estimate stays counted) and calls again under the next attempt number.
    stale = LlmCall.create(workspace=workspace.id, execution=execution.id, step_execution=step.id, attempt=2,
                           call_key="other", status="RUNNING", model="gpt-4o-mini",
                           cost_estimate_usd=Decimal("0.000100"))
    spent_before = llm_calls.spent_today(workspace.id)
    third = llm_calls.call_llm(workspace.id, "openai-main", _ask("other"), execution_id=execution.id,
                               step_execution_id=step.id, call_key="other")
    stale = LlmCall.get_by_id(stale.id)
    assert (stale.status, stale.error, stale.cost_usd) == ("FAILED", llm_calls.ABANDONED, None)
    assert third.attempt == 3 and not third.reused and len(model.requests) == 2
    assert llm_calls.spent_today(workspace.id) == spent_before + third.cost


def test_the_daily_budget_refuses_a_call_naming_the_limit_and_writes_nothing(env, fake):
    model, server = fake
    workspace = catalog.ensure_workspace("llm-c")
    store_connection(workspace.id, "openai", "openai-main", {"api_key": KEY, "base_url": server.openai_base_url})
    execution, step = _step(workspace, "c")
    Workspace.update(llm_daily_budget_usd=Decimal("0.000010")).where(Workspace.id == workspace.id).execute()

    with pytest.raises(BudgetExceeded) as refused:
        llm_calls.call_llm(workspace.id, "openai-main", _ask(max_tokens=4000), execution_id=execution.id,
                           step_execution_id=step.id)
    assert "daily LLM budget of workspace 'llm-c' is 0.000010 USD" in str(refused.value)
    assert model.requests == [] and LlmCall.select().count() == 0

    # The deployment's default applies when the workspace sets none.
    Workspace.update(llm_daily_budget_usd=None).where(Workspace.id == workspace.id).execute()
    tight = dataclasses.replace(env, llm_daily_budget_usd="0")
    with pytest.raises(BudgetExceeded, match="is 0.000000 USD"):
        llm_calls.call_llm(workspace.id, "openai-main", _ask(), execution_id=execution.id, settings=tight)
    assert model.requests == [] and LlmCall.select().count() == 0


@pytest.mark.parametrize("status", [429, 529])
def test_a_rate_limited_or_overloaded_answer_is_rate_limited_with_the_providers_wait(env, fake, status):
    model, server = fake
    workspace = catalog.ensure_workspace(f"llm-d{status}")
    store_connection(workspace.id, "anthropic", "claude", {"api_key": KEY, "base_url": server.anthropic_base_url})
    execution, step = _step(workspace, f"d{status}")
    model.fail_next(status, retry_after=7)

    request = LlmRequest(model="claude-haiku-4-5", messages=(Message.user("hi"),), max_tokens=20)
    with pytest.raises(RateLimited) as limited:
        llm_calls.call_llm(workspace.id, "claude", request, execution_id=execution.id, step_execution_id=step.id)
    assert limited.value.retry_after is not None and limited.value.retry_after >= 7
    [row] = LlmCall.select()
    assert (row.status, Decimal(row.cost_usd), row.provider) == ("FAILED", Decimal(0), "anthropic")
    assert str(status) in row.error


def test_a_connection_without_a_key_or_of_another_kind_is_refused_naming_it(env, fake):
    model, server = fake
    workspace = catalog.ensure_workspace("llm-e")
    store_connection(workspace.id, "openai", "no-key", {"base_url": server.openai_base_url})
    store_connection(workspace.id, "slack", "chat", {"webhook_url": "http://127.0.0.1:1/hook"})
    execution, _ = _step(workspace, "e")
    with pytest.raises(InvalidCredentials, match="connection 'no-key': openai credentials: api_key is missing"):
        llm_calls.call_llm(workspace.id, "no-key", _ask(), execution_id=execution.id)
    with pytest.raises(llm_calls.LlmConnectionError, match="'chat' is a slack connection, not an LLM provider"):
        llm_calls.call_llm(workspace.id, "chat", _ask(), execution_id=execution.id)
    with pytest.raises(llm_calls.LlmConnectionError, match="no active connection 'gone'"):
        llm_calls.call_llm(workspace.id, "gone", _ask(), execution_id=execution.id)
    assert model.requests == [] and LlmCall.select().count() == 0


def test_a_refused_call_is_recorded_failed_at_no_cost(env, fake):
    model, server = fake
    workspace = catalog.ensure_workspace("llm-f")
    store_connection(workspace.id, "openai", "wrong", {"api_key": "sk-wrong", "base_url": server.openai_base_url})
    execution, _ = _step(workspace, "f")
    with pytest.raises(LlmRejected):
        llm_calls.call_llm(workspace.id, "wrong", _ask(), execution_id=execution.id)
    [row] = LlmCall.select()
    assert row.status == "FAILED" and Decimal(row.cost_usd) == 0 and "401" in row.error
    assert "sk-wrong" not in row.error
