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
* The trigger is ``chain(step1.s(run_id, phase, triggered_at, n), step2.s(), step3.s())
  .apply_async()``; latency is step 3's ``done_at`` minus ``triggered_at``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, chain

from bench.engine_baselines.common import env, record, work

app = Celery("bench_engine", broker=env("BENCH_AMQP_URL"))
app.conf.update(
    task_ignore_result=True,
    result_backend=None,
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


def trigger(run_id: str, phase: str, triggered_at: float, n: int) -> None:
    """Start one execution (the benchmark's producer calls this)."""
    chain(step1.s(run_id, phase, triggered_at, n), step2.s(), step3.s()).apply_async()
