"""What every baseline step does, written the plainest way: the honest yardstick.

One step of the benchmark workflow, for both baselines:

1. compute the step's cheap result in Python (the same transform / condition / transform
   as the ShiftFlow definition in ``bench_engine.py``);
2. one PostgreSQL transaction that inserts the step's row into ``bench_step``;
3. one ``insert_one`` of a log document into the ``step_logs`` collection.

The caller then hands the result to the next step (Dramatiq ``send`` or the next task of a
Celery chain). In the outside-call and fan-out workloads a step first makes one HTTP POST
to the benchmark's loopback echo service (``call``: one ``httpx.Client`` per thread, kept
alive, as ShiftFlow's HTTP step pools its connections) and records the answer. Connections are the plainest too: one psycopg2 connection per thread,
opened on first use and kept; one ``MongoClient`` per process (pymongo is not fork-safe),
opened on first use. No batching, no pooling library, no index beyond the primary key.

Environment: ``BENCH_PG_URL``, ``BENCH_AMQP_URL``, ``BENCH_MONGO_URL`` (with
``retryWrites=false``), ``BENCH_MONGO_DB``; ``BENCH_ECHO_URL`` for the outside calls,
``BENCH_REDIS_URL`` for the fan-out's join (Dramatiq group callbacks, Celery chord).
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import psycopg2
import pymongo

#: The baselines' whole schema: one row per step; ``done_at`` of step 3 ends an execution.
SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_step (
    run_id       text             NOT NULL,
    step         smallint         NOT NULL,
    phase        text             NOT NULL,
    triggered_at double precision NOT NULL,
    done_at      double precision NOT NULL,
    output       jsonb,
    PRIMARY KEY (run_id, step)
)
"""

_INSERT = "INSERT INTO bench_step (run_id, step, phase, triggered_at, done_at, output) VALUES (%s, %s, %s, %s, %s, %s)"

_local = threading.local()
_mongo_lock = threading.Lock()
_mongo: tuple[int, Any] | None = None

#: The condition's threshold (the ShiftFlow definition's ``vars.threshold``).
THRESHOLD = 0


def env(name: str) -> str:
    """A required ``BENCH_*`` variable.

    Raises:
        RuntimeError: it is not set (the worker was started outside the benchmark).
    """
    value = os.environ.get(name, "")
    if not value:
        raise RuntimeError(f"{name} is not set: start this module through bench/bench_engine.py")
    return value


def pg() -> Any:
    """This thread's PostgreSQL connection (opened once, kept)."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg2.connect(env("BENCH_PG_URL"), connect_timeout=5)
        _local.conn = conn
    return conn


def mongo_collection() -> Any:
    """The ``step_logs`` collection through this process's client (created after fork)."""
    global _mongo
    with _mongo_lock:
        if _mongo is None or _mongo[0] != os.getpid():
            client: Any = pymongo.MongoClient(env("BENCH_MONGO_URL"), retryWrites=False)
            _mongo = (os.getpid(), client)
        return _mongo[1][env("BENCH_MONGO_DB")]["step_logs"]


#: Items of the fan-out workload (ShiftFlow's ``for_each`` list has as many).
FANOUT_ITEMS = 20
#: ``bench_step.step`` of fan-out item ``k`` (the join is step 3, the end of an execution).
ITEM_STEP = 100


def call(step: int, n: int, item: int | None = None) -> dict[str, Any]:
    """One outside call: POST the step's JSON to the echo service; returns status and answer.

    Raises:
        httpx.HTTPStatusError: the service did not answer 2xx (the step fails, as ShiftFlow's would).
    """
    import httpx

    client = getattr(_local, "http", None)
    if client is None:
        client = _local.http = httpx.Client(timeout=10.0)
    body: dict[str, Any] = {"n": n, "step": step}
    if item is not None:
        body["item"] = item
    response = client.post(env("BENCH_ECHO_URL"), json=body)
    response.raise_for_status()
    return {"status": response.status_code, "json": response.json()}


def work(step: int, state: dict[str, Any]) -> dict[str, Any]:
    """The step's cheap computation: transform, condition, transform (as in ShiftFlow's definition)."""
    if step == 1:
        return {"amount": state["n"], "customer": f"c{state['n']}"}
    if step == 2:
        return {"passed": state["amount"] >= THRESHOLD}
    return {"message": f"order {state['customer']} accepted"}


def record(run_id: str, step: int, phase: str, triggered_at: float, output: dict[str, Any]) -> None:
    """Persist one finished step: one PostgreSQL transaction, then one Mongo ``insert_one``."""
    done_at = time.time()
    conn = pg()
    with conn, conn.cursor() as cur:  # `with conn`: commit on success, roll back on error
        cur.execute(_INSERT, (run_id, step, phase, triggered_at, done_at, json.dumps(output)))
    mongo_collection().insert_one(
        {
            "runId": run_id,
            "step": step,
            "phase": phase,
            "doneAt": done_at,
            "message": f"step {step} done",
            "output": output,
        }
    )
