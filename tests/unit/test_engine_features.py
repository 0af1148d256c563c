"""Engine features on the in-process broker and SQLite: branches, joins, fan-out, waits,
events, approvals, sub-workflows, retries, timeouts, flow control, secrets, effects."""

from __future__ import annotations

import datetime as dt
import json

import dramatiq
import pytest

from shiftflow import actors
from shiftflow.consumers import timers
from shiftflow.consumers.dead_letters import DeadLetters
from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.enqueue import send, send_all
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine import connection_secrets, waits
from shiftflow.models.manage import catalog
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.registry import create_all
from shiftflow.models.tables.side_effects import SideEffect
from shiftflow.models.tables.workflows import Workflow
from tests.support.waiting import wait_until as _wait_until


def wait_until(predicate, timeout=45.0, interval=0.05):
    """Generous timeouts: these tests share two cores with whatever else runs."""
    return _wait_until(predicate, timeout=timeout, interval=interval)


@pytest.fixture
def service(json_service):
    return json_service


@pytest.fixture
def url(service):
    return service.url


@pytest.fixture
def engine(tmp_path):
    settings = configure(Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_DATA_DIR": str(tmp_path),
                                            "SHIFTFLOW_SECRET_KEYS": "k" * 40}))
    db = bind_database(settings.database_url)
    create_all(db)
    broker = install(build_broker(settings, extra=[DeadLetters()]))
    actors.declare(broker)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=20)
    worker.start()
    yield broker
    worker.stop()
    broker.close()
    db.close()


def _apply(steps, name="w", **extra):
    workspace = catalog.ensure_workspace("t")
    return catalog.apply_definition(workspace, {"name": name, "steps": steps, **extra}).workflow


def _run(workflow, data=None, key="k1"):
    send("triggers.start", TriggerPayload(str(workflow.id), key, "test", data or {}))
    return key


def _done(key, statuses=("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED")):
    return wait_until(lambda: (e := Execution.get_or_none(Execution.dedup_key == key)) and e.status in statuses and e,
                      timeout=45)


def _steps(execution):
    rows = StepExecution.select().where(StepExecution.execution == execution.id, StepExecution.iteration == 0)
    return {r.step_id: r.status for r in rows}


def test_if_else_takes_one_branch_and_join_any_merges(engine):
    wf = _apply([
        {"id": "c", "type": "condition", "with": {"left": "{{ trigger.n }}", "op": ">", "right": 5},
         "then": ["big"], "else": ["small"]},
        {"id": "big", "type": "transform", "needs": ["c"], "with": {"output": "big"}},
        {"id": "small", "type": "transform", "needs": ["c"], "with": {"output": "small"}},
        {"id": "end", "type": "transform", "needs": ["big", "small"], "join": "any", "with": {"output": "end"}},
    ])
    e = _done(_run(wf, {"n": 2}))
    assert e.status == "SUCCEEDED"
    assert _steps(e) == {"c": "SUCCEEDED", "big": "SKIPPED", "small": "SUCCEEDED", "end": "SUCCEEDED"}


def test_switch_runs_the_matching_case_or_default(engine):
    wf = _apply([
        {"id": "s", "type": "switch", "with": {"value": "{{ trigger.kind }}"},
         "cases": {"a": ["on_a"], "b": ["on_b"]}, "default": ["other"]},
        {"id": "on_a", "type": "transform", "needs": ["s"], "with": {"output": 1}},
        {"id": "on_b", "type": "transform", "needs": ["s"], "with": {"output": 2}},
        {"id": "other", "type": "transform", "needs": ["s"], "with": {"output": 3}},
    ])
    b = _done(_run(wf, {"kind": "b"}, "kb"))
    z = _done(_run(wf, {"kind": "zzz"}, "kz"))
    assert _steps(b) == {"s": "SUCCEEDED", "on_a": "SKIPPED", "on_b": "SUCCEEDED", "other": "SKIPPED"}
    assert _steps(z)["other"] == "SUCCEEDED" and _steps(z)["on_b"] == "SKIPPED"


def test_stop_ends_successfully_and_fail_ends_failed(engine):
    stop = _apply([{"id": "a", "type": "stop"}, {"id": "b", "type": "transform", "with": {"output": 1}}], name="s")
    e = _done(_run(stop))
    assert e.status == "SUCCEEDED" and _steps(e) == {"a": "SUCCEEDED", "b": "SKIPPED"}
    fail = _apply([{"id": "a", "type": "fail", "with": {"message": "no money"}}], name="f")
    f = _done(_run(fail, key="kf"))
    assert f.status == "FAILED" and "no money" in f.error


def test_for_each_fans_out_with_a_cap_and_collects_in_order(engine, url, service):
    wf = _apply([{"id": "each", "type": "http", "for_each": "{{ trigger.items }}", "concurrency": 2,
                  "with": {"method": "POST", "url": url + "/item", "json": {"i": "{{ index }}", "v": "{{ item }}"}}},
                 {"id": "after", "type": "transform", "with": {"output": "{{ steps.each.output }}"}}])
    e = _done(_run(wf, {"items": ["a", "b", "c", "d", "e"]}))
    assert e.status == "SUCCEEDED", e.error
    after = StepExecution.get(StepExecution.execution == e.id, StepExecution.step_id == "after")
    assert [o["json"]["got"]["v"] for o in after.output] == ["a", "b", "c", "d", "e"]
    assert sorted(c["body"]["i"] for c in service.calls) == [0, 1, 2, 3, 4]


def test_wait_is_a_durable_timer(engine):
    wf = _apply([{"id": "w", "type": "wait", "with": {"seconds": 0.3}},
                 {"id": "after", "type": "transform", "with": {"output": 1}}])
    key = _run(wf)
    step = wait_until(lambda: StepExecution.get_or_none(StepExecution.step_id == "w", StepExecution.status == "WAITING"),
                      timeout=45)
    assert step.resume_at is not None and _steps(step.execution) == {"w": "WAITING"}
    wait_until(lambda: timers.tick() >= 0 and _steps(Execution.get(Execution.dedup_key == key)).get("after"),
               timeout=45, interval=0.1)
    assert _done(key).status == "SUCCEEDED"


def test_wait_event_resumes_with_its_data_and_stays_in_its_workspace(engine):
    wf = _apply([{"id": "w", "type": "wait_event", "with": {"key": "order-{{ trigger.id }}"}, "timeout": 60},
                 {"id": "after", "type": "transform", "with": {"output": "{{ steps.w.output.event.paid }}"}}])
    key = _run(wf, {"id": 7})
    wait_until(lambda: StepExecution.get_or_none(StepExecution.step_id == "w", StepExecution.status == "WAITING"))
    other = catalog.ensure_workspace("other")
    assert waits.deliver_event(other.id, "order-7", {"paid": True})[0] == 0
    count, outgoing = waits.deliver_event(wf.workspace_id, "order-7", {"paid": True})
    send_all(outgoing)
    assert count == 1
    e = _done(key)
    assert e.status == "SUCCEEDED" and e.result["after"] is True


def test_event_step_resumes_waiting_steps_once_and_names_a_bad_key(engine):
    waiting = _apply([{"id": "w", "type": "wait_event", "with": {"key": "go-{{ trigger.id }}"}, "timeout": 60},
                      {"id": "after", "type": "transform", "with": {"output": "{{ steps.w.output.event.n }}"}}],
                     name="waiting")
    sender = _apply([{"id": "send", "type": "event", "with": {"key": "go-{{ trigger.id }}",
                                                             "data": {"n": "{{ trigger.n }}"}}}], name="sender")
    broken = _apply([{"id": "send", "type": "event", "with": {"data": {}}}], name="broken")
    waiter = _run(waiting, {"id": 3}, key="wait-3")
    wait_until(lambda: StepExecution.get_or_none(StepExecution.step_id == "w", StepExecution.status == "WAITING"))
    first = _run(sender, {"id": 3, "n": 5}, key="send-1")
    _done(first)  # the second event is sent only after the first was delivered: no race for the waiter
    again = _run(sender, {"id": 3, "n": 6}, key="send-2")
    assert _done(waiter).result["after"] == 5
    outputs = {k: StepExecution.get(StepExecution.execution == _done(k).id).output for k in (first, again)}
    assert sorted(o["resumed"] for o in outputs.values()) == [0, 1]  # the second finds nothing waiting
    bad = _done(_run(broken, {}, key="bad"))
    assert bad.status == "FAILED" and "needs a non-empty 'key'" in bad.error


def test_event_timeout_fails_or_continues(engine):
    fails = _apply([{"id": "w", "type": "wait_event", "with": {"key": "x"}, "timeout": 0.2}], name="t1")
    goes = _apply([{"id": "w", "type": "wait_event", "with": {"key": "y"}, "timeout": 0.2, "on_timeout": "continue"}],
                  name="t2")
    k1, k2 = _run(fails, key="a"), _run(goes, key="b")
    wait_until(lambda: StepExecution.select().where(StepExecution.status == "WAITING").count() == 2)
    wait_until(lambda: timers.tick() >= 0 and Execution.select().where(
        Execution.status.in_(("TIMED_OUT", "FAILED", "SUCCEEDED"))).count() == 2, interval=0.1)
    assert _done(k1).status == "FAILED" and "timed out" in _done(k1).error
    assert _done(k2).status == "SUCCEEDED"


def test_approval_approve_and_reject(engine):
    wf = _apply([{"id": "ok", "type": "approval"}, {"id": "go", "type": "transform", "with": {"output": 1}}])
    a, r = _run(wf, key="a"), _run(wf, key="r")
    wait_until(lambda: StepExecution.select().where(StepExecution.status == "WAITING").count() == 2)
    ea, er = Execution.get(Execution.dedup_key == a), Execution.get(Execution.dedup_key == r)
    send_all(waits.resume_approval(ea.id, "ok", approved=True, by="ada"))
    send_all(waits.resume_approval(er.id, "ok", approved=False, by="bob", comment="too risky"))
    assert _done(a).status == "SUCCEEDED"
    rejected = _done(r)
    assert rejected.status == "FAILED" and "too risky" in rejected.error


def test_sub_workflow_result_flows_to_the_parent(engine):
    _apply([{"id": "double", "type": "transform", "with": {"output": {"v": "{{ trigger.v }}"}}}], name="child")
    parent = _apply([{"id": "sub", "type": "workflow", "with": {"workflow": "child", "input": {"v": "{{ trigger.v }}"}}},
                     {"id": "use", "type": "transform", "with": {"output": "{{ steps.sub.output.result.double.v }}"}}],
                    name="parent")
    e = _done(_run(parent, {"v": 21}))
    assert e.status == "SUCCEEDED" and e.result["use"] == 21
    child = Execution.get(Execution.parent == e.id)
    assert child.status == "SUCCEEDED" and child.parent_step_id == "sub"


def test_transient_errors_retry_with_durable_backoff_then_succeed(engine, url, service):
    service.script = [503, 503]
    wf = _apply([{"id": "h", "type": "http", "retry": {"max": 3, "backoff": 0.05, "jitter": False},
                  "with": {"method": "POST", "url": url + "/flaky", "json": {}}}])
    key = _run(wf)
    wait_until(lambda: timers.tick() >= 0 and (e := Execution.get_or_none(Execution.dedup_key == key))
               and e.status == "SUCCEEDED", timeout=45, interval=0.05)
    step = StepExecution.get(StepExecution.step_id == "h")
    assert step.retry_count == 2 and len(service.calls) == 3


def test_retries_are_bounded(engine, url, service):
    service.script = [503] * 10
    wf = _apply([{"id": "h", "type": "http", "retry": {"max": 1, "backoff": 0.05, "jitter": False},
                  "with": {"method": "POST", "url": url + "/down", "json": {}}}])
    key = _run(wf)
    wait_until(lambda: timers.tick() >= 0 and (e := Execution.get_or_none(Execution.dedup_key == key))
               and e.status == "FAILED", timeout=45, interval=0.05)
    assert "gave up after 1 retries" in Execution.get(Execution.dedup_key == key).error
    assert len(service.calls) == 2


def test_execution_timeout(engine):
    wf = _apply([{"id": "w", "type": "wait", "with": {"seconds": 60}}], timeout=0.2)
    key = _run(wf)
    wait_until(lambda: timers.tick() >= 0 and Execution.get(Execution.dedup_key == key).status == "TIMED_OUT",
               interval=0.1)
    assert _steps(Execution.get(Execution.dedup_key == key)) == {"w": "CANCELLED"}


def test_concurrency_limit_queues_per_key(engine):
    wf = _apply([{"id": "w", "type": "wait_event", "with": {"key": "go-{{ trigger.n }}"}}],
                concurrency={"limit": 1, "key": "{{ trigger.tenant }}"})
    for n, tenant in ((1, "a"), (2, "a"), (3, "b")):
        _run(wf, {"n": n, "tenant": tenant}, key=f"c{n}")
    wait_until(lambda: Execution.select().count() == 3
               and StepExecution.select().where(StepExecution.status == "WAITING").count() == 2)
    status = {e.dedup_key: e.status for e in Execution.select()}
    # Tenant a's two executions share one lane (which starts first is up to the workers).
    assert sorted([status["c1"], status["c2"]]) == ["PENDING", "RUNNING"] and status["c3"] == "RUNNING"
    first, second = ("c1", "c2") if status["c1"] == "RUNNING" else ("c2", "c1")
    send_all(waits.deliver_event(wf.workspace_id, f"go-{first[1]}", {})[1])
    assert _done(first).status == "SUCCEEDED"
    wait_until(lambda: Execution.get(Execution.dedup_key == second).status == "RUNNING")


def test_max_executions_is_respected(engine):
    wf = _apply([{"id": "a", "type": "transform", "with": {"output": 1}}], max_executions=2)
    for n in range(4):
        _run(wf, key=f"m{n}")
    wait_until(lambda: Execution.select().where(Execution.status == "SUCCEEDED").count() == 2)
    engine.join("triggers")
    assert Execution.select().count() == 2
    assert Workflow.get_by_id(wf.id).status == "COMPLETED"


def test_secrets_reach_the_call_but_never_storage_or_logs(engine, url, service):
    # The service echoes the body it received: the secret comes back in the answer.
    wf = _apply([{"id": "h", "type": "http", "with": {"method": "POST", "url": url + "/s",
                  "headers": {"Authorization": "Bearer {{ secrets.crm.token }}"},
                  "json": {"a": 1, "note": "key={{ secrets.crm.token }};"}}}])
    connection_secrets.store_connection(wf.workspace_id, "crm", "crm", {"token": "s3cr3t-value"})
    e = _done(_run(wf))
    assert e.status == "SUCCEEDED", e.error
    assert service.calls[0]["headers"]["Authorization"] == "Bearer s3cr3t-value"
    assert service.calls[0]["body"]["note"] == "key=s3cr3t-value;"
    step = StepExecution.get(StepExecution.step_id == "h")
    assert "s3cr3t" not in json.dumps(step.input) and "***" in json.dumps(step.input)
    # The echoed answer is stored scrubbed, the rest of it intact; so is the execution result.
    assert step.output["json"]["received"] == {"a": 1, "note": "key=***;"}
    assert "s3cr3t" not in json.dumps(Execution.get_by_id(e.id).result)


def test_secrets_echoed_in_an_error_are_scrubbed(engine, url, service):
    service.script = [400]  # a 4xx: the error quotes the answer, which echoes the secret
    wf = _apply([{"id": "h", "type": "http", "with": {"method": "POST", "url": url + "/s",
                  "json": {"token": "{{ secrets.crm.token }}"}}}])
    connection_secrets.store_connection(wf.workspace_id, "crm", "crm", {"token": "s3cr3t-value"})
    e = _done(_run(wf))
    assert e.status == "FAILED" and "answered 400" in e.error
    assert "s3cr3t" not in e.error and "***" in e.error
    step = StepExecution.get(StepExecution.step_id == "h")
    assert "s3cr3t" not in (step.error or "")


def test_effect_once_never_repeats_an_unknown_outcome(engine, url, service):
    wf = _apply([{"id": "pay", "type": "http", "effect": "once",
                  "with": {"method": "POST", "url": url + "/pay", "json": {"amount": 5}}}])
    e = _done(_run(wf))
    assert e.status == "SUCCEEDED"
    effect = SideEffect.get(SideEffect.step_id == "pay")
    assert effect.state == "DONE" and len(service.calls) == 1
    # Simulate a crash after sending: the effect is SENDING and the step runs again.
    wf2 = _apply([{"id": "pay", "type": "http", "effect": "once",
                   "with": {"method": "POST", "url": url + "/pay", "json": {"amount": 6}}}], name="w2")
    started = __import__("shiftflow.models.engine.start", fromlist=["x"]).start_execution(
        TriggerPayload(str(wf2.id), "crash", "test", {}))
    SideEffect.create(workspace=wf2.workspace_id, execution=started.execution.id, step_id="pay", iteration=0,
                      kind="http", state="SENDING", request_hash=__import__(
                          "shiftflow.models.engine.call_once", fromlist=["x"]).request_hash(
                          {"method": "POST", "url": url + "/pay", "json": {"amount": 6}}),
                      sent_at=dt.datetime.now())
    send_all(started.outgoing)
    # Never called again: the step waits for an operator to settle the outcome.
    wait_until(lambda: StepExecution.get(StepExecution.execution == started.execution.id).status == "WAITING")
    crashed = Execution.get(Execution.dedup_key == "crash")
    assert crashed.status == "RUNNING" and "outcome unknown" in crashed.error
    assert "shiftflow effects settle" in crashed.error
    assert len(service.calls) == 1
    assert SideEffect.get(SideEffect.execution == started.execution.id).state == "UNKNOWN"


def test_a_manual_trigger_records_who_started_it(engine):
    from shiftflow.models.tables.tenancy import User

    user = User.create(email="ada@example.com", name="Ada")
    wf = _apply([{"id": "a", "type": "transform", "with": {"output": 1}}])
    send("triggers.start", TriggerPayload(str(wf.id), "by-ada", "manual", {}, triggered_by=str(user.id)))
    assert _done("by-ada").triggered_by_id == user.id
