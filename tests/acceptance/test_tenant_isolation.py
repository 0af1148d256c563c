"""Acceptance: one workspace floods the ingress, another's executions still start on time.

Real processes (`shiftflow ingress`, `shiftflow workers`) on real PostgreSQL, RabbitMQ
and Redis. Two workspaces have one webhook workflow each. The quiet workspace sends a
webhook every 100 ms; its **trigger-to-start latency** (the execution's ``started_at``
minus the ``received_at`` the ingress stamped) is measured first alone, then while the
other workspace sends signed webhooks as fast as 32 connections allow and manual runs
through the management API on 8 more. Both figures come from the same run, so the bound
is relative to what this machine does right now.

Without per-workspace quotas, every flood webhook is accepted and queued ahead of the
quiet workspace's in the one FIFO ``triggers`` queue: its latency grows with the
backlog (seconds, then tens of seconds). With them, the flood is answered 429 beyond its
workspace's rate, the queue stays short, and the quiet workspace's executions start
within a small multiple of their latency alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from shiftflow.kernel.signatures import signed_headers
from tests.support.ports import free_port
from tests.support.waiting import wait_for_http, wait_until

pytestmark = pytest.mark.acceptance
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))
HOST = "127.0.0.1"

#: Each workspace's webhook rate in this test (the quiet one sends 10/s, well below it).
QUOTA_PER_SECOND = 20
#: Each workspace's rate of executions started through the API.
RUN_QUOTA_PER_SECOND = 5
QUIET_COUNT = 20
QUIET_INTERVAL = 0.1
FLOOD_CONNECTIONS = 32
RUN_CONNECTIONS = 8
FLOOD_SECONDS = 8.0


def _run(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([SHIFTFLOW, *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _hook(env: dict[str, str], definition: Path, workspace: str) -> tuple[str, str, str]:
    """Apply the workflow in ``workspace`` with a webhook: (token, secret, workflow id)."""
    applied = _run(env, "apply", str(definition), "--workspace", workspace, "--webhook", "standard")
    secret = applied.split("shown once): ")[1].split()[0]
    token = applied.split("/hooks/")[1].split()[0]
    workflow_id = applied.split("(", 1)[1].split(")", 1)[0]
    return token, secret, workflow_id


def _api_key(env: dict[str, str], workspace: str) -> str:
    _run(env, "members", "add", f"dev@{workspace}.example", "--workspace", workspace, "--role", "member")
    created = _run(env, "keys", "create", "--workspace", workspace, "--user", f"dev@{workspace}.example",
                   "--name", "flood")
    return created.split("store it now):")[1].split()[0]


@pytest.fixture
def stack(real_env: dict[str, str], tmp_path: Path) -> Any:
    port = free_port()
    env = {
        **os.environ,
        **real_env,
        "SHIFTFLOW_INGRESS_PORT": str(port),
        "SHIFTFLOW_QUOTA_WEBHOOKS_PER_SECOND": str(QUOTA_PER_SECOND),
        "SHIFTFLOW_QUOTA_WEBHOOKS_BURST": str(QUOTA_PER_SECOND),
        "SHIFTFLOW_QUOTA_RUNS_PER_SECOND": str(RUN_QUOTA_PER_SECOND),
        "SHIFTFLOW_QUOTA_RUNS_BURST": str(RUN_QUOTA_PER_SECOND),
    }
    definition = tmp_path / "flow.json"
    definition.write_text(json.dumps({
        "name": "tenant", "trigger": {"type": "webhook"},
        "steps": [{"id": "shape", "type": "transform", "with": {"output": {"n": "{{ trigger.n }}"}}}],
    }))
    _run(env, "migrate")
    quiet = _hook(env, definition, "quiet")
    flood = _hook(env, definition, "flood")
    key = _api_key(env, "flood")
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [
        subprocess.Popen([SHIFTFLOW, "ingress"], env=env, stdout=open(logs / "ingress.log", "w"),
                         stderr=subprocess.STDOUT, start_new_session=True),
        subprocess.Popen([SHIFTFLOW, "workers", "--queues", "triggers", "steps", "--processes", "1",
                          "--threads", "4"], env=env, stdout=open(logs / "workers.log", "w"),
                         stderr=subprocess.STDOUT, start_new_session=True),
    ]
    try:
        wait_for_http(f"http://{HOST}:{port}/healthz", timeout=30)
        yield {"port": port, "quiet": quiet, "flood": flood, "key": key, "logs": logs}
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _signed(token: str, secret: str, delivery_id: str, n: int) -> tuple[dict[str, str], bytes]:
    body = json.dumps({"n": n}).encode()
    headers = signed_headers("standard", secret, body, int(time.time()), delivery_id)
    headers["content-type"] = "application/json"
    return headers, body


def _raw_requests(port: int, token: str, secret: str, count: int) -> list[bytes]:
    """``count`` pre-signed HTTP/1.1 requests, each its own delivery id (signing is not the flood's hot path)."""
    out = []
    for i in range(count):
        headers, body = _signed(token, secret, f"flood_{i}", i)
        lines = [f"POST /hooks/{token} HTTP/1.1", f"host: {HOST}:{port}", f"content-length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        out.append(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return out


def _run_requests(port: int, workflow_id: str, key: str, count: int) -> list[bytes]:
    """``count`` identical ``POST /api/v1/workflows/{id}/run`` requests (each a new execution)."""
    body = json.dumps({"input": {"n": 1}}).encode()
    lines = [f"POST /api/v1/workflows/{workflow_id}/run HTTP/1.1", f"host: {HOST}:{port}",
             f"authorization: Bearer {key}", "content-type: application/json", f"content-length: {len(body)}"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    return [request] * count


class Flood:
    """Requests of one workspace, as fast as ``connections`` keep-alive connections allow."""

    def __init__(self, port: int, requests: list[bytes], connections: int = FLOOD_CONNECTIONS) -> None:
        self.port = port
        self.requests = requests
        self.connections = connections
        self.statuses: dict[int, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        it = iter(self.requests)

        async def connection() -> None:
            reader, writer = await asyncio.open_connection(HOST, self.port)
            try:
                while not self.stop.is_set() and (request := next(it, None)) is not None:
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    status = int(head[9:12])
                    lower = head.lower()
                    at = lower.find(b"content-length:")
                    length = int(lower[at + 15 : lower.find(b"\r\n", at)]) if at >= 0 else 0
                    if length:
                        await reader.readexactly(length)
                    self.statuses[status] = self.statuses.get(status, 0) + 1
            finally:
                writer.close()

        await asyncio.gather(*(connection() for _ in range(self.connections)))


def _send_quiet(port: int, token: str, secret: str, prefix: str) -> list[str]:
    """``QUIET_COUNT`` webhooks, one every ``QUIET_INTERVAL`` s; every one must be accepted."""
    keys = []
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        for i in range(QUIET_COUNT):
            headers, body = _signed(token, secret, f"{prefix}_{i}", i)
            response = client.post(f"/hooks/{token}", content=body, headers=headers)
            assert response.status_code == 202, (i, response.status_code, response.text)
            keys.append(response.json()["execution_key"])
            time.sleep(QUIET_INTERVAL)
    return keys


def _latencies(pg_url: str, keys: list[str], timeout: float) -> list[float]:
    """Trigger-to-start seconds of the executions of ``keys`` (waits until all have started)."""
    import psycopg2

    def started() -> list[float] | None:
        with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
            cur.execute(
                "select extract(epoch from started_at - received_at) from execution"
                " where dedup_key = any(%s) and started_at is not null",
                (keys,),
            )
            rows = [float(r[0]) for r in cur.fetchall()]
        return rows if len(rows) == len(keys) else None

    return wait_until(started, timeout=timeout)  # type: ignore[no-any-return]


def _summary(values: list[float]) -> str:
    ordered = sorted(values)
    return (f"median {1000 * statistics.median(ordered):.0f} ms, "
            f"p90 {1000 * ordered[int(0.9 * (len(ordered) - 1))]:.0f} ms, max {1000 * ordered[-1]:.0f} ms")


def test_a_flooding_workspace_does_not_delay_another_workspaces_executions(stack: Any, pg_url: str) -> None:
    port = stack["port"]
    quiet_token, quiet_secret, _ = stack["quiet"]
    flood_token, flood_secret, flood_workflow = stack["flood"]
    # Warm-up: connections, caches, the first webhook's lookups; not measured.
    _latencies(pg_url, _send_quiet(port, quiet_token, quiet_secret, "warm")[:1], timeout=60)

    alone = _latencies(pg_url, _send_quiet(port, quiet_token, quiet_secret, "alone"), timeout=60)

    flood = Flood(port, _raw_requests(port, flood_token, flood_secret, 40_000))
    runs = Flood(port, _run_requests(port, flood_workflow, stack["key"], 20_000), RUN_CONNECTIONS)
    flood.thread.start()
    runs.thread.start()
    started = time.monotonic()
    try:
        time.sleep(2.0)  # the flood is under way (without quotas, its backlog is building)
        keys = _send_quiet(port, quiet_token, quiet_secret, "flooded")
    finally:
        time.sleep(max(0.0, FLOOD_SECONDS - (time.monotonic() - started)))
        flood.stop.set()
        runs.stop.set()
        flood.thread.join(60)
        runs.thread.join(60)
    flood_seconds = time.monotonic() - started
    try:
        flooded = _latencies(pg_url, keys, timeout=300)
    except TimeoutError:
        raise AssertionError((stack["logs"] / "workers.log").read_text()[-3000:]) from None

    sent = sum(flood.statuses.values())
    print(f"\nquiet workspace alone:        {_summary(alone)}")
    print(f"quiet workspace under flood:  {_summary(flooded)}")
    print(f"flood: {sent} webhooks in {flood_seconds:.1f} s, answers {dict(sorted(flood.statuses.items()))}")
    print(f"flood: {sum(runs.statuses.values())} API runs, answers {dict(sorted(runs.statuses.items()))}")
    assert flood.statuses.get(429, 0) > 0, "the flooding workspace was never told it is over its quota"
    assert runs.statuses.get(429, 0) > 0, "the flooding workspace's API runs were never refused"
    # At most the burst plus the rate for the flood's duration (two seconds of slack).
    assert flood.statuses.get(202, 0) <= QUOTA_PER_SECOND * (flood_seconds + 3), flood.statuses
    assert runs.statuses.get(202, 0) <= RUN_QUOTA_PER_SECOND * (flood_seconds + 3), runs.statuses
    # Generous: CPU is shared with the flood's 429s on a small machine, but no backlog of
    # the other workspace's triggers may sit in front of the quiet one's.
    assert statistics.median(flooded) <= 5 * statistics.median(alone) + 0.25, (alone, flooded)
    assert max(flooded) <= 5 * max(alone) + 1.0, (alone, flooded)
