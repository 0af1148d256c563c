"""The benchmark workflow as a Celery chain of three tasks.

Run by the benchmark as ``celery -A bench.engine_baselines.celery_app worker --pool threads
--concurrency T`` (one such worker per process of the other systems) with ``BENCH_*`` set.

* Broker: RabbitMQ (``BENCH_AMQP_URL``, py-amqp transport), default queue ``celery``, no
  result backend (``task_ignore_result``): a chain needs none, each task's message carries
  the rest of the chain. Celery's defaults otherwise: acks on receipt, prefetch multiplier
  4, no publisher confirms. The workers run with ``--without-gossip --without-mingle
  --without-heartbeat`` (the usual production flags; they only remove event traffic).
* Three tasks, ``step1 | step2 | step3``. Each does the step's cheap work, one PostgreSQL
  transaction inserting its ``bench_step`` row and one ``insert_one`` into Mongo
  (``common.record``), and returns the state the next task needs. ``step2`` is the
  condition and stops the chain when it did not pass (never here, as in ShiftFlow).
* Other workloads (``trigger_for``): outside calls, ``call1 | call2 | call3``, each one
  HTTP POST to the echo service (``common.call``) then its record; fan-out, a ``chord``
  of ``FANOUT_ITEMS`` ``item`` tasks (POST, record, return the answer) with ``join`` as
  its body, on a Redis result backend (``BENCH_REDIS_URL``; a chord needs one: the items
  store their results, only they); long wait, ``wake.apply_async(countdown=s)``: the
  worker holds the message unacknowledged until its ETA.
* The trigger is ``chain(step1.s(run_id, phase, triggered_at, n), step2.s(), step3.s())
  .apply_async()``; latency is step 3's ``done_at`` minus ``triggered_at``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, chain, chord

from bench.engine_baselines.common import FANOUT_ITEMS, ITEM_STEP, call, env, record, work

app = Celery("bench_engine", broker=env("BENCH_AMQP_URL"))
app.conf.update(
    task_ignore_result=True,
    result_backend=os.environ.get("BENCH_REDIS_URL") or None,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.step1")
def step1(run_id: str, phase: str, triggered_at: float, n: int) -> dict[str, Any]:
    """Transform the trigger data and record it."""
    out = work(1, {"n": n})
    record(run_id, 1, phase, triggered_at, out)
    return {"run_id": run_id, "phase": phase, "triggered_at": triggered_at, "first": out}


@app.task(name="bench.step2", bind=True)
def step2(self: Any, state: dict[str, Any]) -> dict[str, Any] | None:
    """Check the condition and record it; stop the chain when it did not pass."""
    out = work(2, state["first"])
    record(state["run_id"], 2, state["phase"], state["triggered_at"], out)
    if not out["passed"]:
        self.request.chain = None  # the documented way to end a chain early
        return None
    return state


@app.task(name="bench.step3")
def step3(state: dict[str, Any]) -> None:
    """Shape the summary and record it: the execution is done."""
    record(state["run_id"], 3, state["phase"], state["triggered_at"], work(3, state["first"]))


@app.task(name="bench.call1")
def call1(run_id: str, phase: str, triggered_at: float, n: int) -> dict[str, Any]:
    """Outside call 1: POST and record; the next task gets the execution's identity."""
    record(run_id, 1, phase, triggered_at, call(1, n))
    return {"run_id": run_id, "phase": phase, "triggered_at": triggered_at, "n": n}


@app.task(name="bench.call2")
def call2(state: dict[str, Any]) -> dict[str, Any]:
    """Outside call 2: POST and record."""
    record(state["run_id"], 2, state["phase"], state["triggered_at"], call(2, state["n"]))
    return state


@app.task(name="bench.call3")
def call3(state: dict[str, Any]) -> None:
    """Outside call 3: POST and record: the execution is done."""
    record(state["run_id"], 3, state["phase"], state["triggered_at"], call(3, state["n"]))


@app.task(name="bench.item", ignore_result=False)
def item(run_id: str, phase: str, triggered_at: float, n: int, k: int) -> dict[str, Any]:
    """One chord item: POST, record, return the answer (the chord's body gets them all)."""
    out = call(1, n, k)
    record(run_id, ITEM_STEP + k, phase, triggered_at, out)
    return out


@app.task(name="bench.join")
def join(results: list[dict[str, Any]], run_id: str, phase: str, triggered_at: float) -> None:
    """The chord's body: record the end with the number of answers."""
    record(run_id, 3, phase, triggered_at, {"items": len(results)})


@app.task(name="bench.wake")
def wake(run_id: str, phase: str, triggered_at: float) -> None:
    """The countdown ran out: record the end."""
    record(run_id, 3, phase, triggered_at, {"woke": True})


def trigger(run_id: str, phase: str, triggered_at: float, n: int) -> None:
    """Start one execution (the benchmark's producer calls this)."""
    chain(step1.s(run_id, phase, triggered_at, n), step2.s(), step3.s()).apply_async()


def trigger_for(workload: str, run_id: str, phase: str, triggered_at: float, n: int, wake_at: float = 0.0) -> None:
    """Start one execution of ``workload`` (cheap, outside, fanout, wait)."""
    if workload == "cheap":
        trigger(run_id, phase, triggered_at, n)
    elif workload == "outside":
        chain(call1.s(run_id, phase, triggered_at, n), call2.s(), call3.s()).apply_async()
    elif workload == "fanout":
        chord([item.s(run_id, phase, triggered_at, n, k) for k in range(FANOUT_ITEMS)])(
            join.s(run_id, phase, triggered_at))
    else:
        wake.apply_async((run_id, phase, triggered_at), countdown=max(0.0, wake_at - time.time()))
