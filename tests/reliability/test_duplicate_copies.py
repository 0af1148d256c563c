"""A second copy of a running step's message never takes the step over from a live holder.

After a broker restart, RabbitMQ hands out again a message whose consumer channel died
while the worker thread still runs it (the same message id, ``redelivered``), and
Dramatiq may re-publish one. Such a copy must wait for the holder of the step, not mark
the outside call's outcome UNKNOWN while the holder is still making it. A copy that
arrives after the holder provably died reconciles (``effect: once``: never calls again),
and a step whose holder died after its copy was dropped is still resumed (the timer loop
re-publishes a step whose claim lease ran out), never left RUNNING.

Real RabbitMQ (the test's vhost) and PostgreSQL (the test's database); a slow local HTTP
service counts the calls.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from prometheus_client import REGISTRY

from shiftflow.consumers.timers import tick
from shiftflow.kernel.contracts import StepPayload, TriggerPayload
from shiftflow.kernel.enqueue import build_message
from shiftflow.models.engine.start import start_execution
from shiftflow.models.tables.executions import Execution, StepExecution
from shiftflow.models.tables.side_effects import SideEffect
from tests.support.waiting import wait_until

from .outside_service import OutsideService
from .test_redelivery import Engine
from .worker_pool import WorkerPool
from .workflows import create_workflow, http_step

pytestmark = [pytest.mark.integration, pytest.mark.reliability]

#: Seconds the outside service takes to answer the ``pay`` call: the window in which copies arrive.
SLOW = 2.5


def pay_definition(name: str, url: str, **pay: Any) -> dict[str, Any]:
    """One slow ``effect: once`` call, then a transform reading its answer."""
    return {
        "name": name,
        "trigger": {"type": "manual"},
        "vars": {"url": url},
        "steps": [
            http_step("pay", "{{ trigger.n }}", effect="once", **pay),
            {"id": "after", "type": "transform", "with": {"output": {"n": "{{ steps.pay.output.json.echo.n }}"}}},
        ],
    }


@pytest.fixture
def service() -> Iterator[OutsideService]:
    made = OutsideService(step_delays={"pay": SLOW}).start()
    yield made
    made.close()


@pytest.fixture
def engines(real_env: dict[str, str], pg_url: str, service: OutsideService) -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(**env: str) -> Engine:
        engine = Engine({**real_env, **env}, pg_url, service)
        engine.worker.start()
        made.append(engine)
        return engine

    try:
        yield make
    finally:
        for engine in made:
            engine.worker.stop()
            engine.broker.emit_before("worker_shutdown", engine.worker)
            engine.broker.close()


def _start(engine: Engine, name: str, key: str) -> tuple[str, dramatiq.Message[Any]]:
    """Create the execution directly; return its id and the (unsent) message of its ``pay`` step."""
    workflow = create_workflow(engine.pg_url, pay_definition(name, engine.service.url))
    started = start_execution(TriggerPayload(workflow, key, "test", {"n": 7}))
    assert started.execution is not None and [o.payload.step_id for o in started.outgoing] == ["pay"]
    out = started.outgoing[0]
    return str(started.execution.id), build_message(out.actor, out.payload, priority=out.priority)


def _calls(service: OutsideService, execution_id: str) -> int:
    return sum(1 for c in service.recorded() if c.execution_id == execution_id and c.step_id == "pay")


def _first_call_made(service: OutsideService, execution_id: str) -> None:
    wait_until(lambda: _calls(service, execution_id) >= 1, timeout=30, message="the holder's call")


def _effect(execution_id: str) -> SideEffect:
    return SideEffect.get((SideEffect.execution == execution_id) & (SideEffect.step_id == "pay"))


def test_a_copy_of_the_same_message_waits_for_its_live_holder(
    engines: Callable[..., Engine], service: OutsideService
) -> None:
    """The same message (same id) published twice; the second copy reaches another worker
    thread while the first is still making the slow call. The call is made once, the
    ledger records the holder's answer, and the execution SUCCEEDS."""
    engine = engines()
    execution_id, message = _start(engine, "dup-same-process", "same-1")
    engine.broker.enqueue(message)
    _first_call_made(service, execution_id)
    engine.broker.enqueue(message)  # the copy: same message id, holder still calling

    execution = engine.finished("same-1")["same-1"]
    assert (execution.status, execution.error) == ("SUCCEEDED", None)
    assert _calls(service, execution_id) == 1
    effect = _effect(execution_id)
    assert (effect.state, effect.attempts) == ("DONE", 1)
    assert effect.result["json"]["echo"]["n"] == 7


def test_a_copy_in_another_process_waits_for_its_live_holder(
    engines: Callable[..., Engine], service: OutsideService, real_env: dict[str, str], tmp_path: Path
) -> None:
    """The holder is a worker pool process (prefetch 1, so RabbitMQ must hand the copy to
    someone else); the copy reaches this process while the holder's call is in flight."""
    single = {**os.environ, **real_env, "SHIFTFLOW_PREFETCH": "1", "SHIFTFLOW_TIMERS": "off",
              "SHIFTFLOW_LOG_LEVEL": "WARNING"}
    pool = WorkerPool(single, tmp_path, queues=("tools",), processes=1, threads=1)
    pool.start()
    try:
        pool.wait_ready()
        engine = engines(SHIFTFLOW_PREFETCH="1")
        execution_id, message = _start(engine, "dup-other-process", "other-1")
        engine.worker.pause()  # the pool takes the first copy
        engine.broker.enqueue(message)
        _first_call_made(service, execution_id)
        engine.worker.resume()
        engine.broker.enqueue(message)  # the pool's prefetch is full: this process gets it

        execution = engine.finished("other-1")["other-1"]
        assert (execution.status, execution.error) == ("SUCCEEDED", None), pool.log_tail()
        assert _calls(service, execution_id) == 1
        assert _effect(execution_id).state == "DONE"
    finally:
        pool.stop()


HOLDER_SCRIPT = """
import sys
from shiftflow.kernel.settings import Settings, configure
from shiftflow.consumers.boot import boot
from shiftflow.kernel.contracts import StepPayload
from shiftflow.kernel.db import database
from shiftflow.models.engine.run_step import run_step

boot(configure(Settings.from_env()))
with database.connection_context():
    run_step(StepPayload(execution_id=sys.argv[1], step_id="pay"))
"""


def _holder_process(env: dict[str, str], execution_id: str, log: Path) -> subprocess.Popen[bytes]:
    """A process that runs the ``pay`` step outside any broker delivery (as a worker does
    once its delivery's channel died): nothing in RabbitMQ brings this step back if it dies."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, execution_id], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def test_a_holder_that_dies_after_its_copy_was_dropped_is_still_resumed(
    engines: Callable[..., Engine], service: OutsideService, real_env: dict[str, str], tmp_path: Path
) -> None:
    """The copy is dropped while the holder lives; then the holder dies before recording.
    No message is left anywhere, yet the step is resumed once its claim lease runs out:
    the call is not repeated (its outcome is UNKNOWN, listed for an operator)."""
    lease = "3"
    engine = engines(SHIFTFLOW_CLAIM_LEASE_SECONDS=lease)
    execution_id, message = _start(engine, "dup-holder-dies", "dies-1")
    env = {**os.environ, **real_env, "SHIFTFLOW_CLAIM_LEASE_SECONDS": lease, "SHIFTFLOW_LOG_LEVEL": "WARNING"}
    holder = _holder_process(env, execution_id, tmp_path / "holder.log")
    try:
        _first_call_made(service, execution_id)
        held = _held()
        engine.broker.enqueue(message)
        wait_until(lambda: _held() > held, timeout=20, message="the copy to be dropped")
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(10)
    step = StepExecution.get((StepExecution.execution == execution_id) & (StepExecution.step_id == "pay"))
    assert step.status == "RUNNING"  # and no message is left to bring it back

    def parked() -> bool:
        tick()  # the timer loop: it re-publishes a step whose claim lease ran out
        return bool(StepExecution.get_by_id(step.id).status == "WAITING")

    wait_until(parked, timeout=30, interval=0.2, message="the orphaned step to be resumed")
    execution = Execution.get_by_id(execution_id)
    assert execution.status == "RUNNING" and "outcome unknown" in (execution.error or "")
    assert _calls(service, execution_id) == 1
    assert _effect(execution_id).state == "UNKNOWN"


def _held() -> float:
    """How many copies of http steps this process dropped because a live holder ran the step."""
    return REGISTRY.get_sample_value("shiftflow_steps_total", {"step_type": "http", "outcome": "held"}) or 0.0


def test_a_copy_after_its_holder_died_takes_over_at_once_and_never_calls_again(
    engines: Callable[..., Engine], service: OutsideService, real_env: dict[str, str], tmp_path: Path
) -> None:
    """The holder's process is SIGKILLed mid-call; the copy (RabbitMQ's redelivery) is
    claimed without waiting for the lease (a long one here): the holder's process is
    provably gone. The call is not repeated; the step waits for an operator."""
    single = {**os.environ, **real_env, "SHIFTFLOW_PREFETCH": "1", "SHIFTFLOW_TIMERS": "off",
              "SHIFTFLOW_CLAIM_LEASE_SECONDS": "600", "SHIFTFLOW_LOG_LEVEL": "WARNING"}
    pool = WorkerPool(single, tmp_path, queues=("tools",), processes=1, threads=1)
    pool.start()
    try:
        pool.wait_ready()
        engine = engines(SHIFTFLOW_PREFETCH="1", SHIFTFLOW_CLAIM_LEASE_SECONDS="600")
        execution_id, message = _start(engine, "dup-killed", "killed-1")
        engine.worker.pause()
        engine.broker.enqueue(message)
        _first_call_made(service, execution_id)
        pool.kill()
        engine.worker.resume()
        step = StepExecution.get((StepExecution.execution == execution_id) & (StepExecution.step_id == "pay"))
        try:
            wait_until(lambda: StepExecution.get_by_id(step.id).status == "WAITING", timeout=30,
                       message="the redelivery to reconcile")
        except TimeoutError:
            row = StepExecution.get_by_id(step.id)
            raise AssertionError(f"step {row.status} held by {row.claimed_by} until {row.lease_until}, "
                                 f"attempts {row.attempts}") from None
    finally:
        pool.stop()
    assert _calls(service, execution_id) == 1
    assert _effect(execution_id).state == "UNKNOWN"
    assert StepExecution.get_by_id(step.id).attempts == 2


def test_the_holder_records_its_answer_even_after_a_copy_marked_it_unknown(
    engines: Callable[..., Engine], service: OutsideService
) -> None:
    """Defence in depth: should a copy ever mark the call UNKNOWN while the holder still
    makes it (its lease lost to a network partition), the holder's answer still lands in
    the ledger and completes the step."""
    engine = engines()
    execution_id, message = _start(engine, "dup-partition", "part-1")
    engine.broker.enqueue(message)
    _first_call_made(service, execution_id)
    # What a copy does once it judged the holder gone: the holder's lease is taken away.
    StepExecution.update(claimed_by=None).where(
        (StepExecution.execution == execution_id) & (StepExecution.step_id == "pay")).execute()
    engine.broker.enqueue(build_message("tools.call", StepPayload(execution_id, "pay")))
    execution = engine.finished("part-1", timeout=30)["part-1"]
    assert (execution.status, execution.error) == ("SUCCEEDED", None)
    assert _calls(service, execution_id) == 1
    assert _effect(execution_id).state == "DONE"
