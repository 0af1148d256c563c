"""Cancel, re-run and dead-letter replay on real services, with a worker on real RabbitMQ.

The commands are the model functions the API and the CLI share (``models.manage.control``,
``models.manage.replay``); the worker runs the real actors, so a cancelled step really is
running when it is cancelled and a replayed dead letter really was nacked by Dramatiq.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shiftflow.consumers import timers
from shiftflow.kernel.contracts import StepPayload, TriggerPayload
from shiftflow.kernel.enqueue import send, send_all
from shiftflow.models.manage import catalog, control, replay
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.problems import Conflict
from shiftflow.models.tables.audit_log import AuditLog
from shiftflow.models.tables.base import utcnow
from shiftflow.models.tables.dead_letters import DeadLetter
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.workflows import Workflow, WorkflowVersion
from tests.integration.api_support import SIMPLE, worker
from tests.support.message_tally import MessageTally
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

OPERATOR = Principal.operator()


class _Service(BaseHTTPRequestHandler):
    """Answers POSTs: ``fail_first`` requests with 400, later ones 200; each after ``delay`` s."""

    calls: list[dict] = []
    fail_first = 0
    delay = 0.0

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        cls.calls.append(body)
        time.sleep(cls.delay)
        status = 400 if len(cls.calls) <= cls.fail_first else 200
        out = json.dumps({"echo": body, "call": len(cls.calls)}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def service():
    _Service.calls, _Service.fail_first, _Service.delay = [], 0, 0.0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/svc"
    server.shutdown()
    server.server_close()


@pytest.fixture
def tally():
    """Counts the worker's messages: the barrier before asserting that something did not happen."""
    return MessageTally()


@pytest.fixture
def engine(real_env, tally):
    with worker(real_env, threads=4, tally=tally):
        yield catalog.ensure_workspace("ops")


def _calling(url: str, name: str = "calling", **extra) -> dict:
    return {
        "name": name,
        "trigger": {"type": "manual"},
        "steps": [
            {"id": "prep", "type": "transform", "with": {"output": {"n": "{{ trigger.n }}"}}},
            {
                "id": "call",
                "type": "http",
                "timeout": 10,
                "with": {"method": "POST", "url": url, "json": {"n": "{{ steps.prep.output.n }}"}},
            },
            {
                "id": "done",
                "type": "transform",
                "with": {"output": {"answer": "{{ steps.call.output.json.call }}"}},
            },
        ],
        **extra,
    }


def _trigger(workflow, key: str, data: dict | None = None) -> None:
    send(
        "triggers.start",
        TriggerPayload(workflow_id=str(workflow.id), dedup_key=key, source="manual", data=data or {"n": 1}),
    )


def _execution(workflow, key: str, *statuses: str):
    def found():
        row = Execution.get_or_none((Execution.workflow == workflow.id) & (Execution.dedup_key == key))
        return row if row is not None and (not statuses or row.status in statuses) else None

    return wait_until(found, timeout=30, message=f"execution {key} in {statuses}")


def _steps(execution) -> dict[str, StepExecution]:
    return {s.step_id: s for s in StepExecution.select().where(StepExecution.execution == execution.id)}


# --------------------------------------------------------------------------- cancel


def test_cancel_refuses_the_result_of_a_running_step_and_plans_nothing_after(engine, service, tally):
    _Service.delay = 1.5
    workflow = catalog.apply_definition(engine, _calling(service)).workflow
    _trigger(workflow, "slow")
    execution = _execution(workflow, "slow")
    wait_until(
        lambda: _steps(execution).get("call") and _steps(execution)["call"].status == "RUNNING", timeout=30
    )

    cancelled, outgoing = control.cancel(OPERATOR, execution.id)
    assert cancelled.status == "CANCELLED" and outgoing == []
    wait_until(lambda: len(_Service.calls) == 1, timeout=10)
    # The barrier: the running step's message was handled (the call answered after 1.5 s and
    # its result was refused) and nothing it could have sent is in flight.
    wait_until(tally.settled, timeout=30, message="the cancelled step's message handled")
    steps = _steps(execution)
    assert steps["prep"].status == "SUCCEEDED" and steps["call"].status == "CANCELLED"
    assert "done" not in steps  # nothing was planned after the cancel
    assert Execution.get_by_id(execution.id).status == "CANCELLED"
    with pytest.raises(Conflict, match="CANCELLED already"):
        control.cancel(OPERATOR, execution.id)
    entry = AuditLog.get(AuditLog.action == "execution.cancelled", AuditLog.entity_id == str(execution.id))
    assert entry.changes["before"]["status"] == "RUNNING" and entry.metadata["via"] == "cli"


def test_cancel_stops_a_durable_wait_and_frees_the_concurrency_lane(engine, tally):
    waiting = {
        "name": "lane",
        "trigger": {"type": "manual"},
        "concurrency": {"limit": 1},
        "steps": [
            {"id": "nap", "type": "wait", "with": {"seconds": 0.5}},
            {"id": "after", "type": "transform", "with": {"output": {"ok": True}}},
        ],
    }
    workflow = catalog.apply_definition(engine, waiting).workflow
    _trigger(workflow, "first")
    first = _execution(workflow, "first", "RUNNING")
    wait_until(lambda: _steps(first).get("nap") and _steps(first)["nap"].status == "WAITING", timeout=30)
    _trigger(workflow, "second")
    second = _execution(workflow, "second")
    wait_until(tally.settled, timeout=30, message="the second trigger handled")  # its lane decided
    assert Execution.get_by_id(second.id).status == "PENDING"  # queued behind the first in its lane
    due = _steps(first)["nap"].resume_at

    _, outgoing = control.cancel(OPERATOR, first.id)
    assert Execution.get_by_id(second.id).status == "RUNNING"  # the lane freed up in the same transaction
    send_all(outgoing)
    assert _steps(first)["nap"].status == "CANCELLED"
    wait_until(lambda: utcnow() >= due, timeout=10, message="the nap's timer due")
    timers.tick()  # the timer is due: it must not wake the cancelled execution's step
    wait_until(tally.settled, timeout=30, message="what the tick published handled")
    assert set(_steps(first)) == {"nap"} and Execution.get_by_id(first.id).status == "CANCELLED"

    def second_done():
        timers.tick()  # no timer loop in this process: wake the second execution's wait by hand
        return Execution.get_by_id(second.id).status == "SUCCEEDED"

    wait_until(second_done, timeout=30, interval=0.2)


# --------------------------------------------------------------------------- rerun


def test_rerun_starts_a_linked_execution_from_the_failed_step(engine, service):
    _Service.fail_first = 1  # the first call is refused with 400 (permanent), later calls succeed
    workflow = catalog.apply_definition(engine, _calling(service)).workflow
    _trigger(workflow, "order-1", {"n": 7})
    old = _execution(workflow, "order-1", "FAILED")
    old_steps = _steps(old)
    assert old_steps["prep"].status == "SUCCEEDED" and old_steps["call"].status == "FAILED"
    assert "done" not in old_steps

    new, outgoing = control.rerun(OPERATOR, old.id)
    send_all(outgoing)
    assert new.parent_id == old.id and new.dedup_key == f"rerun:{old.id}:1" and new.source == "rerun"
    assert new.workflow_version == old.workflow_version and new.trigger_data == {"n": 7}
    finished = wait_until(
        lambda: Execution.get_by_id(new.id).status in ("SUCCEEDED", "FAILED") and Execution.get_by_id(new.id),
        timeout=30,
    )
    assert finished.status == "SUCCEEDED", finished.error
    steps = _steps(finished)
    # prep was copied, not run again: same output, same timestamps as in the failed execution.
    assert steps["prep"].output == old_steps["prep"].output == {"n": 7}
    assert steps["prep"].created_at == old_steps["prep"].created_at
    assert steps["done"].output == {"answer": 2}
    assert [c["n"] for c in _Service.calls] == [7, 7]  # one refused call, one re-run call, nothing else
    assert Execution.get_by_id(old.id).status == "FAILED"  # the old one is history

    again, outgoing = control.rerun(OPERATOR, old.id)
    send_all(outgoing)
    assert again.dedup_key == f"rerun:{old.id}:2"
    with pytest.raises(Conflict, match="SUCCEEDED"):
        control.rerun(OPERATOR, finished.id)
    entry = AuditLog.get(AuditLog.action == "execution.rerun", AuditLog.entity_id == str(old.id))
    assert entry.changes["after"]["parent_id"] == str(old.id)


def test_rerun_defers_to_the_timer_loop_when_publishing_fails(engine, service):
    _Service.fail_first = 1
    workflow = catalog.apply_definition(engine, _calling(service, name="deferred")).workflow
    _trigger(workflow, "d-1")
    old = _execution(workflow, "d-1", "FAILED")
    new, outgoing = control.rerun(OPERATOR, old.id)
    assert [o.payload for o in outgoing] == [StepPayload(execution_id=str(new.id), step_id="call")]
    assert control.defer_to_timers(outgoing) == 1  # as if the broker had refused the publish
    assert timers.tick() == 1  # the timer loop publishes it
    assert wait_until(lambda: Execution.get_by_id(new.id).status == "SUCCEEDED", timeout=30)


# --------------------------------------------------------------------------- dead letters


def test_dead_letters_replay_by_filter_once_unless_forced(engine, tally):
    started = utcnow() - dt.timedelta(seconds=1)
    ids = [uuid.uuid4() for _ in range(3)]
    for n, wid in enumerate(ids):  # triggers for workflows that do not exist (yet): dead letters
        send(
            "triggers.start",
            TriggerPayload(workflow_id=str(wid), dedup_key=f"dl-{n}", source="manual", data={"n": n}),
        )
    send("steps.run", StepPayload(execution_id=str(uuid.uuid4()), step_id="nope"))
    wait_until(lambda: DeadLetter.select().count() == 4, timeout=30, message="four dead letters")
    letters = list(DeadLetter.select())
    assert {d.queue for d in letters} == {"triggers", "steps"} and all(d.replayed_at is None for d in letters)

    for wid in ids:  # the cause is fixed: the workflows exist now
        Workflow.create(
            id=wid, workspace=engine.id, name=f"late-{wid}", status="ACTIVE", trigger_type="MANUAL"
        )
        WorkflowVersion.create(workflow=wid, version=1, definition=dict(SIMPLE, name=f"late-{wid}"))

    dry = replay.replay_dead_letters(OPERATOR, send, queue="triggers", dry_run=True)
    assert dry.matched == 3 and {o["outcome"] for o in dry.replayed} == {"would_replay"}
    assert DeadLetter.select().where(DeadLetter.replayed_at.is_null(False)).count() == 0
    assert (
        replay.replay_dead_letters(OPERATOR, send, queue="triggers", until=started.isoformat()).matched == 0
    )

    progress: list[tuple[int, int, str]] = []
    done = replay.replay_dead_letters(
        OPERATOR,
        send,
        queue="triggers",
        actor_name="triggers.start",
        since=started.isoformat(),
        limit=10,
        progress=lambda i, n, o: progress.append((i, n, o["outcome"])),
    )
    assert (
        done.matched == 3
        and len(done.replayed) == 3
        and progress == [(1, 3, "replayed"), (2, 3, "replayed"), (3, 3, "replayed")]
    )
    for n, wid in enumerate(ids):
        assert _execution(Workflow.get_by_id(wid), f"dl-{n}", "SUCCEEDED")
    step_letter = DeadLetter.get(DeadLetter.queue == "steps")
    assert step_letter.replayed_at is None  # not matched by the filter

    assert replay.replay_dead_letters(OPERATOR, send, queue="triggers").matched == 0  # once
    handled = tally.finished("triggers.start")
    forced = replay.replay_dead_letters(OPERATOR, send, queue="triggers", force=True)
    assert len(forced.replayed) == 3
    wait_until(lambda: tally.finished("triggers.start") >= handled + 3 and tally.settled(), timeout=30,
               message="the three forced replays handled")
    assert Execution.select().where(Execution.dedup_key.startswith("dl-")).count() == 3  # dedup held
    assert AuditLog.select().where(AuditLog.action == "dead_letter.replayed").count() == 6

    # A workspace sees only the dead letters of its own workflows and executions.
    other = catalog.ensure_workspace("other")
    assert replay.list_dead_letters(Principal(other.id, "OWNER")).items == []
    mine = replay.list_dead_letters(Principal(engine.id, "VIEWER"), queue="triggers").items
    assert len(mine) == 3
