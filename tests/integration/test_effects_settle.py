"""An ``effect: once`` call with an unknown outcome has a way out: list it, settle it.

Over real HTTP (the management API in uvicorn) and the real CLI (``shiftflow`` in a
subprocess), on real PostgreSQL and RabbitMQ with a worker running. The unknown outcome
is made as a crash makes it: the ledger says SENDING (an attempt sent the call and died
before recording the answer) and the step's message is delivered again; the worker
parks the step for an operator instead of calling again. Then an operator settles it:
done with a result (the step succeeds with it and the execution goes on), failed (the
step fails), or retry (the call is made once more).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.enqueue import send_all
from shiftflow.models.engine import runs
from shiftflow.models.engine.call_once import request_hash
from shiftflow.models.engine.start import start_execution
from shiftflow.models.manage import catalog
from shiftflow.models.tables.audit_log import AuditLog
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.side_effects import SideEffect
from shiftflow.producers.app import create_app
from tests.integration.api_support import seed_tenant, serve, worker
from tests.support.http_services import JsonService
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))


def pay_definition(url: str) -> dict[str, Any]:
    return {
        "name": "pay",
        "trigger": {"type": "manual"},
        "steps": [
            {"id": "pay", "type": "http", "effect": "once",
             "with": {"method": "POST", "url": url + "/pay", "json": {"amount": "{{ trigger.n }}"}}},
            {"id": "after", "type": "transform", "with": {"output": {"paid": "{{ steps.pay.output.json.got.amount }}"}}},
        ],
    }


@pytest.fixture
def service() -> Iterator[JsonService]:
    made = JsonService()
    yield made
    made.close()


@pytest.fixture
def api(real_env: dict[str, str], service: JsonService) -> Iterator[dict[str, Any]]:
    with worker(real_env) as settings:
        a, b = seed_tenant("alpha"), seed_tenant("beta")
        workflow = catalog.apply_definition(a.workspace, pay_definition(service.url)).workflow
        with serve(create_app(settings)) as base:
            with httpx.Client(base_url=base + "/api/v1", timeout=15,
                              headers={"User-Agent": "shiftflow-tests/1.0"}) as client:
                yield {"client": client, "a": a, "b": b, "workflow": workflow, "env": real_env}


def unknown_outcome(workflow: Any, key: str, n: int = 5) -> tuple[str, str]:
    """An execution whose ``pay`` call an earlier attempt sent without recording the answer;
    returns (execution id, effect id) once the worker parked the step for an operator."""
    started = start_execution(TriggerPayload(str(workflow.id), key, "test", {"n": n}))
    assert started.execution is not None
    execution_id = started.execution.id
    url = runs.load_definition(workflow.id, workflow.current_version).step("pay").inputs["url"]
    request = {"method": "POST", "url": url, "json": {"amount": n}}  # what the step renders and sends
    effect = SideEffect.create(workspace=workflow.workspace_id, execution=execution_id, step_id="pay", iteration=0,
                               kind="http", state="SENDING", attempts=1, sent_at=utcnow(),
                               request_hash=request_hash(request))
    send_all(started.outgoing)
    wait_until(lambda: _step(execution_id, "pay").status == "WAITING", timeout=30, message="the step to park")
    return str(execution_id), str(effect.id)


def _step(execution_id: Any, step_id: str) -> StepExecution:
    return StepExecution.get((StepExecution.execution == execution_id) & (StepExecution.step_id == step_id))


def _final(execution_id: Any) -> Execution:
    return wait_until(lambda: (e := Execution.get_by_id(execution_id)).status in ("SUCCEEDED", "FAILED") and e,
                      timeout=30, message="the execution to finish")


def test_an_unknown_outcome_is_listed_and_settled_as_done_over_http(api: dict[str, Any], service: JsonService) -> None:
    c, a, b = api["client"], api["a"], api["b"]
    execution_id, effect_id = unknown_outcome(api["workflow"], "done-1")
    parked = Execution.get_by_id(execution_id)
    assert parked.status == "RUNNING" and f"shiftflow effects settle {effect_id}" in parked.error
    assert service.calls == []  # the unknown call is never repeated by the engine

    listed = c.get("/effects", params={"state": "UNKNOWN"}, headers=a.auth("VIEWER"))
    assert listed.status_code == 200, listed.text
    (item,) = listed.json()["items"]
    assert (item["id"], item["state"], item["step_status"], item["attempts"]) == (effect_id, "UNKNOWN", "WAITING", 1)
    assert c.get(f"/effects/{effect_id}", headers=a.auth("VIEWER")).json()["execution_id"] == execution_id
    # Another workspace neither sees nor settles it.
    assert c.get("/effects", headers=b.auth("OWNER")).json()["items"] == []
    assert c.get(f"/effects/{effect_id}", headers=b.auth("OWNER")).status_code == 404
    done = {"outcome": "done", "result": {"status": 200, "json": {"got": {"amount": 5}}}}
    assert c.post(f"/effects/{effect_id}/settle", json=done, headers=b.auth("OWNER")).status_code == 404
    # Settling needs effects:settle (admins and owners), and says what is missing.
    assert c.post(f"/effects/{effect_id}/settle", json=done, headers=a.auth("MEMBER")).status_code == 403
    no_result = c.post(f"/effects/{effect_id}/settle", json={"outcome": "done"}, headers=a.auth("ADMIN"))
    assert no_result.status_code == 422 and no_result.json()["error"].startswith("result:")
    no_reason = c.post(f"/effects/{effect_id}/settle", json={"outcome": "failed"}, headers=a.auth("ADMIN"))
    assert no_reason.status_code == 422 and no_reason.json()["error"].startswith("reason:")
    bad = c.post(f"/effects/{effect_id}/settle", json={"outcome": "maybe"}, headers=a.auth("ADMIN"))
    assert bad.status_code == 422 and "outcome" in bad.json()["error"]

    settled = c.post(f"/effects/{effect_id}/settle", json=done, headers=a.auth("ADMIN"))
    assert settled.status_code == 200, settled.text
    assert settled.json()["state"] == "DONE" and settled.json()["result"] == done["result"]
    execution = _final(execution_id)
    assert (execution.status, execution.error) == ("SUCCEEDED", None)
    assert _step(execution_id, "pay").output == done["result"]
    assert _step(execution_id, "after").output == {"paid": 5}  # the execution went on with the result
    assert service.calls == []
    again = c.post(f"/effects/{effect_id}/settle", json=done, headers=a.auth("ADMIN"))
    assert again.status_code == 409 and "nothing to settle" in again.json()["error"]

    entry = AuditLog.get(AuditLog.action == "effect.settled", AuditLog.entity_id == effect_id)
    assert entry.changes["before"] == {"state": "UNKNOWN", "step_status": "WAITING"}
    assert entry.changes["after"]["state"] == "DONE" and entry.changes["after"]["outcome"] == "done"
    assert entry.changes["after"]["step_status"] == "SUCCEEDED"
    assert entry.api_key_id is not None and str(entry.api_key_id) == a.key_ids["ADMIN"]
    assert entry.ip_address == "127.0.0.1" and entry.user_agent == "shiftflow-tests/1.0"
    assert str(entry.workspace_id) == str(a.workspace.id)


def test_settled_as_failed_fails_the_step_and_retry_calls_once_more(api: dict[str, Any], service: JsonService) -> None:
    c, a = api["client"], api["a"]
    failed_id, failed_effect = unknown_outcome(api["workflow"], "failed-1")
    retried_id, retried_effect = unknown_outcome(api["workflow"], "retry-1", n=7)
    auth = a.auth("OWNER")

    answer = c.post(f"/effects/{failed_effect}/settle", json={"outcome": "failed", "reason": "no payment on file"},
                    headers=auth)
    assert answer.status_code == 200 and answer.json()["state"] == "FAILED"
    failed = _final(failed_id)
    assert failed.status == "FAILED" and "no payment on file" in failed.error
    assert _step(failed_id, "pay").status == "FAILED"

    extra = c.post(f"/effects/{retried_effect}/settle", json={"outcome": "retry", "reason": "x"}, headers=auth)
    assert extra.status_code == 422 and extra.json()["error"].startswith("reason:")
    answer = c.post(f"/effects/{retried_effect}/settle", json={"outcome": "retry"}, headers=auth)
    assert answer.status_code == 200 and answer.json()["state"] == "PLANNED"
    retried = _final(retried_id)
    assert (retried.status, retried.error) == ("SUCCEEDED", None)
    assert [call["body"] for call in service.calls] == [{"amount": 7}]  # called once more, once
    effect = SideEffect.get_by_id(retried_effect)
    assert (effect.state, effect.attempts) == ("DONE", 2)
    assert _step(retried_id, "after").output == {"paid": 7}
    actions = [e.changes["after"]["outcome"] for e in AuditLog.select().where(AuditLog.action == "effect.settled")]
    assert sorted(actions) == ["failed", "retry"]


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SHIFTFLOW, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
                          check=False)


def test_the_cli_lists_and_settles_and_names_the_flag_on_bad_usage(api: dict[str, Any], service: JsonService) -> None:
    env = api["env"]
    execution_id, effect_id = unknown_outcome(api["workflow"], "cli-1", n=3)

    listed = _cli(env, "effects", "list", "--state", "unknown", "--workspace", "alpha")
    assert listed.returncode == 0 and effect_id in listed.stdout and "UNKNOWN" in listed.stdout, listed.stderr
    assert "shiftflow effects settle" in listed.stdout
    as_json = json.loads(_cli(env, "effects", "list", "--workspace", "alpha", "--json").stdout)
    assert [i["id"] for i in as_json["items"]] == [effect_id]
    assert effect_id not in _cli(env, "effects", "list", "--workspace", "beta").stdout

    usage = [
        (("--done",), "--result"),
        (("--done", "--result", "{not json"), "--result: not valid JSON"),
        (("--failed",), "--reason"),
        (("--retry", "--result", "1"), "--result"),
        ((), "one of the arguments --done --failed --retry is required"),
        (("--done", "--failed"), "not allowed with argument"),
    ]
    for flags, says in usage:
        bad = _cli(env, "effects", "settle", effect_id, *flags)
        assert bad.returncode == 2 and says in bad.stderr, (flags, bad.returncode, bad.stderr)
    assert _cli(env, "effects", "list", "--state", "BOGUS").returncode == 2
    assert Execution.get_by_id(execution_id).status == "RUNNING"  # bad usage changed nothing

    done = _cli(env, "effects", "settle", effect_id, "--done", "--result", '{"status": 200, "json": {"got": {"amount": 3}}}',
                "--by", "ada")
    assert done.returncode == 0 and "settled as done" in done.stdout, done.stderr
    execution = _final(execution_id)
    assert execution.status == "SUCCEEDED" and _step(execution_id, "after").output == {"paid": 3}
    again = _cli(env, "effects", "settle", effect_id, "--failed", "--reason", "late")
    assert again.returncode == 1 and "nothing to settle" in again.stderr
    entry = AuditLog.get(AuditLog.action == "effect.settled", AuditLog.entity_id == effect_id)
    assert entry.changes["after"]["by"] == "ada" and entry.metadata["via"] == "cli"
    assert service.calls == []


def test_retry_of_a_for_each_item_calls_with_its_own_item(api: dict[str, Any], service: JsonService) -> None:
    """A ``for_each`` item parked on an unknown outcome keeps its item: called again by
    order of an operator, it renders the same request (and so the same ledger hash) as
    the attempt that was cut, instead of failing with "the request differs"."""
    c, a = api["client"], api["a"]
    url = service.url + "/pay"
    fanout = catalog.apply_definition(a.workspace, {
        "name": "pay-each",
        "trigger": {"type": "manual"},
        "steps": [
            {"id": "pay", "type": "http", "effect": "once", "for_each": [11, 12], "concurrency": 2,
             "with": {"method": "POST", "url": url, "json": {"amount": "{{ item }}"}}},
            {"id": "join", "type": "transform", "with": {"output": {"paid": "{{ steps.pay.output }}"}}},
        ],
    }).workflow
    started = start_execution(TriggerPayload(str(fanout.id), "each-1", "test", {}))
    assert started.execution is not None
    execution_id = started.execution.id
    # Item 1's call was sent by an attempt that died before recording the answer.
    effect = SideEffect.create(workspace=fanout.workspace_id, execution=execution_id, step_id="pay", iteration=1,
                               kind="http", state="SENDING", attempts=1, sent_at=utcnow(),
                               request_hash=request_hash({"method": "POST", "url": url, "json": {"amount": 11}}))
    send_all(started.outgoing)
    item = lambda: StepExecution.get((StepExecution.execution == execution_id)  # noqa: E731
                                     & (StepExecution.step_id == "pay") & (StepExecution.iteration == 1))
    wait_until(lambda: item().status == "WAITING", timeout=30, message="item 1 to park")
    wait_until(lambda: service.calls, timeout=30, message="item 2's call")
    assert [call["body"] for call in service.calls] == [{"amount": 12}]

    answer = c.post(f"/effects/{effect.id}/settle", json={"outcome": "retry"}, headers=a.auth("OWNER"))
    assert answer.status_code == 200, answer.text
    execution = _final(execution_id)
    assert (execution.status, execution.error) == ("SUCCEEDED", None), execution.error
    assert sorted(call["body"]["amount"] for call in service.calls) == [11, 12]
    join = _step(execution_id, "join").output["paid"]
    assert [out["json"]["got"]["amount"] for out in join] == [11, 12]
