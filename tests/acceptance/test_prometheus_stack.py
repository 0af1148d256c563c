"""A real Prometheus (Debian's `prometheus` package) scrapes a running ShiftFlow stack and
evaluates deploy/prometheus/alerts.yml.

Real processes on the test's database, vhost, MongoDB database and Redis db: the ingress,
the scheduler, a worker pool and the queue exporter, each with its metrics listener. Prometheus scrapes them
every second and evaluates the rules every second; the test sends a signed webhook and
reads the executed workflow back from Prometheus, checks every rule evaluates without an
error, and stops the scheduler to see ShiftFlowTargetDown go pending. Each endpoint's
exposition also passes `promtool check metrics`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from shiftflow.kernel.signatures import signed_headers
from tests.support.ports import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.acceptance
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))
ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = os.environ.get("SHIFTFLOW_PROMETHEUS_PATH", "/usr/bin/prometheus")
PROMTOOL = os.environ.get("SHIFTFLOW_PROMTOOL_PATH", "/usr/bin/promtool")
#: A workflow of two cheap steps, applied with the CLI as an operator would.
WORKFLOW = {
    "name": "prom",
    "trigger": {"type": "webhook"},
    "steps": [
        {"id": "check", "type": "condition", "with": {"left": "{{ trigger.n }}", "op": ">=", "right": 0}},
        {"id": "shape", "type": "transform", "with": {"output": {"n": "{{ trigger.n }}"}}},
    ],
}


class Stack:
    """Processes started in their own sessions, stopped by process group."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        with (self.logs / f"{name}.log").open("wb") as log:
            self.procs[name] = subprocess.Popen(argv, env={**self.env, **(env or {})}, stdout=log,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True)

    def stop(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]


@pytest.fixture
def stack(real_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Stack, dict[str, int]]]:
    for binary in (PROMETHEUS, PROMTOOL):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} is missing: run `make tools` (Debian's prometheus package)")
    env = {**os.environ, **real_env, "SHIFTFLOW_TIMERS": "off"}
    env.pop("SHIFTFLOW_METRICS_DIR", None)
    subprocess.run([SHIFTFLOW, "migrate"], env=env, check=True, capture_output=True, timeout=60)
    ports = {name: free_port() for name in ("ingress", "ingress_metrics", "scheduler", "pool", "queues",
                                            "prometheus")}
    running = Stack(env, tmp_path)
    running.start("ingress", [SHIFTFLOW, "ingress"], {"SHIFTFLOW_INGRESS_PORT": str(ports["ingress"]),
                                                      "SHIFTFLOW_INGRESS_METRICS_PORT": str(ports["ingress_metrics"])})
    running.start("scheduler", [SHIFTFLOW, "scheduler", "run", "--no-polling"],
                  {"SHIFTFLOW_SCHEDULER_METRICS_PORT": str(ports["scheduler"])})
    running.start("pool", [SHIFTFLOW, "workers", "--queues", "triggers", "steps", "--processes", "1", "--threads", "2",
                           "--metrics-port", str(ports["pool"])])
    running.start("queues", [SHIFTFLOW, "queues", "exporter", "--port", str(ports["queues"])])
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "shiftflow-ingress", "static_configs": [{"targets": [f"127.0.0.1:{ports['ingress_metrics']}"]}]},
            {"job_name": "shiftflow-scheduler", "static_configs": [{"targets": [f"127.0.0.1:{ports['scheduler']}"]}]},
            {"job_name": "shiftflow-queues", "static_configs": [{"targets": [f"127.0.0.1:{ports['queues']}"]}]},
            {"job_name": "shiftflow-workers", "static_configs": [{"targets": [f"127.0.0.1:{ports['pool']}"],
                                                                  "labels": {"pool": "core"}}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    running.start("prometheus", [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{ports['prometheus']}"])
    try:
        yield running, ports
    finally:
        for name in reversed(list(running.procs)):
            running.stop(name)


def _api(ports: dict[str, int], path: str, **params: Any) -> Any:
    response = httpx.get(f"http://127.0.0.1:{ports['prometheus']}/api/v1/{path}", params=params, timeout=10)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]


def _ready(ports: dict[str, int]) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{ports['prometheus']}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.timeout(240)
def test_prometheus_scrapes_every_process_and_evaluates_the_rules(stack, tmp_path):
    running, ports = stack
    wait_until(lambda: _ready(ports), timeout=60, message="Prometheus ready\n" + running.log("prometheus"))

    # Every process scraped and up.
    def all_up() -> bool:
        targets = _api(ports, "targets")["activeTargets"]
        return len(targets) == 4 and all(t["health"] == "up" for t in targets)

    wait_until(all_up, timeout=90, interval=0.5,
               message=f"every target up: {_api(ports, 'targets')}\n{running.log('pool')}\n{running.log('scheduler')}")

    # Each endpoint's exposition is valid by Prometheus's own linter.
    for port in (ports["ingress_metrics"], ports["scheduler"], ports["pool"], ports["queues"]):
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        lint = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0, (port, lint.stdout + lint.stderr)

    # A webhook runs a workflow; its execution shows up in Prometheus, scraped from the pool.
    (tmp_path / "prom.yaml").write_text(yaml.safe_dump(WORKFLOW))
    applied = subprocess.run([SHIFTFLOW, "apply", str(tmp_path / "prom.yaml"), "--workspace", "prom", "--webhook",
                              "standard"], env=running.env, capture_output=True, text=True, timeout=60)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    lines = applied.stdout.splitlines()
    secret = next(line.split(": ", 1)[1] for line in lines if line.startswith("webhook secret"))
    path = next(line.split("/hooks/", 1)[1].split()[0] for line in lines if line.startswith("webhook URL"))
    body = b'{"n": 3}'
    headers = signed_headers("standard", secret, body, int(time.time()), "prom-1")
    answer = httpx.post(f"http://127.0.0.1:{ports['ingress']}/hooks/{path}", content=body, headers=headers,
                        timeout=15)
    assert answer.status_code == 202, answer.text

    def counted(query: str) -> float:
        result = _api(ports, "query", query=query)["result"]
        return float(result[0]["value"][1]) if result else 0.0

    wait_until(lambda: counted('sum(shiftflow_executions_total{outcome="succeeded"})') >= 1, timeout=60,
               interval=0.5, message="the succeeded execution in Prometheus\n" + running.log("pool"))
    # Scraped every second, the ingress may be scraped last (the pool can finish within one interval).
    wait_until(lambda: counted('sum(shiftflow_webhooks_total{outcome="accepted"})') >= 1, timeout=10, interval=0.5,
               message="the accepted webhook in Prometheus")
    # By workflow (workspace/workflow), and the queue exporter's series for every queue.
    wait_until(lambda: counted('sum(shiftflow_workflow_executions_total{workflow="prom/prom",outcome="succeeded"})')
               >= 1, timeout=30, interval=0.5, message="the execution by workflow")
    assert counted('count(shiftflow_queue_oldest_message_age_seconds)') == 8
    assert counted('max(shiftflow_queue_exporter_up)') == 1
    assert counted('max(shiftflow_state_up)') == 1

    # Every rule of alerts.yml loaded and evaluated without an error.
    def evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in _api(ports, "rules")["groups"] for r in g["rules"]]
        done = all(not r["lastEvaluation"].startswith("0001-") for r in rules)
        return rules if rules and done else None

    rules = wait_until(evaluated, timeout=30, interval=0.5, message="every rule evaluated")
    expected = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]}
    assert {r["name"] for r in rules} == expected
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []

    # A process stops answering: its target goes down and the alert goes pending (it fires after 2 minutes).
    running.stop("scheduler")

    def target_down_pending() -> bool:
        alerts = _api(ports, "alerts")["alerts"]
        return any(a["labels"]["alertname"] == "ShiftFlowTargetDown" and a["labels"]["job"] == "shiftflow-scheduler"
                   and a["state"] in ("pending", "firing") for a in alerts)

    wait_until(target_down_pending, timeout=30, interval=0.5, message="ShiftFlowTargetDown pending")
    for name in ("ingress", "pool"):
        assert running.procs[name].poll() is None, running.log(name)
