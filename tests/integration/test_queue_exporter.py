"""The queue exporter and ``shiftflow pools plan`` against the real RabbitMQ (a vhost of the test).

The queues are declared as ShiftFlow declares them (priority queues, so RabbitMQ's own
``head_message_timestamp`` is empty: the age comes from the exporter's counter history).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pika
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from shiftflow.consumers.queue_exporter import QueueCollector, QueueSampler, management_from_amqp
from shiftflow.kernel.broker import queue_arguments
from shiftflow.kernel.contracts import Queue
from tests.support.ports import free_port
from tests.support.waiting import wait_until

PROMTOOL = os.environ.get("SHIFTFLOW_PROMTOOL_PATH", "/usr/bin/promtool")
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))


def _channel(amqp_url: str) -> tuple[pika.BlockingConnection, pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    for queue in Queue.ALL:
        channel.queue_declare(queue, durable=True, arguments=queue_arguments(queue))
    return connection, channel


def _publish(channel: pika.adapters.blocking_connection.BlockingChannel, queue: str, count: int) -> None:
    for _ in range(count):
        channel.basic_publish("", queue, b"{}", pika.BasicProperties(delivery_mode=2, priority=3))


def _promtool(text: str) -> None:
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def _sample(text: str, name: str, queue: str) -> float:
    prefix = f'{name}{{queue="{queue}"}} '
    return float(next(line for line in text.splitlines() if line.startswith(prefix))[len(prefix):])


@pytest.mark.timeout(120)
def test_the_oldest_message_age_is_the_time_it_has_waited(amqp_url: str) -> None:
    connection, channel = _channel(amqp_url)
    base, vhost, auth = management_from_amqp(amqp_url)
    sampler = QueueSampler(base, vhost, auth, interval=0.5)
    stop = threading.Event()
    threading.Thread(target=sampler.run, args=(stop,), daemon=True).start()
    registry = CollectorRegistry()
    registry.register(QueueCollector(sampler))
    try:
        first_at = time.time()
        _publish(channel, Queue.STEPS, 5)
        # RabbitMQ publishes its queue statistics every 5 s: wait until the exporter has seen them.
        wait_until(lambda: sampler.snapshot()[2][Queue.STEPS].published == 5, timeout=20, interval=0.2)
        time.sleep(6)
        _publish(channel, Queue.STEPS, 5)
        for _ in range(3):  # three of the first five leave: the oldest waiting is the fourth
            method, _, _ = channel.basic_get(Queue.STEPS, auto_ack=True)
            assert method is not None
        wait_until(lambda: sampler.snapshot()[2][Queue.STEPS].ready == 7
                   and sampler.snapshot()[2][Queue.STEPS].published == 10, timeout=20, interval=0.2)
        text = generate_latest(registry).decode()
        waited = time.time() - first_at
        age = _sample(text, "shiftflow_queue_oldest_message_age_seconds", Queue.STEPS)
        # The statistics are up to 5 s old, and sampled every 0.5 s: the age is at most that much short.
        assert waited - 6.5 <= age <= waited + 0.5, (age, waited)
        assert age > 6  # the second batch (published 6 s later) is not the oldest
        assert _sample(text, "shiftflow_queue_messages_ready", Queue.STEPS) == 7
        assert _sample(text, "shiftflow_queue_published_total", Queue.STEPS) == 10
        assert _sample(text, "shiftflow_queue_oldest_message_age_seconds", Queue.LLM) == 0  # empty
        assert "shiftflow_queue_exporter_up 1.0" in text
        _promtool(text)

        # The queue drains: nothing waits, the age is 0 again.
        channel.queue_purge(Queue.STEPS)
        wait_until(lambda: sampler.snapshot()[2][Queue.STEPS].ready == 0, timeout=20, interval=0.2)
        assert _sample(generate_latest(registry).decode(), "shiftflow_queue_oldest_message_age_seconds",
                       Queue.STEPS) == 0
    finally:
        stop.set()
        connection.close()


@pytest.mark.timeout(120)
def test_the_exporter_command_serves_metrics_promtool_accepts(real_env: dict[str, str]) -> None:
    connection, channel = _channel(real_env["SHIFTFLOW_AMQP_URL"])
    env = {**os.environ, **real_env}
    subprocess.run([SHIFTFLOW, "migrate"], env=env, check=True, capture_output=True, timeout=60)
    port = free_port()
    proc = subprocess.Popen([SHIFTFLOW, "queues", "exporter", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        _publish(channel, Queue.TOOLS, 3)

        def scraped() -> str | None:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            return text if _sample(text, "shiftflow_queue_messages_ready", Queue.TOOLS) == 3 else None

        text = wait_until(scraped, timeout=30, interval=0.5)
        _promtool(text)
        assert "shiftflow_queue_exporter_up 1.0" in text
        # The state gauges from PostgreSQL: the database answered, nothing to reconcile.
        assert "shiftflow_state_up 1.0" in text
        assert 'shiftflow_sideshift_orders{state="NEEDS_RECONCILIATION"} 0.0' in text
        assert 'shiftflow_steps_parked{reason="timer"} 0.0' in text
    finally:
        proc.terminate()
        proc.wait(10)
        connection.close()


@pytest.mark.timeout(180)
def test_pools_plan_asks_more_for_a_growing_backlog_and_fewer_for_an_idle_pool(
        real_env: dict[str, str], tmp_path: Path) -> None:
    """A loaded stack: ``steps`` gets 40 messages a second and its pool is not keeping up (its
    one process is stopped); a real worker pool consumes ``llm``, which gets nothing."""
    env = {**os.environ, **real_env, "SHIFTFLOW_TIMERS": "off"}
    env.pop("SHIFTFLOW_METRICS_DIR", None)
    subprocess.run([SHIFTFLOW, "migrate"], env=env, check=True, capture_output=True, timeout=60)
    idle_port = free_port()
    pools = {"pools": {
        "busy": {"queues": ["steps"], "processes": 1, "threads": 4, "metrics_port": free_port()},
        "idle": {"queues": ["llm"], "processes": 3, "threads": 4, "metrics_port": idle_port},
    }}
    (tmp_path / "pools.yaml").write_text(yaml.safe_dump(pools))
    connection, channel = _channel(real_env["SHIFTFLOW_AMQP_URL"])
    idle = subprocess.Popen([SHIFTFLOW, "workers", "--pools", str(tmp_path / "pools.yaml"), "--pool", "idle",
                             "--processes", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    stop = threading.Event()

    def load() -> None:
        with pika.BlockingConnection(pika.URLParameters(real_env["SHIFTFLOW_AMQP_URL"])) as conn:
            loader = conn.channel()
            while not stop.is_set():
                _publish(loader, Queue.STEPS, 4)
                time.sleep(0.1)

    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{idle_port}/healthz", timeout=1).status_code == 200,
                   timeout=60, interval=0.5, message="the idle pool's metrics endpoint")
        threading.Thread(target=load, daemon=True).start()
        time.sleep(6)  # RabbitMQ's statistics (every 5 s) show the load
        plan = subprocess.run([SHIFTFLOW, "pools", "plan", "--pools", str(tmp_path / "pools.yaml"),
                               "--window", "11", "--target-age", "30", "--service-seconds", "0.5"],
                              env=env, capture_output=True, text=True, timeout=90)
        assert plan.returncode == 0, plan.stdout + plan.stderr
        print(plan.stdout)
        lines = plan.stdout.splitlines()
        busy = next(line for line in lines if line.startswith("pool busy:"))
        idle_line = next(line for line in lines if line.startswith("pool idle:"))
        assert "(has 1: more)" in busy, plan.stdout
        assert "-> 1 process(es)" in idle_line and "(has 3: fewer)" in idle_line, plan.stdout
        assert "change in pools.yaml:" in plan.stdout and "processes: 1   # was 3" in plan.stdout
    finally:
        stop.set()
        os.killpg(idle.pid, 15)
        idle.wait(30)
        connection.close()
