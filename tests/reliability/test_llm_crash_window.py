"""An ``llm`` step's worker killed after the model answered, before the step's commit.

A real ``shiftflow workers`` pool (its supervisor replaces the dead process) on real
PostgreSQL, RabbitMQ and Redis; the fake LLM provider on a real HTTP server. The failpoint
``step.after_work:ask=exit-once`` ends the worker process with ``os._exit(137)`` (no
cleanup, no ack, as a SIGKILL) right after the call was recorded: the message is
delivered again and the next worker must find the recorded answer. Every execution then
completes with exactly one call to the provider and one costed ``llm_call`` row each: the
crashed run's call is neither repeated nor counted twice.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pytest

from shiftflow.fakes.llm import FakeLlm, FakeLlmServer
from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.enqueue import send
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine.connection_secrets import store_connection
from shiftflow.models.manage import catalog
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.llm_calls import LlmCall
from tests.support.waiting import wait_until

from .worker_pool import WorkerPool

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

KEY = "sk-test-crash-window-0123456789"


@pytest.mark.timeout(240)
def test_a_worker_killed_after_the_answer_neither_calls_nor_counts_again(real_env, pg_url, tmp_path: Path):
    marks = tmp_path / "failpoints"
    marks.mkdir()
    (tmp_path / "logs").mkdir()
    env = {**os.environ, **real_env, "SHIFTFLOW_LOG_LEVEL": "WARNING", "SHIFTFLOW_CLAIM_LEASE_SECONDS": "3",
           "SHIFTFLOW_FAILPOINTS": "step.after_work:ask=exit-once", "SHIFTFLOW_FAILPOINT_DIR": str(marks)}
    settings = configure(Settings.from_env(env))
    bind_database(pg_url)
    broker = install(build_broker(settings, worker=False))
    fake = FakeLlm(api_key=KEY)
    total = 3
    with FakeLlmServer(fake) as server:
        workspace = catalog.ensure_workspace("crash")
        store_connection(workspace.id, "openai", "openai-main", {"api_key": KEY, "base_url": server.openai_base_url})
        workflow = catalog.apply_definition(workspace, {
            "name": "crash", "trigger": {"type": "manual"},
            "steps": [{"id": "ask", "type": "llm", "connection": "openai-main", "model": "gpt-4o-mini",
                       "prompt": "json please: {{ trigger.n }}", "response_format": "json", "max_tokens": 50}],
        }).workflow
        pool = WorkerPool(env, tmp_path / "logs", queues=("triggers", "steps", "llm"), processes=1, threads=1)
        pool.start()
        try:
            pool.wait_ready(60)
            with pool.supervised():
                for n in range(total):
                    send("triggers.start", TriggerPayload(str(workflow.id), f"c-{n}", "manual", {"n": n}))

                def finished() -> bool:
                    done = Execution.select().where((Execution.workflow == workflow.id)
                                                    & Execution.status.in_(("SUCCEEDED", "FAILED"))).count()
                    return done == total

                wait_until(finished, timeout=150, message=f"{total} executions finished:\n{pool.log_tail()}")
        finally:
            pool.stop()
            broker.close()

    assert [p.name for p in marks.iterdir()] == ["failpoint-step.after_work_ask"]
    assert pool.deaths() == [137], pool.deaths()
    executions = list(Execution.select().where(Execution.workflow == workflow.id))
    assert {e.status for e in executions} == {"SUCCEEDED"}, [e.error for e in executions]
    # One call per execution reached the provider, the crashed one included.
    assert len(fake.requests) == total
    calls = list(LlmCall.select().where(LlmCall.execution.in_([e.id for e in executions])))
    assert len(calls) == total and {(c.status, c.attempt) for c in calls} == {("SUCCEEDED", 1)}
    for call in calls:
        step = StepExecution.get_by_id(call.step_execution_id)
        assert step.output["call_id"] == str(call.id)
        assert Decimal(step.output["cost_usd"]) == Decimal(call.cost_usd) > 0
    # The crashed step was delivered twice; its call was recorded and reused, not repeated.
    assert max(StepExecution.get_by_id(c.step_execution_id).attempts for c in calls) == 2
