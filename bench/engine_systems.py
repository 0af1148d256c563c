"""The three systems ``bench_engine.py`` compares, behind one small interface.

Each system gets, per workload (``WORKLOADS``), its own PostgreSQL database, RabbitMQ
vhost, Redis database and Mongo database on the same servers, and the same worker
processes x threads:

* ``ShiftFlowSystem``: the workflow applied with ``shiftflow.models.manage.catalog``; workers are
  ``dramatiq shiftflow.consumers.worker`` in production mode; triggers are ``triggers.start``
  messages published with ``kernel.enqueue.send`` (publisher confirms) with ``received_at``.
  Latency: ``execution.received_at`` → ``completed_at``.
* ``DramatiqSystem``: ``bench/engine_baselines/dramatiq_app.py`` (see its docstring).
* ``CelerySystem``: ``bench/engine_baselines/celery_app.py`` (see its docstring).

Baseline latency: ``bench_step`` row of step 3, ``done_at - triggered_at``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg2

from bench.engine_services import BIN, Resources, Workers

#: The benchmark workflow: transform → condition → transform, no outside calls.
DEFINITION: dict[str, Any] = {
    "name": "bench-3-steps",
    "trigger": {"type": "manual"},
    "vars": {"threshold": 0},
    "steps": [
        {
            "id": "shape",
            "type": "transform",
            "with": {"output": {"amount": "{{ trigger.n }}", "customer": "c{{ trigger.n }}"}},
        },
        {
            "id": "check",
            "type": "condition",
            "with": {"left": "{{ steps.shape.output.amount }}", "op": ">=", "right": "{{ vars.threshold }}"},
        },
        {
            "id": "summary",
            "type": "transform",
            "with": {"output": {"message": "order {{ steps.shape.output.customer }} accepted"}},
        },
    ],
}


#: The workloads: what each one's ShiftFlow workflow is (the baselines mirror it).
WORKLOADS = ("cheap", "outside", "fanout", "wait")
#: Items of the fan-out workload.
FANOUT_ITEMS = 20


def definition(workload: str, echo_url: str = "") -> dict[str, Any]:
    """The ShiftFlow workflow of ``workload``.

    * cheap: ``DEFINITION`` (transform → condition → transform, all inline);
    * outside: three ``http`` steps, each a POST to the echo service;
    * fanout: one ``http`` step with ``for_each`` over ``FANOUT_ITEMS`` items (all at once:
      ``concurrency`` = items, as a group or chord sends them all), then a join (transform);
    * wait: a ``wait`` step until the trigger's ``until``, then a transform.
    """
    if workload == "cheap":
        return DEFINITION
    post = {"method": "POST", "url": "{{ vars.echo_url }}"}
    if workload == "outside":
        steps = [
            {"id": f"call{k}", "type": "http", "timeout": 10,
             "with": {**post, "json": {"n": "{{ trigger.n }}", "step": k}}}
            for k in (1, 2, 3)
        ]
    elif workload == "fanout":
        steps = [
            {"id": "calls", "type": "http", "timeout": 10, "for_each": list(range(FANOUT_ITEMS)),
             "concurrency": FANOUT_ITEMS,
             "with": {**post, "json": {"n": "{{ trigger.n }}", "step": 1, "item": "{{ item }}"}}},
            {"id": "join", "type": "transform", "with": {"output": {"calls": "{{ steps.calls.status }}"}}},
        ]
    elif workload == "wait":
        steps = [
            {"id": "park", "type": "wait", "with": {"until": "{{ trigger.until }}"}},
            {"id": "done", "type": "transform", "with": {"output": {"woke": "{{ trigger.n }}"}}},
        ]
    else:
        raise ValueError(f"unknown workload {workload!r}")
    return {"name": f"bench-{workload}", "trigger": {"type": "manual"}, "vars": {"echo_url": echo_url},
            "steps": steps}


class System:
    """One system under test: set up, worker commands, trigger, and read back timings."""

    key = ""
    label = ""

    def __init__(self, processes: int, threads: int, workload: str = "cheap", echo_url: str = "") -> None:
        self.processes, self.threads = processes, threads
        self.workload, self.echo_url = workload, echo_url
        #: The wait workload's wake-up time (epoch seconds) for the next triggers.
        self.wake_at = 0.0
        self.pg_url = ""
        #: Statements ``query`` ran (the benchmark's polls, taken out of the commit counts).
        self.queries = 0
        self.mongo_db = ""
        self._conn: Any = None

    def setup(self, res: Resources, mongo_url: str) -> None:
        """Create this system's database, vhost and Mongo database name."""
        raise NotImplementedError

    def worker_env(self) -> dict[str, str]:
        """Environment of the worker processes."""
        raise NotImplementedError

    def worker_commands(self) -> list[list[str]]:
        """The worker processes to start (argv lists)."""
        raise NotImplementedError

    def workers(self, log_dir: Path) -> Workers:
        """The worker processes, not yet started."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SHIFTFLOW_", "BENCH_"))}
        return Workers(self.key, self.worker_commands(), {**base, **self.worker_env()}, log_dir)

    def begin_phase(self) -> None:
        """Called before a phase's first trigger (ShiftFlow re-installs its broker)."""

    def trigger(self, phase: str, i: int) -> None:
        """Start execution ``i`` of ``phase``, stamping the trigger time."""
        raise NotImplementedError

    def trigger_many(self, phase: str, indices: Sequence[int]) -> None:
        """Start several executions as this system's producers would (default: one by one)."""
        for i in indices:
            self.trigger(phase, i)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run a read query on this system's database (one autocommit connection)."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(self.pg_url, connect_timeout=5)
            self._conn.autocommit = True
        self.queries += 1
        with self._conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    def finished(self, phase: str) -> int:
        """How many executions of ``phase`` reached an end (succeeded or not)."""
        raise NotImplementedError

    def timings(self, phase: str) -> list[tuple[float, float]]:
        """(trigger, done) epoch seconds of every successful execution of ``phase``."""
        raise NotImplementedError

    def failed(self, phase: str) -> int:
        """Executions of ``phase`` that ended without succeeding."""
        return 0

    def mongo_docs(self, mongo_url: str) -> int:
        """Documents this system wrote to its Mongo database (all collections)."""
        import pymongo

        client: Any = pymongo.MongoClient(mongo_url)
        try:
            db = client[self.mongo_db]
            return sum(db[name].count_documents({}) for name in db.list_collection_names())
        finally:
            client.close()

    def close(self) -> None:
        """Close this process's connections."""
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()


class ShiftFlowSystem(System):
    """ShiftFlow's real worker pool on its own migrated database."""

    key, label = "sf", "ShiftFlow"

    def __init__(self, processes: int, threads: int, workload: str = "cheap", echo_url: str = "") -> None:
        super().__init__(processes, threads, workload, echo_url)
        self._local = threading.local()
        self._publishers: list[Any] = []
        self._publishers_lock = threading.Lock()

    def setup(self, res: Resources, mongo_url: str) -> None:
        from shiftflow.kernel.broker import build_broker
        from shiftflow.kernel.db import bind_database
        from shiftflow.kernel.settings import Settings
        from shiftflow.models.manage import catalog
        from shiftflow.models.tables.migrations import upgrade

        self.pg_url = res.pg_database(f"sf_{self.workload}")
        self.mongo_db = f"{res.run}_sf_{self.workload}"
        self.env = {
            "SHIFTFLOW_MODE": "production",
            "SHIFTFLOW_AMQP_URL": res.vhost(f"sf_{self.workload}"),
            "SHIFTFLOW_DATABASE_URL": self.pg_url,
            "SHIFTFLOW_MONGO_URL": mongo_url,
            "SHIFTFLOW_MONGO_DB": self.mongo_db,
            # As in production: live execution updates on Redis pub/sub (one pipeline per
            # transition), so their cost is in the figures.
            "SHIFTFLOW_REDIS_URL": res.redis(),
            "SHIFTFLOW_METRICS_PORT": "0",
            "SHIFTFLOW_LOG_LEVEL": "WARNING",
            # The echo service is on loopback.
            "SHIFTFLOW_HTTP_ALLOW_PRIVATE": "true",
        }
        self.settings = Settings.from_env(self.env)
        db = bind_database(self.pg_url)
        try:
            upgrade(db)
            workspace = catalog.ensure_workspace("bench")
            self.workflow_id = str(catalog.apply_definition(workspace, definition(self.workload, self.echo_url)).workflow.id)
        finally:
            with contextlib.suppress(Exception):
                db.close_all()  # type: ignore[attr-defined]
        self.broker = build_broker(self.settings, worker=False)

    def worker_env(self) -> dict[str, str]:
        return dict(self.env)

    def worker_commands(self) -> list[list[str]]:
        return [
            [
                str(BIN / "dramatiq"),
                "shiftflow.consumers.worker",
                "--processes",
                str(self.processes),
                "--threads",
                str(self.threads),
            ]
        ]

    def begin_phase(self) -> None:
        from shiftflow.kernel.broker import install

        install(self.broker)

    def _data(self, i: int) -> dict[str, Any]:
        if self.workload != "wait":
            return {"n": i}
        until = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.wake_at)) + f"{self.wake_at % 1:.6f}"[1:] + "Z"
        return {"n": i, "until": until}

    def trigger(self, phase: str, i: int) -> None:
        from shiftflow.kernel.contracts import TriggerPayload
        from shiftflow.kernel.enqueue import send

        send(
            "triggers.start",
            TriggerPayload(
                workflow_id=self.workflow_id,
                dedup_key=f"{phase}-{i}",
                source="bench",
                data=self._data(i),
                received_at=time.time(),
            ),
        )

    def trigger_many(self, phase: str, indices: Sequence[int]) -> None:
        """Publish a burst the way ShiftFlow's producers do (the scheduler's batches, the
        ingress's concurrent requests): confirms pipelined, every message still confirmed
        before this returns. One publisher (AMQP connection) per producer thread."""
        from shiftflow.kernel.batch_publisher import ConfirmedBatchPublisher
        from shiftflow.kernel.contracts import TriggerPayload
        from shiftflow.kernel.enqueue import Outgoing

        publisher = getattr(self._local, "publisher", None)
        if publisher is None:
            publisher = self._local.publisher = ConfirmedBatchPublisher(self.env["SHIFTFLOW_AMQP_URL"], self.broker)
            with self._publishers_lock:
                self._publishers.append(publisher)
        publisher.publish_all([
            Outgoing("triggers.start", TriggerPayload(workflow_id=self.workflow_id, dedup_key=f"{phase}-{i}",
                                                      source="bench", data=self._data(i), received_at=time.time()))
            for i in indices
        ])

    def finished(self, phase: str) -> int:
        return int(
            self.query(
                "SELECT count(*) FROM execution WHERE dedup_key LIKE %s AND completed_at IS NOT NULL",
                f"{phase}-%",
            )[0][0]
        )

    def timings(self, phase: str) -> list[tuple[float, float]]:
        rows = self.query(
            "SELECT extract(epoch FROM received_at), extract(epoch FROM completed_at) FROM execution "
            "WHERE dedup_key LIKE %s AND status = 'SUCCEEDED'",
            f"{phase}-%",
        )
        return [(float(a), float(b)) for a, b in rows]

    def failed(self, phase: str) -> int:
        return int(
            self.query(
                "SELECT count(*) FROM execution WHERE dedup_key LIKE %s AND completed_at IS NOT NULL "
                "AND status <> 'SUCCEEDED'",
                f"{phase}-%",
            )[0][0]
        )

    def close(self) -> None:
        super().close()
        for publisher in self._publishers:
            with contextlib.suppress(Exception):
                publisher.close()
        with contextlib.suppress(Exception):
            self.broker.close()


class _Baseline(System):
    """A hand-written baseline on the ``bench_step`` table of ``engine_baselines.common``."""

    module = ""

    def setup(self, res: Resources, mongo_url: str) -> None:
        from bench.engine_baselines.common import SCHEMA

        name = f"{self.key}_{self.workload}"
        self.pg_url = res.pg_database(name)
        self.mongo_db = f"{res.run}_{name}"
        self.env = {
            "BENCH_PG_URL": self.pg_url,
            "BENCH_AMQP_URL": res.vhost(name),
            "BENCH_MONGO_URL": mongo_url,
            "BENCH_MONGO_DB": self.mongo_db,
            "BENCH_ECHO_URL": self.echo_url,
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        }
        if self.workload == "fanout":
            self.env["BENCH_REDIS_URL"] = res.redis()
        self.query(SCHEMA + "; SELECT 1")
        # The producer side of the app module reads its broker (and Redis) URL at import;
        # one workload per run of a module (``bench_engine`` runs each workload in a process).
        saved = {k: os.environ.get(k) for k in ("BENCH_AMQP_URL", "BENCH_REDIS_URL")}
        os.environ["BENCH_AMQP_URL"] = self.env["BENCH_AMQP_URL"]
        if "BENCH_REDIS_URL" in self.env:
            os.environ["BENCH_REDIS_URL"] = self.env["BENCH_REDIS_URL"]
        try:
            self.app = importlib.import_module(self.module)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def worker_env(self) -> dict[str, str]:
        return dict(self.env)

    def trigger(self, phase: str, i: int) -> None:
        self.app.trigger_for(self.workload, f"{phase}-{i}", phase, time.time(), i, self.wake_at)

    def finished(self, phase: str) -> int:
        return int(self.query("SELECT count(*) FROM bench_step WHERE phase = %s AND step = 3", phase)[0][0])

    def timings(self, phase: str) -> list[tuple[float, float]]:
        rows = self.query("SELECT triggered_at, done_at FROM bench_step WHERE phase = %s AND step = 3", phase)
        return [(float(a), float(b)) for a, b in rows]


class DramatiqSystem(_Baseline):
    """Bare Dramatiq: three actors, each step one transaction, one insert_one, one send."""

    key, label, module = "dq", "bare Dramatiq", "bench.engine_baselines.dramatiq_app"

    def worker_commands(self) -> list[list[str]]:
        return [
            [
                str(BIN / "dramatiq"),
                self.module,
                "--processes",
                str(self.processes),
                "--threads",
                str(self.threads),
            ]
        ]

    def close(self) -> None:
        super().close()
        with contextlib.suppress(Exception):
            self.app.broker.close()


class CelerySystem(_Baseline):
    """A Celery chain of three tasks; one worker process per process of the other systems."""

    key, label, module = "cel", "Celery chain", "bench.engine_baselines.celery_app"

    def worker_commands(self) -> list[list[str]]:
        return [
            [
                str(BIN / "celery"),
                "-A",
                self.module,
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                str(self.threads),
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "--loglevel",
                "WARNING",
                "-n",
                f"bench{i}@%h",
            ]
            for i in range(self.processes)
        ]

    def close(self) -> None:
        super().close()
        with contextlib.suppress(Exception):
            self.app.app.close()


SYSTEMS: dict[str, type[System]] = {cls.key: cls for cls in (ShiftFlowSystem, DramatiqSystem, CelerySystem)}
