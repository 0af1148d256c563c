"""Acceptance: ShiftFlow's real processes, started as a user would, driven over HTTP.

`shiftflow migrate`, `shiftflow apply`, `shiftflow ingress` and `shiftflow workers` run as
subprocesses against real PostgreSQL, RabbitMQ and the MongoDB-wire server; the test
only speaks HTTP to them and reads PostgreSQL and MongoDB to check the outcome.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient

from shiftflow.kernel.signatures import signed_headers
from tests.support.ports import free_port
from tests.support.waiting import wait_for_http, wait_until

pytestmark = pytest.mark.acceptance
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))


def _run(env, *args):
    result = subprocess.run([SHIFTFLOW, *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def processes(real_env, tmp_path, json_service):
    ingress_port, metrics_port, ingress_metrics_port = free_port(), free_port(), free_port()
    env = {**os.environ, **real_env, "SHIFTFLOW_INGRESS_PORT": str(ingress_port),
           "SHIFTFLOW_METRICS_PORT": str(metrics_port), "SHIFTFLOW_METRICS_DIR": str(tmp_path / "metrics"),
           "SHIFTFLOW_INGRESS_METRICS_PORT": str(ingress_metrics_port)}
    definition = tmp_path / "flow.json"
    definition.write_text(json.dumps({
        "name": "acceptance", "trigger": {"type": "webhook"},
        "vars": {"url": json_service.url + "/echo"},
        "steps": [
            {"id": "check", "type": "condition", "with": {"left": "{{ trigger.n }}", "op": ">", "right": 0}},
            {"id": "call", "type": "http", "with": {"method": "POST", "url": "{{ vars.url }}",
                                                    "json": {"n": "{{ trigger.n }}"}}},
            {"id": "done", "type": "transform", "with": {"output": {"n": "{{ steps.call.output.json.received.n }}"}}},
        ],
    }))
    _run(env, "migrate")
    applied = _run(env, "apply", str(definition), "--workspace", "acc", "--webhook", "standard")
    secret = applied.split("shown once): ")[1].split()[0]
    token = applied.split("/hooks/")[1].split()[0]
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [
        subprocess.Popen([SHIFTFLOW, "ingress"], env=env, stdout=open(logs / "ingress.log", "w"),
                         stderr=subprocess.STDOUT, start_new_session=True),
        subprocess.Popen([SHIFTFLOW, "workers", "--queues", "triggers", "steps", "tools", "--processes", "1",
                          "--threads", "4"], env=env, stdout=open(logs / "workers.log", "w"),
                         stderr=subprocess.STDOUT, start_new_session=True),
    ]
    try:
        wait_for_http(f"http://127.0.0.1:{ingress_port}/healthz", timeout=30)
        yield {"base": f"http://127.0.0.1:{ingress_port}", "token": token, "secret": secret,
               "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
               "ingress_metrics": f"http://127.0.0.1:{ingress_metrics_port}/metrics", "logs": logs}
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


def _execution(pg_url, key):
    import psycopg2

    with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
        cur.execute("select id, status, error from execution where dedup_key = %s", (key,))
        row = cur.fetchone()
        if row is None:
            return None
        cur.execute("select step_id, status, attempts from step_execution where execution_id = %s order by step_id",
                    (row[0],))
        return {"id": str(row[0]), "status": row[1], "error": row[2], "steps": cur.fetchall()}


def test_webhook_to_finished_execution_through_real_processes(processes, pg_url, mongo_url, mongo_db):
    body = json.dumps({"n": 7}).encode()
    headers = signed_headers("standard", processes["secret"], body, int(time.time()), "acc-1")
    headers["content-type"] = "application/json"
    response = httpx.post(f"{processes['base']}/hooks/{processes['token']}", content=body, headers=headers,
                          timeout=10)
    assert response.status_code == 202, response.text
    key = response.json()["execution_key"]
    try:
        row = wait_until(lambda: (r := _execution(pg_url, key)) and r["status"] in ("SUCCEEDED", "FAILED") and r,
                         timeout=60)
    except TimeoutError:
        raise AssertionError((processes["logs"] / "workers.log").read_text()[-3000:]) from None
    assert row["status"] == "SUCCEEDED", row["error"]
    assert row["steps"] == [("call", "SUCCEEDED", 1), ("check", "SUCCEEDED", 1), ("done", "SUCCEEDED", 1)]

    client = MongoClient(mongo_url)
    try:
        docs = wait_until(lambda: (d := list(client[mongo_db]["execution_logs"].find({"executionId": row["id"]})))
                          and len(d) >= 5 and d, timeout=20)  # created, one outcome per step, succeeded
    finally:
        client.close()
    assert {d.get("stepId") for d in docs} >= {"check", "call", "done"}

    worker_metrics = wait_until(lambda: (t := httpx.get(processes["metrics"], timeout=5).text)
                                and "shiftflow_messages_total" in t and t, timeout=20)
    assert 'actor="tools.call"' in worker_metrics
    # The ingress's metrics: on their own listener, not on the public port.
    assert "shiftflow_webhooks_total" in httpx.get(processes["ingress_metrics"], timeout=5).text
    assert httpx.get(f"{processes['base']}/metrics", timeout=5).status_code == 404
