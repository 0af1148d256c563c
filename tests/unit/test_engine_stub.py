"""The engine on the in-process broker and SQLite: trigger → steps → done, once per key."""

from __future__ import annotations

import dramatiq
import pytest
from dramatiq.brokers.stub import StubBroker

from shiftflow import actors
from shiftflow.consumers.dead_letters import DeadLetters
from shiftflow.kernel import holders
from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.contracts import StepPayload, TriggerPayload
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.enqueue import send
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine.runs import claim_step
from shiftflow.models.engine.start import start_execution
from shiftflow.models.manage import catalog
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.registry import create_all


@pytest.fixture
def service(json_service):
    return json_service


@pytest.fixture
def engine(tmp_path):
    settings = configure(Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_DATA_DIR": str(tmp_path),
                                            "SHIFTFLOW_DELIVERY_LIMIT": "2"}))
    db = bind_database(settings.database_url)
    create_all(db)
    broker = install(build_broker(settings, extra=[DeadLetters()]))
    assert isinstance(broker, StubBroker)
    actors.declare(broker)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    yield broker
    worker.stop()
    broker.close()
    db.close()


def _workflow(url, threshold=10):
    workspace = catalog.ensure_workspace("t")
    return catalog.apply_definition(workspace, {
        "name": "orders",
        "vars": {"url": url},
        "steps": [
            {"id": "check", "type": "condition", "with": {"left": "{{ trigger.amount }}", "op": ">=",
                                                         "right": threshold}},
            {"id": "post", "type": "http", "with": {"method": "POST", "url": "{{ vars.url }}",
                                                    "json": {"amount": "{{ trigger.amount }}"}}},
            {"id": "shape", "type": "transform", "with": {"output": {"echo": "{{ steps.post.output.json.got }}"}}},
        ],
    }).workflow


def _trigger(workflow, key, amount):
    send("triggers.start", TriggerPayload(str(workflow.id), key, "test", {"amount": amount}))


def test_trigger_runs_every_step_once(engine, service):
    workflow = _workflow(service.url + "/echo")
    _trigger(workflow, "d-1", 42)
    engine.join("triggers")
    engine.join("steps")
    engine.join("tools")
    engine.join("steps")
    execution = Execution.get(Execution.dedup_key == "d-1")
    assert execution.status == "SUCCEEDED", execution.error
    steps = {s.step_id: s for s in StepExecution.select().where(StepExecution.execution == execution.id)}
    assert {k: s.status for k, s in steps.items()} == {"check": "SUCCEEDED", "post": "SUCCEEDED",
                                                       "shape": "SUCCEEDED"}
    assert steps["shape"].output == {"echo": {"amount": 42}}
    assert service.bodies == [{"amount": 42}]
    assert execution.result["shape"] == {"echo": {"amount": 42}}


def test_same_delivery_twice_makes_one_execution(engine, service):
    workflow = _workflow(service.url + "/echo")
    _trigger(workflow, "d-2", 42)
    _trigger(workflow, "d-2", 42)
    for queue in ("triggers", "steps", "tools", "steps"):
        engine.join(queue)
    assert Execution.select().where(Execution.dedup_key == "d-2").count() == 1
    assert len(service.calls) == 1


def test_false_condition_skips_the_call(engine, service):
    workflow = _workflow(service.url + "/echo")
    _trigger(workflow, "d-3", 1)
    engine.join("triggers")
    engine.join("steps")
    execution = Execution.get(Execution.dedup_key == "d-3")
    assert execution.status == "SUCCEEDED"
    statuses = {s.step_id: s.status for s in StepExecution.select().where(StepExecution.execution == execution.id)}
    assert statuses == {"check": "SUCCEEDED", "post": "SKIPPED", "shape": "SKIPPED"}
    assert service.calls == []


def test_permanent_tool_error_fails_the_execution(engine, service):
    service.script = [400]
    workflow = _workflow(service.url + "/echo")
    _trigger(workflow, "d-4", 50)
    for queue in ("triggers", "steps", "tools"):
        engine.join(queue)
    execution = Execution.get(Execution.dedup_key == "d-4")
    assert execution.status == "FAILED"
    assert "answered 400" in execution.error
    assert not StepExecution.select().where(StepExecution.step_id == "shape").exists()


def test_redelivery_of_a_crashed_step_is_quarantined(engine, service):
    """A message that kills its process never records an outcome: the delivery count in
    the database stops the loop (SHIFTFLOW_DELIVERY_LIMIT=2 here)."""
    workflow = _workflow(service.url + "/echo")
    started = start_execution(TriggerPayload(str(workflow.id), "d-5", "test", {"amount": 50}))
    payload = StepPayload(str(started.execution.id), "post")  # "check" ran inline at the trigger
    for _ in range(2):  # two deliveries that "crashed" after claiming
        assert claim_step(payload, delivery_limit=2).step is not None
    third = claim_step(payload, delivery_limit=2)
    assert third.step is None and "quarantined" in third.reason
    execution = Execution.get_by_id(started.execution.id)
    assert execution.status == "FAILED" and "quarantined" in execution.error


def test_start_twice_republishes_pending_first_steps(engine, service):
    """A crash after the execution committed but before its first steps were published:
    the redelivered trigger creates nothing new and re-publishes the pending steps."""
    workflow = _workflow(service.url + "/echo")
    first = start_execution(TriggerPayload(str(workflow.id), "d-6", "test", {"amount": 50}))
    again = start_execution(TriggerPayload(str(workflow.id), "d-6", "test", {"amount": 50}))
    assert first.created and not again.created
    assert [o.payload.step_id for o in again.outgoing] == ["post"]
    # The cheap condition ran inline, in the trigger's transaction: a row, no message.
    check = StepExecution.get(StepExecution.execution == first.execution.id, StepExecution.step_id == "check")
    assert check.status == "SUCCEEDED" and check.output == {"passed": True}


def test_a_copy_is_dropped_while_its_holder_lives_and_takes_over_once_it_is_gone(engine, service):
    """Whatever its message id, a copy of a RUNNING step's message is dropped while the
    thread holding the step lives; once that thread let go without recording (it died,
    or gave up on an error), the next copy takes the step over."""
    workflow = _workflow(service.url + "/echo")
    started = start_execution(TriggerPayload(str(workflow.id), "d-7", "test", {"amount": 50}))
    payload = StepPayload(str(started.execution.id), "post")
    token = holders.new_token()
    holders.hold(token)
    assert claim_step(payload, delivery_limit=5, token=token).step is not None
    copy = claim_step(payload, delivery_limit=5)
    assert copy.step is None and copy.reason == "held by a live holder"
    holders.let_go(token)
    redelivered = claim_step(payload, delivery_limit=5)
    assert redelivered.step is not None and redelivered.step.attempts == 2


def test_mongo_sink_runs_one_writer_thread(tmp_path):
    """Regression: every write before the first send used to start another writer thread."""
    import threading as _threading

    from shiftflow.kernel.mongo import MongoSink

    def writers_now():
        return {t for t in _threading.enumerate() if t.name == "shiftflow-mongo-writer" and t.is_alive()}

    before = writers_now()  # other tests' sinks may still run theirs
    sink = MongoSink("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=50", "x", flush_ms=10_000)
    for n in range(20):
        sink.write("execution_logs", {"n": n})
    writers = list(writers_now() - before)
    assert len(writers) == 1
    sink._stopping = True
    with sink._cond:
        sink._buffer.clear()
        sink._cond.notify_all()
    writers[0].join(5)


def _chain(url, steps=3, **extra):
    workspace = catalog.ensure_workspace("t")
    return catalog.apply_definition(workspace, {
        "name": "chain",
        "vars": {"url": url},
        "steps": [{"id": f"call{n}", "type": "http", **extra,
                   "with": {"method": "POST", "url": "{{ vars.url }}", "json": {"n": n}}} for n in range(steps)],
    }).workflow


def _count_published(broker, monkeypatch):
    published: list[str] = []
    enqueue = broker.enqueue

    def counting(message, *, delay=None):
        published.append(message.actor_name)
        return enqueue(message, delay=delay)

    monkeypatch.setattr(broker, "enqueue", counting)
    return published


def test_a_same_queue_chain_runs_on_one_step_message(engine, service, monkeypatch):
    """Three outside calls in a row on ``tools.call``: the first step's message runs all three."""
    published = _count_published(engine, monkeypatch)
    workflow = _chain(service.url + "/echo")
    _trigger(workflow, "c-1", 1)
    engine.join("triggers")
    engine.join("tools")
    execution = Execution.get(Execution.dedup_key == "c-1")
    assert execution.status == "SUCCEEDED", execution.error
    assert published == ["triggers.start", "tools.call"]
    assert service.bodies == [{"n": 0}, {"n": 1}, {"n": 2}]
    steps = StepExecution.select().where(StepExecution.execution == execution.id)
    assert sorted((s.step_id, s.status, s.attempts) for s in steps) == [
        ("call0", "SUCCEEDED", 1), ("call1", "SUCCEEDED", 1), ("call2", "SUCCEEDED", 1)]


def test_a_chain_is_bounded_per_message(tmp_path, engine, service, monkeypatch):
    """Past SHIFTFLOW_CHAIN_MAX_STEPS the next step goes back through the broker."""
    configure(Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_DATA_DIR": str(tmp_path),
                                 "SHIFTFLOW_DELIVERY_LIMIT": "2", "SHIFTFLOW_CHAIN_MAX_STEPS": "2"}))
    published = _count_published(engine, monkeypatch)
    workflow = _chain(service.url + "/echo", steps=5)
    _trigger(workflow, "c-2", 1)
    engine.join("triggers")
    engine.join("tools")
    execution = Execution.get(Execution.dedup_key == "c-2")
    assert execution.status == "SUCCEEDED", execution.error
    assert published == ["triggers.start", "tools.call", "tools.call", "tools.call"]


def test_a_chain_stops_at_a_cancelled_execution(engine, service, monkeypatch):
    """The continued step is claimed like any other: a cancelled execution runs no more calls."""
    from shiftflow.models.engine import run_step as run_step_module
    from shiftflow.models.engine import runs

    workflow = _chain(service.url + "/echo")
    real = run_step_module.run_step

    def cancel_after_first(payload, *, continued=False):
        if continued:  # cancelled between the first step's commit and the next claim
            with runs.transaction():
                locked = runs.lock_execution(payload.execution_id)
                definition = runs.load_definition(locked.workflow_id, locked.workflow_version)
                runs.finish_execution(locked, definition, "CANCELLED", error="cancelled by the test")
        return real(payload, continued=continued)

    monkeypatch.setattr(run_step_module, "run_step", cancel_after_first)
    _trigger(workflow, "c-3", 1)
    engine.join("triggers")
    engine.join("tools")
    execution = Execution.get(Execution.dedup_key == "c-3")
    assert execution.status == "CANCELLED"
    assert service.bodies == [{"n": 0}]
    steps = {s.step_id: s.status for s in StepExecution.select().where(StepExecution.execution == execution.id)}
    assert steps == {"call0": "SUCCEEDED", "call1": "CANCELLED"}


def test_progress_of_a_running_execution_is_derived_from_its_steps(engine, service):
    """No execution-row update per step: the API's progress comes from the step rows."""
    from shiftflow.models.manage.queries import execution_dict

    workflow = _chain(service.url + "/echo")
    _trigger(workflow, "p-1", 1)
    engine.join("triggers")
    engine.join("tools")
    execution = Execution.get(Execution.dedup_key == "p-1")
    assert execution.status == "SUCCEEDED" and execution_dict(execution)["progress"] == 100
    # Back to the moment after the second step: two of three steps final, the row untouched.
    StepExecution.delete().where((StepExecution.execution == execution.id)
                                 & (StepExecution.step_id == "call2")).execute()
    Execution.update(status="RUNNING", progress=0, completed_at=None, result=None, duration_ms=None).where(
        Execution.id == execution.id).execute()
    assert execution_dict(Execution.get_by_id(execution.id))["progress"] == 66


def test_a_continued_step_that_raises_is_published_as_its_own_message(engine, service, monkeypatch):
    """The step before it stays done; the failing step gets its own message, which runs it."""
    from shiftflow.models.engine import run_step as run_step_module

    published = _count_published(engine, monkeypatch)
    real, raised = run_step_module.run_step, []

    def fail_once_when_continued(payload, *, continued=False):
        if continued and not raised:
            raised.append(payload.step_id)
            raise RuntimeError("boom in a chain")
        return real(payload, continued=continued)

    monkeypatch.setattr(run_step_module, "run_step", fail_once_when_continued)
    workflow = _chain(service.url + "/echo")
    _trigger(workflow, "r-1", 1)
    engine.join("triggers")
    engine.join("tools")
    execution = Execution.get(Execution.dedup_key == "r-1")
    assert execution.status == "SUCCEEDED", execution.error
    assert raised == ["call1"]
    assert published == ["triggers.start", "tools.call", "tools.call"]
    assert service.bodies == [{"n": 0}, {"n": 1}, {"n": 2}]
