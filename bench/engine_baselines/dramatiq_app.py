"""The plainest hand-written Dramatiq version of the benchmark workflow.

Run by the benchmark as ``dramatiq bench.engine_baselines.dramatiq_app --processes P
--threads T`` with ``BENCH_*`` set (see ``common.py``).

* Broker: ``RabbitmqBroker(url=BENCH_AMQP_URL)`` with Dramatiq's defaults: default
  middleware (age limit, time limit, shutdown notifications, callbacks, pipelines,
  retries), no publisher confirms, prefetch = 2 x threads, one queue ``default``.
* Three actors, ``step1`` → ``step2`` → ``step3``. Each one does the step's cheap work,
  one PostgreSQL transaction inserting its ``bench_step`` row, one ``insert_one`` into
  Mongo (``common.record``), then ``next_actor.send(...)`` with the run id, phase, trigger
  time and the step's output. ``step2`` is the condition: it sends ``step3`` only when it
  passed (it always does here, as in the ShiftFlow definition).
* The trigger is ``step1.send(run_id, phase, triggered_at, n)`` from the benchmark; the
  latency of an execution is step 3's ``done_at`` minus ``triggered_at``.

No idempotency, no state machine, no retry bookkeeping: a redelivered message would insert
a duplicate row (and fail on the primary key). That is the point of a bare baseline.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench.engine_baselines.common import env, record, work

broker = RabbitmqBroker(url=env("BENCH_AMQP_URL"))
dramatiq.set_broker(broker)


@dramatiq.actor
def step1(run_id: str, phase: str, triggered_at: float, n: int) -> None:
    """Transform the trigger data, record it, send step 2."""
    out = work(1, {"n": n})
    record(run_id, 1, phase, triggered_at, out)
    step2.send(run_id, phase, triggered_at, out)


@dramatiq.actor
def step2(run_id: str, phase: str, triggered_at: float, prev: dict[str, Any]) -> None:
    """Check the condition, record it, send step 3 when it passed."""
    out = work(2, prev)
    record(run_id, 2, phase, triggered_at, out)
    if out["passed"]:
        step3.send(run_id, phase, triggered_at, prev)


@dramatiq.actor
def step3(run_id: str, phase: str, triggered_at: float, first: dict[str, Any]) -> None:
    """Shape the summary and record it: the execution is done."""
    record(run_id, 3, phase, triggered_at, work(3, first))


def trigger(run_id: str, phase: str, triggered_at: float, n: int) -> None:
    """Start one execution (the benchmark's producer calls this)."""
    step1.send(run_id, phase, triggered_at, n)
