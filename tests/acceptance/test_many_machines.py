"""Acceptance: what several machines would run, as real processes on one.

Two ``shiftflow ingress`` processes on two ports, two ``shiftflow scheduler run``
replicas and four worker pools (``shiftflow workers --pools FILE --pool NAME``: two
front pools on ``triggers`` and ``steps``, two call pools on ``tools``), all on quorum
queues (``SHIFTFLOW_QUEUE_TYPE=quorum``) of a three-node RabbitMQ cluster of the test's
own (``tests/own_rabbitmq_cluster.py``), each process given the nodes in
``SHIFTFLOW_AMQP_URL`` starting at another one. They share only PostgreSQL, RabbitMQ,
Redis and the MongoDB-wire server, as machines would.

Driven from outside: signed webhooks sent alternately to the two ingresses start a
workflow that calls a loopback HTTP service once (``effect: once``), then runs an
``event`` step on the ``steps`` queue; three schedules fire every second on both
replicas meanwhile. Checked from the rows, the log documents, the HTTP service and the
processes' metrics: every accepted webhook is one execution that finished once, each
outside call was made once, every pool claimed some steps (a step's ``claimed_by`` names
the worker process; its session is the pool's), and each scheduled slot is one
execution, none fired twice across the replicas; every broker node held connections.

It starts a cluster and eight processes on a 2-core machine (about 110 s), so
``tests/conftest.py`` puts it in the group of heavy tests: it runs in ``make test``, one
at a time with the fault scenarios, never beside them.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg2
import pytest
from pymongo import MongoClient

from shiftflow.kernel.signatures import signed_headers
from tests.own_rabbitmq_cluster import OwnRabbitMQCluster
from tests.support.ports import free_port
from tests.support.waiting import wait_for_http, wait_until

pytestmark = pytest.mark.acceptance
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))

#: Webhooks sent (half to each ingress) and how long the schedules fire.
WEBHOOKS = 60
SCHEDULES = 3
SCHEDULE_SECONDS = 12.0

#: The four worker pools: name -> queues (one process of 4 threads each, to fit 2 cores).
POOLS = {
    "front-a": ["triggers", "steps"],
    "front-b": ["triggers", "steps"],
    "calls-a": ["tools"],
    "calls-b": ["tools"],
}


def _run(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([SHIFTFLOW, *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _rotations(nodes: list[str], n: int) -> list[str]:
    """``n`` values of SHIFTFLOW_AMQP_URL, each listing every node starting at another one."""
    return [",".join(nodes[i % len(nodes):] + nodes[: i % len(nodes)]) for i in range(n)]


class Machines:
    """The processes of the test, each with its log file; stopped by pid (their sessions)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen([SHIFTFLOW, *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def stop(self, name: str) -> int:
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for name in self.procs:
            self.stop(name)

    def tail(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]


def _metric(url: str, prefix: str) -> float:
    text = httpx.get(url, timeout=5).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


def _holder_pid(token: str) -> int:
    """The pid in a holder token ``<host>/<ns>:<pid>:<start>#<n>`` (``kernel.holders``)."""
    return int(token.split("#")[0].split(":")[-2])


def _rows(pg_url: str, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


@pytest.fixture
def cluster() -> Iterator[OwnRabbitMQCluster]:
    """A RabbitMQ cluster of this test's own (three nodes, their own names, ports and
    data), started; its nodes are stopped by pid after."""
    own = OwnRabbitMQCluster()
    try:
        own.start()
        yield own
    finally:
        own.close()


def _connections_per_node(cluster: OwnRabbitMQCluster) -> dict[str, int]:
    """AMQP connections by the node they were opened to (each node listens on its own port)."""
    node_of_port = {node.port: node.node for node in cluster.nodes}
    listed = json.loads(cluster.nodes[0].ctl("list_connections", "port", "--formatter", "json"))
    found = collections.Counter(node_of_port.get(row["port"], "?") for row in listed)
    return {node.node: found[node.node] for node in cluster.nodes}


@pytest.mark.timeout(300)
def test_many_machines(real_env, cluster, pg_url, mongo_url, mongo_db, json_service, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    broker_nodes = cluster.urls
    base_env = {**os.environ, **real_env, "SHIFTFLOW_QUEUE_TYPE": "quorum", "SHIFTFLOW_AMQP_URL": broker_nodes[0]}

    # Workflows: a webhook one (an outside call made once, then a claimed step on `steps`)
    # and a scheduled one (the same claimed step).
    hook = tmp_path / "hook.json"
    hook.write_text(json.dumps({
        "name": "hook", "trigger": {"type": "webhook"},
        "vars": {"url": json_service.url + "/count"},
        "steps": [
            {"id": "call", "type": "http", "effect": "once",
             "with": {"method": "POST", "url": "{{ vars.url }}", "json": {"n": "{{ trigger.n }}"}}},
            {"id": "tell", "type": "event", "needs": ["call"],
             "with": {"key": "nobody-waits", "data": {"n": "{{ steps.call.output.json.received.n }}"}}},
            {"id": "done", "type": "transform", "needs": ["tell"], "with": {"output": {"ok": True}}},
        ],
    }))
    tick = tmp_path / "tick.json"
    tick.write_text(json.dumps({
        "name": "tick", "trigger": {"type": "manual"},
        "steps": [{"id": "tell", "type": "event", "with": {"key": "nobody-waits", "data": {}}}],
    }))
    applied = _run(base_env, "apply", str(hook), "--workspace", "acc", "--webhook", "standard")
    secret = applied.split("shown once): ")[1].split()[0]
    token = applied.split("/hooks/")[1].split()[0]
    _run(base_env, "apply", str(tick), "--workspace", "acc")

    pools_file = tmp_path / "pools.yaml"
    pool_ports = {name: free_port() for name in POOLS}
    pools_file.write_text(json.dumps({"pools": {
        name: {"queues": queues, "processes": 1, "threads": 4, "metrics_port": pool_ports[name]}
        for name, queues in POOLS.items()}}))

    # Eight processes, as on eight machines; each lists the broker's nodes in its own order.
    urls = iter(_rotations(broker_nodes, 8))
    machines = Machines(logs)
    phases = {"begin": time.monotonic()}
    ingress = {name: (free_port(), free_port()) for name in ("ingress-a", "ingress-b")}
    schedulers = {name: free_port() for name in ("scheduler-a", "scheduler-b")}
    scheduler_fires: dict[str, float] = {}
    try:
        for name, (port, metrics_port) in ingress.items():
            machines.start(name, {**base_env, "SHIFTFLOW_AMQP_URL": next(urls),
                                  "SHIFTFLOW_INGRESS_PORT": str(port),
                                  "SHIFTFLOW_INGRESS_METRICS_PORT": str(metrics_port)}, "ingress")
        for name in POOLS:
            machines.start(name, {**base_env, "SHIFTFLOW_AMQP_URL": next(urls),
                                  "SHIFTFLOW_METRICS_DIR": str(tmp_path / f"metrics-{name}")},
                           "workers", "--pools", str(pools_file), "--pool", name)
        for name, port in schedulers.items():
            # One schedule per claim, so both replicas take part in every second's fires.
            machines.start(name, {**base_env, "SHIFTFLOW_AMQP_URL": next(urls),
                                  "SHIFTFLOW_SCHEDULER_METRICS_PORT": str(port),
                                  "SHIFTFLOW_SCHEDULER_TICK_MS": "100", "SHIFTFLOW_SCHEDULER_BATCH_SIZE": "1"},
                           "scheduler", "run", "--replica-name", name, "--no-polling")
        for port, _metrics_port in ingress.values():
            wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        for port in pool_ports.values():
            wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        for port in schedulers.values():
            wait_for_http(f"http://127.0.0.1:{port}/metrics", timeout=60)

        for i in range(SCHEDULES):
            _run(base_env, "schedules", "add", "--workflow", "tick", "--workspace", "acc", "--every", "1s",
                 "--key", f"tick-{i}", "--overlap", "allow", "--catch-up", "skip")

        # Webhooks alternately through both ingresses while the schedules fire.
        started = phases["ready"] = time.monotonic()
        accepted: dict[str, str] = {}  # execution key -> ingress
        refused: list[tuple[str, int, str]] = []
        names = list(ingress)
        with httpx.Client(timeout=10) as client:
            for n in range(1, WEBHOOKS + 1):
                body = json.dumps({"n": n}).encode()
                # As a sender does: a refusal (503) is sent again with the same delivery id,
                # here to the other ingress; the dedup key makes it one execution either way.
                for attempt in range(3):
                    name = names[(n + attempt) % 2]
                    headers = signed_headers("standard", secret, body, int(time.time()), f"mm-{n}")
                    headers["content-type"] = "application/json"
                    answer = client.post(f"http://127.0.0.1:{ingress[name][0]}/hooks/{token}", content=body,
                                         headers=headers)
                    if answer.status_code == 202:
                        accepted[answer.json()["execution_key"]] = name
                        break
                    refused.append((name, answer.status_code, answer.text[:200]))
                    time.sleep(0.5)
                time.sleep(SCHEDULE_SECONDS / WEBHOOKS / 2)
        time.sleep(max(0.0, SCHEDULE_SECONDS - (time.monotonic() - started)))
        # Every process is connected to the first node of its list: all three nodes serve some.
        per_node = _connections_per_node(cluster)
        assert all(count > 0 for count in per_node.values()), per_node

        # Pause the schedules (the update waits for a tick holding them), let the counters
        # settle, read them, then stop the replicas.
        with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
            cur.execute("update schedule set is_active = false")
        time.sleep(1.5)
        for name, port in schedulers.items():
            scheduler_fires[name] = _metric(f"http://127.0.0.1:{port}/metrics",
                                            'shiftflow_schedule_fires_total{outcome="fired"}')
            assert machines.stop(name) == 0, machines.tail(name)

        expected = len(accepted)
        assert expected == WEBHOOKS, refused

        def finished() -> bool:
            (open_,) = _rows(pg_url, "select count(*) from execution where status not in "
                                     "('SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT')")[0]
            (hooks,) = _rows(pg_url, "select count(*) from execution where source = 'webhook'")[0]
            return open_ == 0 and hooks >= expected

        try:
            phases["driven"] = time.monotonic()
            wait_until(finished, timeout=90, interval=0.3, message="every execution finished")
            phases["drained"] = time.monotonic()
        except TimeoutError:
            raise AssertionError("\n".join(machines.tail(n) for n in POOLS)) from None

        # Which pool ran which step: a holder token names its worker process, whose session
        # is its pool's (each pool was started in a session of its own). Read while they run.
        session_pool = {machines.procs[name].pid: name for name in POOLS}
        claims = _rows(pg_url, "select e.source, e.dedup_key, s.step_id, s.claimed_by from step_execution s "
                               "join execution e on e.id = s.execution_id where s.claimed_by is not null")
        pool_of_pid: dict[int, str] = {}
        for *_ignored, holder in claims:
            pid = _holder_pid(holder)
            if pid not in pool_of_pid:
                pool_of_pid[pid] = session_pool.get(os.getsid(pid), f"? pid {pid}")
    finally:
        ingress_accepted = {}
        for name, (_port, metrics_port) in ingress.items():
            with contextlib.suppress(Exception):
                ingress_accepted[name] = _metric(f"http://127.0.0.1:{metrics_port}/metrics",
                                                 'shiftflow_webhooks_total{outcome="accepted"}')
        machines.stop_all()

    # Every accepted webhook: one execution, succeeded, each step run once.
    executions = _rows(pg_url, "select dedup_key, status, error, id::text from execution where source = 'webhook'")
    assert collections.Counter(key for key, *_ in executions) == collections.Counter(list(accepted))
    assert [row for row in executions if row[1] != "SUCCEEDED"] == []
    steps = _rows(pg_url, "select s.step_id, s.status, s.attempts, count(*) from step_execution s "
                          "join execution e on e.id = s.execution_id where e.source = 'webhook' "
                          "group by 1, 2, 3 order by 1")
    assert steps == [("call", "SUCCEEDED", 1, expected), ("done", "SUCCEEDED", 1, expected),
                     ("tell", "SUCCEEDED", 1, expected)]
    # ... and finished once: one "execution succeeded" document each.
    mongo = MongoClient(mongo_url)
    try:
        logs_db = mongo[mongo_db]["execution_logs"]
        ids = {row[3] for row in executions}

        def documented() -> collections.Counter[str]:
            found = collections.Counter(d["executionId"] for d in logs_db.find(
                {"message": "execution succeeded", "executionId": {"$in": sorted(ids)}}))
            return found if set(found) == ids else collections.Counter()

        succeeded_docs = wait_until(documented, timeout=20, message="a finish document per execution")
    finally:
        mongo.close()
    assert set(succeeded_docs.values()) == {1}

    # Each outside call (effect: once) made once: the HTTP service saw each n exactly once.
    sent = collections.Counter(int(body["n"]) for body in json_service.bodies)
    triggered = [int(n) for (n,) in _rows(pg_url, "select trigger_data->>'n' from execution where source = 'webhook'")]
    assert sorted(sent) == sorted(triggered)
    assert set(sent.values()) == {1}

    # Spread: every pool claimed some steps (front pools the `tell` steps, call pools the calls).
    per_pool: dict[str, collections.Counter[str]] = {name: collections.Counter() for name in POOLS}
    per_pool_executions: dict[str, set[str]] = {name: set() for name in POOLS}
    for _source, key, step_id, holder in claims:
        pool = pool_of_pid[_holder_pid(holder)]
        assert pool in POOLS, f"step {step_id} of {key} claimed by a process of no pool: {holder}"
        per_pool[pool][step_id] += 1
        per_pool_executions[pool].add(key)
    for name, queues in POOLS.items():
        assert sum(per_pool[name].values()) > 0, f"pool {name} ran nothing: {per_pool}"
        assert set(per_pool[name]) <= ({"call"} if queues == ["tools"] else {"tell"}), per_pool

    # Schedules: each fire one execution, none twice across the replicas, both replicas fired.
    scheduled = _rows(pg_url, "select dedup_key, status, trigger_data->>'schedule_id', "
                              "trigger_data->>'scheduled_for' from execution where source = 'schedule'")
    keys = collections.Counter(row[0] for row in scheduled)
    assert keys and set(keys.values()) == {1}
    assert {row[1] for row in scheduled} == {"SUCCEEDED"}
    slots = collections.Counter((row[2], row[3]) for row in scheduled)
    assert set(slots.values()) == {1}
    (fire_count,) = _rows(pg_url, "select sum(fire_count) from schedule")[0]
    assert fire_count == len(scheduled)
    assert sum(scheduler_fires.values()) == len(scheduled), scheduler_fires
    assert all(fires > 0 for fires in scheduler_fires.values()), scheduler_fires
    assert len(scheduled) >= SCHEDULES * SCHEDULE_SECONDS / 2  # fired "every second or so" throughout

    # The table.
    by_ingress = collections.Counter(accepted.values())
    print(f"\n{'process':<12} {'executions':>10} {'steps':>7}  detail")
    for name in POOLS:
        print(f"{name:<12} {len(per_pool_executions[name]):>10} {sum(per_pool[name].values()):>7}  "
              + ", ".join(f"{step} {count}" for step, count in sorted(per_pool[name].items())))
    for name in ingress:
        print(f"{name:<12} {by_ingress[name]:>10} {'':>7}  accepted per its metrics: "
              f"{ingress_accepted.get(name, float('nan')):g}")
    for name in schedulers:
        print(f"{name:<12} {scheduler_fires.get(name, 0):>10g} {'':>7}  schedule fires")
    print(f"{len(accepted)} webhooks accepted ({len(refused)} refused), {len(json_service.calls)} outside calls, "
          f"{len(scheduled)} scheduled executions of {SCHEDULES} schedules, AMQP connections per broker node: "
          f"{sorted(per_node.values())}; "
          f"seconds to start {phases['ready'] - phases['begin']:.0f}, drive {phases['driven'] - phases['ready']:.0f}, "
          f"finish {phases['drained'] - phases['driven']:.0f}")
    for name in ingress:  # both took their share, and each counted what it accepted
        assert by_ingress[name] >= WEBHOOKS // 2 - len(refused), by_ingress
        assert ingress_accepted.get(name) == by_ingress[name], ingress_accepted

