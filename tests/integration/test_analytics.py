"""The analytics readers on real services: API (uvicorn), CLI (a process) and the readers.

Real PostgreSQL, RabbitMQ and the MongoDB-wire server (SecantusDB, which has
``$percentile``; the fallback for servers without it runs against the same server with
``$percentile`` refused). Executions run through a real worker and write their own
analytics and usage documents; documents seeded with known values pin the arithmetic.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo.errors import OperationFailure

from shiftflow.consumers import timers
from shiftflow.kernel import usage
from shiftflow.kernel.mongo import ANALYTICS_EVENTS, INTEGRATION_USAGE, get_sink
from shiftflow.models.engine.start import start_execution
from shiftflow.models.manage import analytics, apikeys, catalog
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.problems import Forbidden, InvalidInput
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.producers.app import create_app
from tests.integration.api_support import seed_tenant, serve, worker
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))

#: A condition (inline), an outside call (queued on tools) that fails when asked to, a transform.
CALLING = {
    "name": "calling",
    "trigger": {"type": "manual"},
    "steps": [
        {"id": "check", "type": "condition", "with": {"left": "{{ trigger.n }}", "op": ">=", "right": 0}},
        {"id": "call", "type": "http", "timeout": 5, "retry": {"max": 0},
         "with": {"method": "POST", "url": "{{ vars.url }}", "json": {"n": "{{ trigger.n }}"}}},
        {"id": "shape", "type": "transform", "with": {"output": {"n": "{{ trigger.n }}"}}},
    ],
}
T0 = dt.datetime(2026, 3, 1, 12, 0, 0)


@pytest.fixture
def rig(real_env: dict[str, str], json_service: Any) -> Any:
    with worker(real_env) as settings:
        a, b = seed_tenant("alpha"), seed_tenant("beta")
        with serve(create_app(settings)) as base:
            with httpx.Client(base_url=base + "/api/v1", timeout=15) as client:
                sink = get_sink()
                assert sink is not None
                yield {"client": client, "a": a, "b": b, "db": sink.database(), "sink": sink,
                       "service": json_service, "env": real_env}


def _start(workflow_id: Any, key: str, n: int) -> Execution:
    from shiftflow.kernel.contracts import TriggerPayload
    from shiftflow.kernel.enqueue import send_all

    started = start_execution(TriggerPayload(workflow_id=str(workflow_id), dedup_key=key, source="manual",
                                                  data={"n": n}))
    send_all(started.outgoing)
    return started.execution


def _finished(execution_id: Any) -> Execution | None:
    row = Execution.get_by_id(execution_id)
    return row if row.status in ("SUCCEEDED", "FAILED") else None


def _seed(db: Any, workspace: Any, workflow: Any) -> None:
    """Known documents: 20 executions (durations 10..200 ms, every fourth failed), step
    outcomes of one step, usage of two actions and model calls of two models; the same again
    out of the window, and for another workspace."""
    ws, wf = str(workspace), str(workflow)
    events, calls = [], []
    for i in range(20):
        at = T0 + dt.timedelta(minutes=i)
        status = "failed" if i % 4 == 3 else "succeeded"
        events.append({"timestamp": at, "event": "workflow_executed", "workspaceId": ws, "workflowId": wf,
                       "properties": {"status": status, "duration": (i + 1) * 10, "stepCount": 1}})
        events.append({"timestamp": at, "event": "step_executed", "workspaceId": ws, "workflowId": wf,
                       "properties": {"stepId": "s", "type": "http", "status": status, "duration": (i + 1) * 5,
                                      "iteration": 0}})
        calls.append({"timestamp": at, "integrationId": "http", "action": "POST" if i < 15 else "GET",
                      "workspaceId": ws, "workflowId": wf, "success": status == "succeeded", "duration": i + 1,
                      "rateLimit": i == 0})
    for model, tokens, cost in (("gpt-4o-mini", (100, 20), 0.0015), ("claude-haiku", (300, 50), None),
                                ("gpt-4o-mini", (200, 40), 0.003)):
        calls.append({"timestamp": T0, "integrationId": "openai", "action": "chat", "workspaceId": ws,
                      "workflowId": wf, "success": True, "duration": 5.0, "rateLimit": False, "model": model,
                      "tokensIn": tokens[0], "tokensOut": tokens[1], "costUsd": cost})
    late = T0 + dt.timedelta(days=2)
    events.append({"timestamp": late, "event": "workflow_executed", "workspaceId": ws, "workflowId": wf,
                   "properties": {"status": "failed", "duration": 99_999}})
    calls.append({"timestamp": late, "integrationId": "openai", "action": "chat", "workspaceId": ws,
                  "workflowId": wf, "success": True, "duration": 1.0, "rateLimit": False, "model": "gpt-4o-mini",
                  "tokensIn": 1, "tokensOut": 1, "costUsd": 100.0})
    db[ANALYTICS_EVENTS].insert_many(events)
    db[INTEGRATION_USAGE].insert_many(calls)


WINDOW = {"since": "2026-03-01T00:00:00Z", "until": "2026-03-02T00:00:00+00:00"}


def test_the_api_reports_known_documents_exactly(rig: dict[str, Any]) -> None:
    c, a, b, db = rig["client"], rig["a"], rig["b"], rig["db"]
    mine = catalog.apply_definition(a.workspace, dict(CALLING, vars={"url": "http://127.0.0.1:9/x"})).workflow
    theirs = catalog.apply_definition(b.workspace, dict(CALLING, vars={"url": "http://127.0.0.1:9/x"})).workflow
    _seed(db, a.workspace.id, mine.id)
    _seed(db, b.workspace.id, theirs.id)

    report = c.get("/analytics/workflows", params=WINDOW, headers=a.auth("VIEWER")).json()
    assert report["since"] == "2026-03-01T00:00:00.000000Z" and report["sampled"] is False
    (item,) = report["items"]
    durations = [(i + 1) * 10 for i in range(20)]
    assert item == {"workflow_id": str(mine.id), "workflow_name": "calling", "executions": 20, "succeeded": 15,
                    "failed": 5, "success_rate": 0.75,
                    "duration_ms": {"p50": analytics.nearest_rank(durations, 0.5),
                                    "p95": analytics.nearest_rank(durations, 0.95)}}
    assert item["duration_ms"] == {"p50": 100.0, "p95": 190.0}

    (step,) = c.get("/analytics/steps", params=WINDOW, headers=a.auth("VIEWER")).json()["items"]
    assert (step["step_id"], step["step_type"], step["runs"], step["success_rate"]) == ("s", "http", 20, 0.75)
    assert step["duration_ms"] == {"p50": 50.0, "p95": 95.0}

    usage_items = c.get("/analytics/integrations", params=WINDOW, headers=a.auth("VIEWER")).json()["items"]
    by_action = {(u["integration"], u["action"]): u for u in usage_items}
    assert by_action[("http", "POST")]["calls"] == 15 and by_action[("http", "GET")]["calls"] == 5
    assert by_action[("http", "POST")]["rate_limited"] == 1
    assert by_action[("http", "GET")]["succeeded"] == 3  # i = 15..19: 15 and 19 failed
    assert by_action[("openai", "chat")]["calls"] == 3

    costs = c.get("/analytics/costs", params=WINDOW, headers=a.auth("VIEWER")).json()
    assert costs["items"] == [
        {"workspace_id": str(a.workspace.id), "model": "claude-haiku", "calls": 1, "tokens_in": 300,
         "tokens_out": 50, "cost_usd": 0.0, "unpriced_calls": 1},
        {"workspace_id": str(a.workspace.id), "model": "gpt-4o-mini", "calls": 2, "tokens_in": 300,
         "tokens_out": 60, "cost_usd": 0.0045, "unpriced_calls": 0},
    ]
    assert costs["total_cost_usd"] == 0.0045

    # The workflow filter; another workspace's workflow is unknown here (422 naming it).
    only = c.get("/analytics/workflows", params={**WINDOW, "workflow_id": str(mine.id)}, headers=a.auth()).json()
    assert [i["workflow_id"] for i in only["items"]] == [str(mine.id)]
    for wid in (str(theirs.id), str(uuid.uuid4())):
        refused = c.get("/analytics/steps", params={**WINDOW, "workflow_id": wid}, headers=a.auth())
        assert refused.status_code == 422 and refused.json()["error"].startswith("workflow_id"), refused.text
    # Tenant isolation: nothing of B in any of A's reports, and B sees its own.
    for report_name in analytics.READERS:
        text = c.get(f"/analytics/{report_name}", params=WINDOW, headers=a.auth()).text
        assert str(b.workspace.id) not in text and str(theirs.id) not in text, report_name
    theirs_report = c.get("/analytics/workflows", params=WINDOW, headers=b.auth("VIEWER")).json()
    assert [i["workflow_id"] for i in theirs_report["items"]] == [str(theirs.id)]


def test_bad_windows_and_missing_permission_are_4xx_naming_the_field(rig: dict[str, Any]) -> None:
    c, a = rig["client"], rig["a"]
    cases = [
        ({"since": "2026-03-01T00:00:00"}, "since"),  # naive
        ({"until": "2026-03-01 12:00:00"}, "until"),  # naive
        ({"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, "since"),  # since after until
        ({"since": "2026-03-01T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, "since"),  # empty window
        ({"since": "2020-01-01T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, "since"),  # too long
        ({"workflow_id": "nope"}, "workflow_id"),
    ]
    for params, field in cases:
        response = c.get("/analytics/workflows", params=params, headers=a.auth())
        assert response.status_code == 422, (params, response.text)
        assert response.json()["error"].startswith(field), (params, response.text)
    # A key whose scopes leave analytics out is refused; the default window answers.
    _row, narrow = apikeys.create_key(Principal.operator(a.workspace.id), name="narrow", scopes=["workflows:read"],
                                        user_id=a.users["VIEWER"].id)
    refused = c.get("/analytics/costs", headers={"Authorization": f"Bearer {narrow}"})
    assert refused.status_code == 403 and "analytics:read" in refused.json()["error"]
    assert c.get("/analytics/costs", headers=a.auth("VIEWER")).status_code == 200
    # The readers themselves (the CLI's path) refuse the same, naming the field.
    actor = Principal.operator(a.workspace.id)
    with pytest.raises(InvalidInput) as naive:
        analytics.workflow_stats(actor, rig["db"], since=dt.datetime(2026, 3, 1))
    assert naive.value.field == "since"
    with pytest.raises(Forbidden):
        analytics.costs(apikeys.authenticate(narrow), rig["db"])


def test_executions_run_by_a_worker_are_counted(rig: dict[str, Any]) -> None:
    a, db, service = rig["a"], rig["db"], rig["service"]
    workflow = catalog.apply_definition(a.workspace, dict(CALLING, vars={"url": service.url + "/svc"})).workflow
    service.script = [200, 500, 200, 200]  # the second call fails (no retries): its execution fails
    ids = []
    for n in range(4):
        ids.append(_start(workflow.id, f"run-{n}", n).id)
        wait_until(lambda eid=ids[-1]: _finished(eid), timeout=30)
    rows = [Execution.get_by_id(i) for i in ids]
    assert [r.status for r in rows].count("FAILED") == 1
    rig["sink"].flush(5)
    actor = Principal.operator(a.workspace.id)
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()

    def reported() -> dict[str, Any] | None:
        rig["sink"].flush(5)
        found = analytics.workflow_stats(actor, db, since=since)
        return found if found["items"] and found["items"][0]["executions"] == 4 else None

    (item,) = wait_until(reported, timeout=30)["items"]
    durations = [r.duration_ms for r in rows]
    assert (item["succeeded"], item["failed"]) == (3, 1)
    assert item["duration_ms"] == {"p50": float(analytics.nearest_rank(durations, 0.5)),
                                   "p95": float(analytics.nearest_rank(durations, 0.95))}

    steps = {s["step_id"]: s for s in analytics.step_stats(actor, db, since=since)["items"]}
    recorded = list(StepExecution.select().where(StepExecution.execution.in_(ids)))
    for step_id in ("check", "call", "shape"):
        mine = [s for s in recorded if s.step_id == step_id]
        assert steps[step_id]["runs"] == len(mine), step_id
        assert steps[step_id]["succeeded"] == sum(s.status == "SUCCEEDED" for s in mine), step_id
    assert steps["call"]["step_type"] == "http" and steps["call"]["failed"] == 1
    # Every step has durations, inline ones too (those run while the execution is created).
    assert all(s["duration_ms"]["p50"] is not None for s in steps.values()), steps
    (calls,) = analytics.integration_usage(actor, db, since=since)["items"]
    assert (calls["integration"], calls["action"], calls["calls"], calls["failed"]) == ("http", "POST", 4, 1)


def test_a_retried_call_counts_each_attempt_but_one_step_outcome(rig: dict[str, Any]) -> None:
    """The integrations report counts calls (every attempt, a failed one too: one
    ``integration_usage`` document per call), the steps report outcomes (one ``step_executed``
    per final outcome): a step that failed once and then succeeded is 2 calls, 1 run. So
    the usage of a step cannot be read from its outcome's document alone."""
    a, db, service = rig["a"], rig["db"], rig["service"]
    retried = dict(CALLING, name="retried", steps=[
        dict(CALLING["steps"][1], retry={"max": 1, "backoff": 0.1, "jitter": False}),
    ])
    workflow = catalog.apply_definition(a.workspace, dict(retried, vars={"url": service.url + "/svc"})).workflow
    service.script = [503, 200]  # the first call fails (transient), its retry succeeds
    execution = _start(workflow.id, "retried-0", 1)
    # The retry waits on a durable timer: this test is the timer loop (``consumers.timers``).
    wait_until(lambda: (timers.tick(), _finished(execution.id))[1], timeout=30)
    assert Execution.get_by_id(execution.id).status == "SUCCEEDED"
    actor = Principal.operator(a.workspace.id)
    since = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()

    def reported() -> tuple[dict[str, Any], dict[str, Any]] | None:
        rig["sink"].flush(5)
        steps = analytics.step_stats(actor, db, since=since, workflow_id=str(workflow.id))["items"]
        calls = analytics.integration_usage(actor, db, since=since, workflow_id=str(workflow.id))["items"]
        return (steps[0], calls[0]) if steps and calls and calls[0]["calls"] == 2 else None

    step, calls = wait_until(reported, timeout=30)
    assert (step["step_id"], step["runs"], step["succeeded"], step["failed"]) == ("call", 1, 1, 0)
    assert (calls["calls"], calls["failed"]) == (2, 1)


def test_percentiles_without_server_support_match(rig: dict[str, Any]) -> None:
    """A server without $percentile (MongoDB < 7.0): the same numbers, computed here."""
    a, db = rig["a"], rig["db"]
    workflow = catalog.apply_definition(a.workspace, dict(CALLING, vars={"url": "http://127.0.0.1:9/x"})).workflow
    _seed(db, a.workspace.id, workflow.id)
    actor = Principal.operator(a.workspace.id)
    with_server = analytics.step_stats(actor, db, **WINDOW)

    class NoPercentile:
        """The real database, refusing $percentile as MongoDB 6 does."""

        def __getitem__(self, name: str) -> Any:
            real = db[name]

            class Collection:
                def aggregate(self, pipeline: list[dict[str, Any]]) -> Any:
                    if "$percentile" in json.dumps(pipeline, default=str):
                        raise OperationFailure("unknown group operator '$percentile'", code=15952)
                    return real.aggregate(pipeline)

                def find(self, *args: Any) -> Any:
                    return real.find(*args)

            return Collection()

    without = analytics.step_stats(actor, NoPercentile(), **WINDOW)
    assert without["items"] == with_server["items"] and with_server["items"]
    assert without["sampled"] is False


def test_the_cli_prints_the_reports_and_names_bad_flags(rig: dict[str, Any]) -> None:
    a, db = rig["a"], rig["db"]
    workflow = catalog.apply_definition(a.workspace, dict(CALLING, vars={"url": "http://127.0.0.1:9/x"})).workflow
    _seed(db, a.workspace.id, workflow.id)
    usage.record(workspace_id=a.workspace.id, integration="http", action="GET", success=True, duration_ms=3,
                 at=T0)
    rig["sink"].flush(5)
    env = rig["env"]
    args = ["--workspace", "alpha", "--since", WINDOW["since"], "--until", WINDOW["until"]]
    out = subprocess.run([SHIFTFLOW, "analytics", "workflows", *args, "--json"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["items"][0]["executions"] == 20
    table = subprocess.run([SHIFTFLOW, "analytics", "costs", *args], env=env, capture_output=True, text=True,
                           timeout=120)
    assert table.returncode == 0, table.stderr
    assert "gpt-4o-mini" in table.stdout and "total USD 0.004500" in table.stdout
    naive = subprocess.run([SHIFTFLOW, "analytics", "steps", "--workspace", "alpha", "--since", "2026-03-01T00:00"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert naive.returncode == 2 and naive.stderr.startswith("shiftflow: --since:"), naive.stderr
    unknown = subprocess.run([SHIFTFLOW, "analytics", "steps", "--workspace", "alpha", "--workflow",
                              str(uuid.uuid4())], env=env, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and unknown.stderr.startswith("shiftflow: --workflow:"), unknown.stderr
