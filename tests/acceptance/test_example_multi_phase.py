"""The multi-phase example on real services, read through the API and its SSE stream.

RabbitMQ, PostgreSQL, Redis and SecantusDB of the test; a worker (real broker) and the
timer loop; the management API served by uvicorn; the fake deploy service on a real HTTP
port. ``examples/multi_phase/workflow.yaml`` runs once: its first execution fails after
the planning phase (on purpose), the automatic retry is a child execution that resumes
from the checkpoint (no planning again), the agent commits, and the deploy step polls the
fake to ready. The timeline read with ``GET`` and the one streamed as Server-Sent Events
hold the same events, in the order they happened.

The shipped pattern-feedback flow runs through the API too: feedback starts an agent run,
a member approves, a member's verification is refused (403, nothing changes), an admin
verifies, and the workspace's timeline shows each of these.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shiftflow.consumers.timers import run_loop
from shiftflow.fakes.deploy import FakeDeploy, FakeDeployServer, SystemClock, Timings
from shiftflow.kernel.mongo import get_sink
from shiftflow.models.manage import catalog
from shiftflow.models.patterns import flow
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.patterns import PatternRun, PatternWorkspace
from shiftflow.producers.app import create_app
from tests.integration.api_support import seed_tenant, serve, worker
from tests.support.waiting import wait_until

pytestmark = pytest.mark.acceptance
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "multi_phase" / "workflow.yaml"
FINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT")


@contextlib.contextmanager
def _stack(real_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    fake = FakeDeployServer(FakeDeploy(clock=SystemClock(), timings=Timings(queued=0.3, building=0.8)))
    fake.start()
    stop = threading.Event()
    try:
        with worker(real_env, threads=4) as settings:
            timers = threading.Thread(target=run_loop, args=(stop, 0.1), daemon=True)
            timers.start()
            tenant = seed_tenant("multi")
            with serve(create_app(settings)) as base, httpx.Client(base_url=base + "/api/v1", timeout=30) as client:
                yield {"client": client, "tenant": tenant, "fake": fake, "base": base}
            stop.set()
            timers.join(10)
    finally:
        stop.set()
        fake.stop()


def _sse(base: str, path: str, auth: dict[str, str], out: list[dict[str, Any]]) -> None:
    """Read an SSE stream to its ``end`` event, appending each event (type and data)."""
    with httpx.stream("GET", base + "/api/v1" + path, headers=auth, timeout=120) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        for line in response.iter_lines():
            if line.startswith("event: "):
                event["event"] = line[7:]
            elif line.startswith("id: "):
                event["id"] = line[4:]
            elif line.startswith("data: "):
                event["data"] = json.loads(line[6:])
            elif line == "" and event:
                out.append(event)
                if event.get("event") == "end":
                    return
                event = {}


def _chain_done(root_id: str) -> Execution | None:
    children = list(Execution.select().where(Execution.parent == root_id))
    if not children:
        return None
    child = children[0]
    return child if child.status in FINAL else None


@pytest.mark.timeout(240)
def test_example_multi_phase_retry_chain_and_deploy(real_env):
    with _stack(real_env) as s:
        c, tenant, fake = s["client"], s["tenant"], s["fake"]
        auth = tenant.auth("OWNER")
        definition = yaml.safe_load(EXAMPLE.read_text())
        definition["vars"]["deploy_url"] = fake.base_url
        workflow = catalog.apply_definition(tenant.workspace, definition).workflow
        started = c.post(f"/workflows/{workflow.id}/run", json={"input": {}}, headers=auth)
        assert started.status_code == 202, started.text
        root = wait_until(lambda: Execution.get_or_none(Execution.dedup_key == started.json()["execution_key"]),
                          timeout=30)
        streamed: list[dict[str, Any]] = []
        reader = threading.Thread(target=_sse, args=(s["base"], f"/executions/{root.id}/timeline/stream?wait=150",
                                                     auth, streamed))
        reader.start()

        child = wait_until(lambda: _chain_done(str(root.id)), timeout=150, interval=0.2)
        root = Execution.get_by_id(root.id)
        assert root.status == "FAILED" and "fail_attempts" in root.error
        assert child.status == "SUCCEEDED", child.error
        assert (child.parent_id, child.retry_count, child.max_retries) == (root.id, 1, 3)
        assert "failed on attempt 1" in child.retry_reason
        assert child.result["deploy"]["status"] == "ready" and child.result["deploy"]["url"]
        assert [d.status for d in fake.fake.requests if d.method == "POST"] == [201]  # one deployment
        assert root.max_retries == 3  # read from the definition when the chain's first execution failed

        reader.join(60)
        assert not reader.is_alive(), "the stream did not end when the chain ended"
        assert get_sink() is None or get_sink().flush(10)  # type: ignore[union-attr]
        answer = c.get(f"/executions/{root.id}/timeline", headers=auth)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert [e["id"] for e in body["retry_chain"]] == [str(root.id), str(child.id)]
        events = body["items"]
        by_execution: dict[str, list[str]] = {}
        for e in events:
            by_execution.setdefault(e["execution_id"], []).append(e["type"])
        first, second = by_execution[str(root.id)], by_execution[str(child.id)]
        assert "retry_scheduled" in first and "checkpoint" in first
        assert [e["data"]["phase"] for e in events if e["type"] == "phase_update" and e["execution_id"] == str(root.id)] \
            == ["planning"]
        # The retry resumed after the checkpointed planning phase.
        assert [e["data"]["phase"] for e in events if e["type"] == "phase_update"
                and e["execution_id"] == str(child.id)] == ["implementing", "testing", "refining", "deploying"]
        for kind in ("commit", "completed", "deploy_started", "deploy_building", "deploy_success", "status_changed"):
            assert kind in second, (kind, second)
        assert events[-1]["type"] == "status_changed" and events[-1]["data"]["status"] == "SUCCEEDED"

        # The stream carried the same events (each once), then its end.
        assert streamed[-1]["event"] == "end" and streamed[-1]["data"] == {"ended": True}
        sse_ids = [e["data"]["id"] for e in streamed[:-1]]
        assert sorted(sse_ids) == sorted(e["id"] for e in events) and len(set(sse_ids)) == len(sse_ids)

        chain = c.get(f"/executions/{child.id}/retries", headers=auth).json()["items"]
        assert [(i["retry_count"], i["status"]) for i in chain] == [(0, "FAILED"), (1, "SUCCEEDED")]


def _waiting_step(c: httpx.Client, auth: dict[str, str], execution_id: str) -> str | None:
    steps = c.get(f"/executions/{execution_id}", headers=auth).json()["steps"]
    waiting = [st["step_id"] for st in steps if st["status"] == "WAITING" and st["type"] == "approval"]
    return waiting[0] if waiting else None


@pytest.mark.timeout(240)
def test_pattern_feedback_flow_with_approval_roles(real_env):
    with _stack(real_env) as s:
        c, tenant, fake = s["client"], s["tenant"], s["fake"]
        owner, member, admin = tenant.auth("OWNER"), tenant.auth("MEMBER"), tenant.auth("ADMIN")
        flow.install(tenant.workspace.id, deploy_url=fake.base_url, poll_seconds=0.3)
        made = c.post("/pattern-workspaces", json={"pattern_type": "swings", "name": "Swings"}, headers=owner)
        assert made.status_code == 201, made.text
        pattern_id = made.json()["id"]

        # Bad input: nothing is written.
        bad = c.post(f"/pattern-workspaces/{pattern_id}/feedback", json={"items": []}, headers=member)
        assert bad.status_code == 422 and "items" in bad.json()["error"]
        unknown = c.post("/pattern-workspaces/00000000-0000-4000-8000-000000000000/feedback",
                         json={"items": [{"content": "x"}]}, headers=member)
        assert unknown.status_code == 404
        assert Execution.select().count() == 0

        sent = c.post(f"/pattern-workspaces/{pattern_id}/feedback",
                      json={"items": [{"content": "missed a swing high"}, {"content": "too many lows"}]},
                      headers=member)
        assert sent.status_code == 202, sent.text
        execution_id = sent.json()["execution_id"]
        assert len(sent.json()["feedback_ids"]) == 2

        assert wait_until(lambda: _waiting_step(c, owner, execution_id), timeout=90) == "user_approval"
        ok = c.post(f"/pattern-workspaces/{pattern_id}/approve", json={"execution_id": execution_id}, headers=member)
        assert ok.status_code == 200, ok.text
        assert wait_until(lambda: _waiting_step(c, owner, execution_id), timeout=30) == "admin_verification"
        refused = c.post(f"/pattern-workspaces/{pattern_id}/approve", json={"execution_id": execution_id},
                         headers=member)
        assert refused.status_code == 403 and "admin" in refused.json()["error"]
        assert _waiting_step(c, owner, execution_id) == "admin_verification"  # nothing changed
        verified = c.post(f"/pattern-workspaces/{pattern_id}/approve",
                          json={"execution_id": execution_id, "comment": "checked"}, headers=admin)
        assert verified.status_code == 200, verified.text
        done = wait_until(lambda: (e := Execution.get_by_id(execution_id)).status in FINAL and e, timeout=30)
        assert done.status == "SUCCEEDED", done.error

        pattern = PatternWorkspace.get_by_id(pattern_id)
        assert pattern.status == "verified" and pattern.feedback_count == 2
        run = PatternRun.get(PatternRun.execution == execution_id)
        assert run.deploy_status == "ready" and run.commit_hash and run.deploy_url
        assert get_sink() is None or get_sink().flush(10)  # type: ignore[union-attr]
        items = c.get(f"/pattern-workspaces/{pattern_id}/timeline", headers=owner).json()["items"]
        types = [e["type"] for e in items]
        for kind in ("feedback_sent", "phase_update", "checkpoint", "commit", "deploy_success",
                     "approval_requested", "approval_decided", "verification_requested", "verification_decided"):
            assert kind in types, (kind, types)
        assert types.index("approval_decided") < types.index("verification_decided")
