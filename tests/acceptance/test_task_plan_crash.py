"""A worker killed during an agent task's planner step: the task is planned once and its
cost counted once.

Two windows, each with a real worker pool on real PostgreSQL and RabbitMQ and the fake LLM
provider over real HTTP:

* killed after the model answered and the call was recorded, before the plan was stored
  (a failpoint exits the process as a SIGKILL would): the redelivered step reuses the
  recorded answer; the provider is asked once;
* SIGKILLed while the model call is in flight (the answer is slow): the call left RUNNING
  is settled FAILED (its cost unknown) and the redelivery asks again; one answer counts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from shiftflow.fakes.llm import FakeLlm, FakeLlmServer
from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.enqueue import send_all
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine.connection_secrets import store_connection
from shiftflow.models.manage import catalog, tasks
from shiftflow.models.manage.access import Principal
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.llm_calls import LlmCall
from shiftflow.models.tables.workflows import WorkflowVersion
from tests.support.waiting import wait_until

pytestmark = pytest.mark.acceptance
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))
PLAN = {"steps": [{"tool": "http.request", "params": {"url": "http://127.0.0.1:9/unreached"}}]}


def _pool(env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([SHIFTFLOW, "workers", "--queues", "triggers", "steps", "llm", "--processes", "1",
                             "--threads", "2"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill(pool: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    if pool.poll() is None:
        os.killpg(pool.pid, sig)
    try:
        pool.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(pool.pid, signal.SIGKILL)
        pool.wait(10)


@pytest.mark.parametrize("window", ["after_the_call_was_recorded", "during_the_call"])
def test_a_worker_killed_during_planning_plans_once_and_counts_the_cost_once(real_env, tmp_path, window):
    fake = FakeLlm(api_key="sk-crash")
    env = {**os.environ, **real_env, "SHIFTFLOW_TASK_MODEL": "fake-echo", "SHIFTFLOW_FAILPOINT_DIR": str(tmp_path)}
    if window == "after_the_call_was_recorded":
        env["SHIFTFLOW_FAILPOINTS"] = "task.after_plan_call=exit-once"
    settings = configure(Settings.from_env(env))
    bind_database(settings.database_url)
    broker = install(build_broker(settings, worker=False))
    log = open(tmp_path / "workers.log", "wb")
    pool = None
    try:
        with FakeLlmServer(fake) as llm:
            fake.script("[[crash]]", json=PLAN)
            workspace = catalog.ensure_workspace("crash")
            store_connection(workspace.id, "openai", "planner", {"api_key": "sk-crash", "base_url": llm.openai_base_url})
            task, outgoing = tasks.create_task(Principal.operator(workspace.id), "plan it [[crash]]",
                                               approve_required=True)
            if window == "during_the_call":
                fake.slow_next(30)  # the first answer is held: the worker dies waiting for it
            send_all(outgoing)
            pool = _pool(env, log)
            if window == "during_the_call":
                wait_until(lambda: LlmCall.get_or_none(LlmCall.status == "RUNNING"), timeout=60)
                _kill(pool)
                pool = _pool(env, log)
            else:
                # The failpoint killed the process; its supervisor starts another, which takes the step over.
                pass

            def planned() -> Any:
                row = Execution.get_by_id(task["id"])
                return row if (row.context or {}).get("plan") or row.status == "FAILED" else None

            row = wait_until(planned, timeout=120)
            assert row.status == "RUNNING", (row.error, (tmp_path / "workers.log").read_bytes()[-3000:])
            calls = list(LlmCall.select().where(LlmCall.execution == row.id).order_by(LlmCall.attempt))
            succeeded = [c for c in calls if c.status == "SUCCEEDED"]
            assert len(succeeded) == 1
            story = tasks.task_story(Principal.operator(workspace.id), row.id)
            assert Decimal(str(story["cost_usd"])) == succeeded[0].cost_usd > 0
            assert row.context["plan"] == PLAN["steps"]
            # Planned once: one plan version beside the planner's.
            assert WorkflowVersion.select().where(WorkflowVersion.workflow == row.workflow_id).count() == 2
            if window == "after_the_call_was_recorded":
                assert len(calls) == 1 and len(fake.requests) == 1  # the recorded answer was reused
                assert (tmp_path / "failpoint-task.after_plan_call").exists()
            else:
                assert [c.status for c in calls] == ["FAILED", "SUCCEEDED"] and "abandoned" in calls[0].error
                assert calls[0].cost_usd is None
    finally:
        if pool is not None:
            _kill(pool, signal.SIGTERM)
        log.close()
        broker.close()
