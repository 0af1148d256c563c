"""Where a connection secret may go (issue 11, finding 5).

A ``{{ secrets.<connection>.<field> }}`` reference is decrypted for the one call that
sends it. Only an ``http`` step sends its inputs somewhere without storing them; every
other step stores what it renders (a wait step's inputs, an event's data delivered as a
waiting step's output, a sub-workflow's trigger data and result, a transform's output),
so a secret there was stored in clear and shown to any viewer by ``GET /executions/{id}``.
Such a reference is refused when the definition is applied, naming the step and field,
and a stored definition that has one fails its step without decrypting anything.

Also: an outside service's 4xx answer that echoes a secret is masked before it is cut to
an excerpt (a secret split by the cut escaped the mask), and httpx's own INFO line, which
holds the full URL, never reaches a log.
"""

from __future__ import annotations

import json
import logging

import dramatiq
import pytest

from shiftflow import actors
from shiftflow.consumers.dead_letters import DeadLetters
from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.db import bind_database, database
from shiftflow.kernel.definition import validate
from shiftflow.kernel.enqueue import send
from shiftflow.kernel.errors import DefinitionError
from shiftflow.kernel.runnable import check_runnable
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine import connection_secrets
from shiftflow.models.manage import catalog
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.registry import ALL_MODELS, create_all
from shiftflow.models.tables.workflows import Workflow, WorkflowVersion
from tests.support.waiting import wait_until

CANARY = "cAnArY-5f0c2e9b71d4a8"
REF = "{{ secrets.crm.token }}"


@pytest.fixture
def store(tmp_path):
    """The database proxy on a fresh SQLite file with every table (dev mode's store)."""
    saved = database.obj
    db = bind_database(f"sqlite:///{tmp_path}/store.db")
    create_all(db)
    try:
        yield db
    finally:
        db.close()
        database.initialize(saved)


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


#: One definition per place a secret would become stored data: (step, the field named).
MISPLACED = {
    "condition": ({"type": "condition", "with": {"left": REF, "op": "==", "right": "x"}}, "with.left"),
    "switch": ({"type": "switch", "with": {"value": REF}, "cases": {}}, "with.value"),
    "transform": ({"type": "transform", "with": {"output": {"key": REF}}}, "with.output.key"),
    "wait": ({"type": "wait", "with": {"seconds": 1, "note": REF}}, "with.note"),
    "wait_event": ({"type": "wait_event", "with": {"key": f"k-{REF}"}}, "with.key"),
    "approval": ({"type": "approval", "with": {"message": REF}}, "with.message"),
    "event": ({"type": "event", "with": {"key": "k", "data": {"token": REF}}}, "with.data.token"),
    "workflow": ({"type": "workflow", "with": {"workflow": "child", "input": {"token": REF}}}, "with.input.token"),
    "stop": ({"type": "stop", "with": {"why": REF}}, "with.why"),
    "fail": ({"type": "fail", "with": {"message": REF}}, "with.message"),
    "price": ({"type": "price", "with": {"coin": REF, "vs_currency": "usd"}}, "with.coin"),
    "sideshift_swap": ({"type": "sideshift_swap", "with": {"settle_address": REF}}, "with.settle_address"),
    "tool": ({"type": "tool", "tool": "notify.chat", "with": {"text": REF}}, "with.text"),
    "deploy": ({"type": "deploy", "with": {"project": "p", "ref": REF}}, "with.ref"),
    "task": ({"type": "task", "with": {"task": "agent.phased", "feedback": REF}}, "with.feedback"),
    "agent_plan": ({"type": "agent_plan", "with": {"note": REF}}, "with.note"),
    # A model call's messages and variables are stored (the llm_call row, the prompt run).
    "llm": ({"type": "llm", "connection": "openai-main", "model": "gpt-4o-mini",
             "messages": [{"role": "user", "content": REF}]}, "messages[0].content"),
    "for_each": ({"type": "http", "for_each": "{{ secrets.crm.list }}", "with": {"url": "http://x"}}, "for_each"),
}


def test_every_step_type_is_covered():
    from shiftflow.kernel.definition import STEP_ACTORS

    assert set(STEP_ACTORS) - {"http"} <= set(MISPLACED)


@pytest.mark.parametrize("name", sorted(MISPLACED))
def test_a_secret_where_it_would_be_stored_is_refused_at_apply(name, sqlite_models):
    step, field = MISPLACED[name]
    definition = {"name": "w", "steps": [{"id": "first", "type": "transform", "with": {"output": 1}},
                                         {"id": "leaky", **step}]}
    with pytest.raises(DefinitionError) as caught:
        catalog.apply_definition(catalog.ensure_workspace("t"), definition)
    message = str(caught.value)
    assert message.startswith(f"steps[1].{field}: "), message
    assert "'leaky'" in message and step["type"] in message and "secrets.crm" in message
    assert Workflow.select().count() == 0


def test_secrets_in_a_concurrency_key_are_refused():
    definition = validate({"name": "w", "concurrency": {"limit": 1, "key": REF},
                           "steps": [{"id": "a", "type": "transform", "with": {"output": 1}}]})
    with pytest.raises(DefinitionError, match=r"^concurrency\.key: .*secrets"):
        check_runnable(definition)


def test_secrets_in_what_an_http_step_sends_are_accepted(store):
    sent = {"url": "https://api.example/x?key=" + REF, "headers": {"Authorization": "Bearer " + REF},
            "params": {"k": REF}, "json": {"k": REF}}
    definition = {"name": "w", "steps": [{"id": "h", "type": "http", "with": sent}]}
    check_runnable(validate(definition))
    applied = catalog.apply_definition(catalog.ensure_workspace("t"), definition)
    stored = WorkflowVersion.get(WorkflowVersion.workflow == applied.workflow.id).definition
    assert stored["steps"][0]["with"] == sent  # stored as references, resolved only when sent


def _stored_everywhere() -> str:
    """Every row of every table, as one text (the SQLite store of dev mode)."""
    return json.dumps([[m.__name__, list(m.select().dicts())] for m in ALL_MODELS], default=str)


def _apply_stored(workspace, definition):
    """Store a definition as an older version would have been stored: without the check."""
    workflow = Workflow.create(workspace=workspace.id, name=definition["name"], trigger_type="MANUAL",
                               current_version=1, status="ACTIVE")
    WorkflowVersion.create(workflow=workflow.id, version=1, definition=definition)
    return workflow


def _finish(workflow, key, *, or_waiting=False):
    """Run ``workflow`` once; return its execution when final (or, with ``or_waiting``, as
    soon as one of its steps waits)."""
    send("triggers.start", TriggerPayload(str(workflow.id), key, "test", {}))

    def settled():
        execution = Execution.get_or_none(Execution.dedup_key == key)
        if execution is None:
            return None
        if execution.status in ("SUCCEEDED", "FAILED"):
            return execution
        waiting = StepExecution.get_or_none((StepExecution.execution == execution.id)
                                            & (StepExecution.status == "WAITING"))
        return execution if or_waiting and waiting is not None else None

    return wait_until(settled, timeout=45)


@pytest.mark.parametrize("name", ["wait", "wait_event", "event", "workflow", "approval"])
def test_a_stored_definition_with_a_misplaced_secret_stores_nothing_of_it(name, engine):
    workspace = catalog.ensure_workspace("t")
    connection_secrets.store_connection(workspace.id, "crm", "crm", {"token": CANARY})
    catalog.apply_definition(workspace, {"name": "child", "steps": [
        {"id": "c", "type": "transform", "with": {"output": "{{ trigger }}"}}]})
    waiting = catalog.apply_definition(workspace, {"name": "waiting", "steps": [
        {"id": "w", "type": "wait_event", "with": {"key": "k"}, "timeout": 30}]}).workflow
    if name == "event":
        _finish(waiting, "waiting", or_waiting=True)  # something for the event to resume
    step, _field = MISPLACED[name]
    leaky = _apply_stored(workspace, {"name": f"leaky-{name}", "steps": [{"id": "leaky", **step, "timeout": 30}]})
    execution = _finish(leaky, f"run-{name}", or_waiting=True)
    assert CANARY not in _stored_everywhere()
    assert execution.status == "FAILED"
    assert "secrets" in execution.error and "http" in execution.error, execution.error
    assert CANARY not in _stored_everywhere()


def test_a_4xx_echo_cut_inside_a_secret_is_masked_before_the_cut(engine, json_service):
    # The service answers 400 with '{"received": {"p": "<pad><secret>"}...': the pad puts
    # the secret across the 200th character, where the error's excerpt is cut.
    workspace = catalog.ensure_workspace("t")
    connection_secrets.store_connection(workspace.id, "crm", "crm", {"token": CANARY})
    json_service.script = [400]
    pad = "p" * (200 - len('{"received": {"p": "') - 8)
    workflow = catalog.apply_definition(workspace, {"name": "h", "steps": [{"id": "h", "type": "http", "with": {
        "method": "POST", "url": json_service.url, "json": {"p": pad + REF}}}]}).workflow
    execution = _finish(workflow, "cut")
    assert execution.status == "FAILED" and "answered 400" in execution.error
    stored = _stored_everywhere()
    for cut in range(6, len(CANARY) + 1):
        assert CANARY[:cut] not in stored, f"the first {cut} characters of the secret are stored"


def test_a_secret_in_a_query_string_reaches_no_log(engine, json_service, caplog):
    workspace = catalog.ensure_workspace("t")
    connection_secrets.store_connection(workspace.id, "crm", "crm", {"token": CANARY})
    workflow = catalog.apply_definition(workspace, {"name": "q", "steps": [{"id": "h", "type": "http", "with": {
        "url": json_service.url + "/q?key=" + REF}}]}).workflow
    with caplog.at_level(logging.DEBUG):
        execution = _finish(workflow, "query")
    assert execution.status == "SUCCEEDED", execution.error
    assert json_service.calls[0]["path"] == "/q?key=" + CANARY  # the call had it
    assert caplog.records, "nothing was logged at all: the capture is not working"
    assert CANARY not in caplog.text
    assert CANARY not in _stored_everywhere()
