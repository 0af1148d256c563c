"""Duplicates and redeliveries on real PostgreSQL and RabbitMQ, without killing processes.

What ``tests/unit/test_engine_stub.py`` shows one call after another on SQLite, these
show under real concurrency: row locks and unique keys of PostgreSQL decide races that
SQLite's single writer never lets happen. Workers run in the test process (a
``dramatiq.Worker`` on the test's vhost); the checker and the transition log judge the
result.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dramatiq
import pytest
from prometheus_client import REGISTRY

from shiftflow.consumers.boot import boot
from shiftflow.consumers.timers import tick
from shiftflow.kernel import holders
from shiftflow.kernel.contracts import StepPayload, TriggerPayload
from shiftflow.kernel.enqueue import send, send_all
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine.runs import claim_step, complete_step
from shiftflow.models.engine.start import start_execution
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.workflows import Workflow
from tests.support.waiting import wait_until

from .checker import check, install_recorder, load_history
from .outside_service import OutsideService
from .workflows import create_workflow, two_call_definition

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

T = TypeVar("T")


class Engine:
    """An in-process worker on the test's PostgreSQL database and RabbitMQ vhost."""

    def __init__(self, env: dict[str, str], pg_url: str, service: OutsideService) -> None:
        self.pg_url = pg_url
        self.service = service
        self.settings = configure(Settings.from_env(env))
        self.broker = boot(self.settings)
        self.broker.emit_after("process_boot")  # what the dramatiq CLI does in each worker process
        self.worker = dramatiq.Worker(self.broker, worker_threads=4, worker_timeout=100)
        self.accepted: list[str] = []

    def workflow(self, definition: dict[str, Any]) -> str:
        return create_workflow(self.pg_url, definition)

    def trigger(self, workflow_id: str, key: str, n: int = 1) -> None:
        send("triggers.start", TriggerPayload(workflow_id, key, "test", {"n": n}))
        if key not in self.accepted:
            self.accepted.append(key)

    def finished(self, *keys: str, timeout: float = 30.0) -> dict[str, Execution]:
        """Wait until every key's execution is terminal (driving the timer loop meanwhile)."""

        def done() -> dict[str, Execution]:
            tick()  # durable timers (retry backoffs) are the timer fork's job in a pool
            rows = {e.dedup_key: e for e in Execution.select().where(Execution.dedup_key.in_(keys))}
            ready = len(rows) == len(keys) and all(e.status in ("SUCCEEDED", "FAILED") for e in rows.values())
            return rows if ready else {}

        return wait_until(done, timeout=timeout, interval=0.05)


@pytest.fixture
def engine_with(real_env: dict[str, str], pg_url: str, tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []
    service = OutsideService().start()
    install_recorder(pg_url)

    def make(failures: dict[str, int] | None = None, **env: str) -> Engine:
        service.failures = dict(failures or {})
        engine = Engine({**real_env, **env}, pg_url, service)
        engine.worker.start()
        made.append(engine)
        return engine

    try:
        yield make
    finally:
        for engine in made:
            engine.worker.stop()
            engine.broker.emit_before("worker_shutdown", engine.worker)  # flushes the Mongo sink
            engine.broker.close()
        service.close()


def _race(n: int, fn: Callable[[int], T]) -> list[T]:
    """Run ``fn(i)`` in ``n`` threads released at the same moment; return the results in order."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fn(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]
    return results


def _held_token() -> str:
    """A holder token of a live thread (as ``run_step.run_step`` holds one while it works)."""
    token = holders.new_token()
    holders.hold(token)
    return token


def _steps_of(key: str) -> dict[str, StepExecution]:
    execution = Execution.get(Execution.dedup_key == key)
    return {s.step_id: s for s in StepExecution.select().where(StepExecution.execution == execution.id)}


def test_duplicate_triggers_in_flight_make_one_execution_each(engine_with: Callable[..., Engine]) -> None:
    """Five copies of each of 20 keys, published interleaved and consumed by four threads:
    every key is completed once, every outside step called once."""
    engine = engine_with()
    workflow = engine.workflow(two_call_definition("dups", engine.service.url))
    for copy in range(5):
        for n in range(20):
            engine.trigger(workflow, f"d-{n:02d}", n + copy)  # a copy may even carry other data
    engine.finished(*engine.accepted)
    report = check(engine.pg_url, engine.accepted, engine.service.recorded())
    print(f"\n{report.summary()}")
    assert report.counts == {"completed_once": 20, "lost": 0, "duplicated": 0, "unexpected": 0}, (
        report.problems()
    )
    assert report.statuses == {"SUCCEEDED": 20}
    assert len(engine.service.recorded()) == 40 and report.at_least_once_calls == 0
    assert report.redeliveries == 0


def test_concurrent_duplicate_starts_create_once_and_keep_execution_slots(
    engine_with: Callable[..., Engine],
) -> None:
    """Eight ``start_execution`` calls for one key at the same moment: one execution, its
    first steps once, and the ``max_executions`` slot taken once (duplicates give theirs
    back inside the same transaction)."""
    engine = engine_with()
    definition = {**two_call_definition("slots", engine.service.url), "max_executions": 2}
    workflow = engine.workflow(definition)
    payload = TriggerPayload(workflow, "same", "test", {"n": 1})
    started = _race(8, lambda _i: start_execution(payload))

    assert sum(1 for s in started if s.created) == 1
    assert {s.reason for s in started if not s.created} == {"duplicate"}
    assert Execution.select().where(Execution.dedup_key == "same").count() == 1
    assert Workflow.get_by_id(workflow).execution_count == 1
    history = load_history(engine.pg_url)
    inserted = [t.step_id or "" for t in history.transitions if t.tbl == "step" and t.old_status is None]
    assert sorted(inserted) == ["call", "check"]  # the condition ran inline; the call waits
    # Duplicates re-publish the pending first step; claims drop all but one.
    send_all([o for s in started for o in s.outgoing])
    engine.finished("same")
    assert len([c for c in engine.service.recorded() if c.step_id == "call"]) == 1

    # The slots: one more key fits, the next does not.
    assert start_execution(TriggerPayload(workflow, "second", "test", {"n": 2})).created
    refused = start_execution(TriggerPayload(workflow, "third", "test", {"n": 3}))
    assert not refused.created and "max_executions" in refused.reason
    assert Workflow.get_by_id(workflow).execution_count == 2


def test_concurrent_claims_of_one_step_run_it_once(engine_with: Callable[..., Engine]) -> None:
    """The same step published eight times and claimed at the same moment by eight live
    threads: one claim runs it, the others are dropped, one delivery is counted."""
    engine = engine_with()
    workflow = engine.workflow(two_call_definition("claims", engine.service.url))
    started = start_execution(TriggerPayload(workflow, "c-1", "test", {"n": 1}))
    assert started.execution is not None
    payload = StepPayload(str(started.execution.id), "call")
    claims = _race(8, lambda i: claim_step(payload, delivery_limit=5, token=_held_token()))

    winners = [c for c in claims if c.step is not None]
    assert len(winners) == 1
    assert {c.reason for c in claims if c.step is None} == {"held by a live holder"}
    assert _steps_of("c-1")["call"].attempts == 1


def test_a_zombie_and_its_replacement_commit_a_step_once(engine_with: Callable[..., Engine]) -> None:
    """A worker judged gone (its lease ran out while it was cut off) keeps working while
    another worker takes the RUNNING step over. Both finish at the same moment: the step
    is recorded SUCCEEDED once, what follows it is planned once, and the execution still
    completes with each later step run once."""
    engine = engine_with()
    workflow = engine.workflow(two_call_definition("zombie", engine.service.url))
    started = start_execution(TriggerPayload(workflow, "z-1", "test", {"n": 7}))
    assert started.execution is not None
    payload = StepPayload(str(started.execution.id), "call")
    token = _held_token()
    zombie = claim_step(payload, delivery_limit=5, token=token)
    holders.let_go(token)  # judged gone: the next copy takes over, the zombie goes on
    replacement = claim_step(payload, delivery_limit=5, token=_held_token())
    assert zombie.step is not None and replacement.step is not None
    assert replacement.step.attempts == 2

    outputs = [
        {"status": 200, "json": {"ok": True, "echo": {"n": 7, "by": who}}} for who in ("zombie", "new")
    ]
    published = _race(2, lambda i: complete_step((zombie, replacement)[i], outputs[i]))

    history = load_history(engine.pg_url)
    succeeded = [t for t in history.transitions if t.step_id == "call" and t.new_status == "SUCCEEDED"]
    planned = [t for t in history.transitions if t.step_id == "confirm" and t.old_status is None]
    assert len(succeeded) == 1 and len(planned) == 1
    # Both return the next step's message (the loser re-publishes what is pending);
    # the claims let one of them run it.
    send_all([o for batch in published for o in batch])
    engine.finished("z-1")
    steps = _steps_of("z-1")
    assert steps["call"].output["json"]["echo"]["by"] in ("zombie", "new")
    assert steps["shape"].output == {"n": 7} and steps["done"].output == {"n": 7}
    assert [c.step_id for c in engine.service.recorded()] == ["confirm"]
    report = check(engine.pg_url, ["z-1"], engine.service.recorded())
    assert report.counts["completed_once"] == 1, report.problems()


def test_step_message_after_success_only_republishes(engine_with: Callable[..., Engine]) -> None:
    """Late copies of every message of a finished execution (trigger and both steps) change
    nothing: no outside call, no delivery counted, no transition."""
    engine = engine_with()
    workflow = engine.workflow(two_call_definition("late", engine.service.url))
    engine.trigger(workflow, "l-1")
    execution = engine.finished("l-1")["l-1"]
    before = load_history(engine.pg_url)

    def already_done() -> float:
        labels = {"step_type": "http", "outcome": "already_done"}
        return REGISTRY.get_sample_value("shiftflow_steps_total", labels) or 0.0

    seen = already_done()

    engine.trigger(workflow, "l-1")
    for step_id in ("call", "confirm", "call"):
        send("tools.call", StepPayload(str(execution.id), step_id))
    wait_until(lambda: already_done() >= seen + 3, timeout=20)
    engine.trigger(workflow, "l-2")  # published after the copies: when it is done, so are they
    engine.finished("l-2")

    after = load_history(engine.pg_url)
    mine = [t for t in after.transitions if t.execution_id == str(execution.id)]
    assert mine == [t for t in before.transitions if t.execution_id == str(execution.id)]
    assert {
        s.step_id: s.attempts for s in after.steps if s.execution_id == str(execution.id) and s.attempts
    } == {
        "call": 1,
        "confirm": 1,
        "check": 1,
        "shape": 1,
        "done": 1,
    }
    assert sum(1 for c in engine.service.recorded() if c.execution_id == str(execution.id)) == 2


def test_transient_retries_do_not_count_towards_quarantine(engine_with: Callable[..., Engine]) -> None:
    """Deliveries that ended in a recorded retry are explained: a step retried more often
    than the delivery limit is not quarantined (limit 2, three 503s, then success)."""
    engine = engine_with(failures={"call": 3}, SHIFTFLOW_DELIVERY_LIMIT="2")
    definition = two_call_definition("flaky", engine.service.url)
    definition["steps"][1]["retry"] = {"max": 4, "backoff": 0.05, "jitter": False}
    workflow = engine.workflow(definition)
    engine.trigger(workflow, "r-1")
    execution = engine.finished("r-1")["r-1"]
    assert execution.status == "SUCCEEDED", execution.error
    call = _steps_of("r-1")["call"]
    assert (call.attempts, call.retry_count) == (4, 3)
    assert [c.step_id for c in engine.service.recorded()] == ["call"] * 4 + ["confirm"]
