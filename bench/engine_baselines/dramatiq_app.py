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

Other workloads (``trigger_for``):

* outside calls: ``call1`` → ``call2`` → ``call3``; each makes one HTTP POST to the echo
  service (``common.call``), records the answer, sends the next.
* fan-out: a ``group`` of ``FANOUT_ITEMS`` ``item`` messages (each one POST, one record)
  with ``join`` as its completion callback, which records the end (step 3). Completion
  callbacks need Dramatiq's ``GroupCallbacks`` middleware and its Redis barrier
  (``BENCH_REDIS_URL``), added only when that is set; no results are stored, the join
  reads nothing back.
* long wait: ``wake.send_with_options(..., delay=ms)``: Dramatiq parks the message on the
  queue's delay queue, a worker holds it unacknowledged until it is due, then runs it;
  ``wake`` records the end.

No idempotency, no state machine, no retry bookkeeping: a redelivered message would insert
a duplicate row (and fail on the primary key). That is the point of a bare baseline.
"""

from __future__ import annotations

import os
import time
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from bench.engine_baselines.common import FANOUT_ITEMS, ITEM_STEP, call, env, record, work

broker = RabbitmqBroker(url=env("BENCH_AMQP_URL"))
if os.environ.get("BENCH_REDIS_URL"):
    from dramatiq.middleware import GroupCallbacks
    from dramatiq.rate_limits.backends import RedisBackend

    broker.add_middleware(GroupCallbacks(RedisBackend(url=os.environ["BENCH_REDIS_URL"])))
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


@dramatiq.actor
def call1(run_id: str, phase: str, triggered_at: float, n: int) -> None:
    """Outside call 1: POST, record, send call 2."""
    record(run_id, 1, phase, triggered_at, call(1, n))
    call2.send(run_id, phase, triggered_at, n)


@dramatiq.actor
def call2(run_id: str, phase: str, triggered_at: float, n: int) -> None:
    """Outside call 2: POST, record, send call 3."""
    record(run_id, 2, phase, triggered_at, call(2, n))
    call3.send(run_id, phase, triggered_at, n)


@dramatiq.actor
def call3(run_id: str, phase: str, triggered_at: float, n: int) -> None:
    """Outside call 3: POST and record: the execution is done."""
    record(run_id, 3, phase, triggered_at, call(3, n))


@dramatiq.actor
def item(run_id: str, phase: str, triggered_at: float, n: int, k: int) -> None:
    """One fan-out item: POST, record."""
    record(run_id, ITEM_STEP + k, phase, triggered_at, call(1, n, k))


@dramatiq.actor
def join(run_id: str, phase: str, triggered_at: float) -> None:
    """The group's completion callback: record the end."""
    record(run_id, 3, phase, triggered_at, {"items": FANOUT_ITEMS})


@dramatiq.actor
def wake(run_id: str, phase: str, triggered_at: float) -> None:
    """A delayed message came due: record the end."""
    record(run_id, 3, phase, triggered_at, {"woke": True})


def trigger(run_id: str, phase: str, triggered_at: float, n: int) -> None:
    """Start one execution (the benchmark's producer calls this)."""
    step1.send(run_id, phase, triggered_at, n)


def trigger_for(workload: str, run_id: str, phase: str, triggered_at: float, n: int, wake_at: float = 0.0) -> None:
    """Start one execution of ``workload`` (cheap, outside, fanout, wait)."""
    if workload == "cheap":
        step1.send(run_id, phase, triggered_at, n)
    elif workload == "outside":
        call1.send(run_id, phase, triggered_at, n)
    elif workload == "fanout":
        items = dramatiq.group([item.message(run_id, phase, triggered_at, n, k) for k in range(FANOUT_ITEMS)], broker=broker)
        items.add_completion_callback(join.message(run_id, phase, triggered_at))
        items.run()
    else:
        delay = max(0, int((wake_at - time.time()) * 1000))
        wake.send_with_options(args=(run_id, phase, triggered_at), delay=delay)
