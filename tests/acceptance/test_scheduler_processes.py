"""Acceptance: two real ``shiftflow scheduler run`` processes against one database and vhost.

Schedules are added with ``shiftflow schedules add`` (and, for numbers, in-process);
two scheduler replicas run at once; one is SIGKILLed mid-run and the other carries on
and stops on SIGTERM. The triggers queue is read with pika: every slot of every
schedule is published, none twice while both run cleanly, and after the kill at most
a re-publish of the same dedup key, which the trigger actor turns into one execution.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import peewee
import pika
import pytest

from shiftflow.kernel.contracts import TriggerPayload, decode
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.engine.start import start_execution
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.schedules import Schedule
from shiftflow.models.tables.workflows import Workflow
from shiftflow.producers.scheduler.config import add_schedule, build_config
from tests.support.ports import free_port
from tests.support.waiting import wait_for_http, wait_until

pytestmark = pytest.mark.acceptance
SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))
UTC = dt.UTC


def _run(env, *args):
    result = subprocess.run([SHIFTFLOW, *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _fired(metrics_url: str) -> float:
    text = httpx.get(metrics_url, timeout=5).text
    line = next(
        x for x in text.splitlines() if x.startswith('shiftflow_schedule_fires_total{outcome="fired"}')
    )
    return float(line.split()[-1])


def _drain(amqp_url: str) -> list[TriggerPayload]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        out = []
        while True:
            method, _props, body = channel.basic_get("triggers", auto_ack=True)
            if method is None:
                return out
            out.append(decode(TriggerPayload, json.loads(body)["kwargs"]["payload"]))
    finally:
        connection.close()


def test_two_scheduler_processes_fire_each_slot_once(real_env, pg_url, amqp_url, tmp_path):
    env = {**os.environ, **real_env, "SHIFTFLOW_SCHEDULER_TICK_MS": "100"}
    flow = tmp_path / "flow.json"
    flow.write_text(
        json.dumps(
            {
                "name": "tick",
                "trigger": {"type": "manual"},
                "steps": [{"id": "noop", "type": "transform", "with": {"output": {"ok": True}}}],
            }
        )
    )
    _run(env, "apply", str(flow), "--workspace", "acc")
    _run(
        env,
        "schedules",
        "add",
        "--workflow",
        "tick",
        "--workspace",
        "acc",
        "--cron",
        "* * * * * *",
        "--key",
        "cli-cron",
    )
    _run(
        env,
        "schedules",
        "add",
        "--workflow",
        "tick",
        "--workspace",
        "acc",
        "--every",
        "1s",
        "--key",
        "cli-every",
        "--overlap",
        "allow",
        "--catch-up",
        "skip",
    )
    bad = subprocess.run(
        [
            SHIFTFLOW,
            "schedules",
            "add",
            "--workflow",
            "tick",
            "--workspace",
            "acc",
            "--cron",
            "* * * * MOON",
            "--key",
            "bad",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "--cron: day-of-week: 'MOON' is not a number 0-7" in bad.stderr

    db = bind_database(pg_url)
    workflow = Workflow.get(Workflow.name == "tick")
    now = dt.datetime.now(UTC)
    for i in range(40):
        config = build_config(cron="* * * * * *") if i % 2 else build_config(every="1")
        add_schedule(workflow, config, key=f"s{i}", now=now)
    count = Schedule.select().count()
    keys = [f"s{i}" for i in range(40)]

    ports = [free_port(), free_port()]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [
        subprocess.Popen(
            [SHIFTFLOW, "scheduler", "run", "--replica-name", name, "--no-polling"],
            env={**env, "SHIFTFLOW_SCHEDULER_METRICS_PORT": str(port)},
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for name, port, log in zip(("a", "b"), ports, logs, strict=True)
    ]
    metrics = [f"http://127.0.0.1:{port}/metrics" for port in ports]
    try:
        for url in metrics:
            wait_for_http(url, timeout=30)
        started = dt.datetime.now(UTC)
        # Both replicas fire (they split the due rows between them).
        wait_until(
            lambda: all(_fired(url) > 20 for url in metrics), timeout=30, message="both replicas firing"
        )
        # A clean run of both: every schedule has committed three slots.
        wait_until(lambda: _fired_at_least(keys, 3), timeout=30, interval=0.2, message="three slots each")
        clean = _drain(amqp_url)
        os.killpg(procs[0].pid, signal.SIGKILL)  # replica a dies mid-run, holding whatever it held
        procs[0].wait(10)
        killed_at = dt.datetime.now(UTC).replace(tzinfo=None)
        # b took over: every schedule fired again, a second after a died, whatever a held.
        wait_until(lambda: _fired_since(keys, killed_at + dt.timedelta(seconds=1)), timeout=30, interval=0.2,
                   message="every schedule fired after the kill")
        before_stop = dt.datetime.now(UTC)
        os.killpg(procs[1].pid, signal.SIGTERM)
        assert procs[1].wait(30) == 0
        assert "stopped" in logs[1].read_text()
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    rest = _drain(amqp_url)

    # While both ran: no slot published twice.
    clean_keys = collections.Counter(p.dedup_key for p in clean)
    assert clean and max(clean_keys.values()) == 1
    # Overall: every slot of every schedule from its first to its last, no gap; after the
    # kill at most a re-publish of a key a (killed before its commit) had published.
    published = clean + rest
    keys = collections.Counter(p.dedup_key for p in published)
    assert max(keys.values()) <= 2
    slots = collections.defaultdict(set)
    for p in published:
        slots[p.data["schedule_id"]].add(dt.datetime.fromisoformat(p.data["scheduled_for"]))
    assert len(slots) == count
    for fired in slots.values():
        ordered = sorted(fired)
        assert all((b - a).total_seconds() == 1 for a, b in zip(ordered, ordered[1:], strict=False)), ordered
        assert ordered[0] <= started + dt.timedelta(seconds=2)
        assert ordered[-1] >= before_stop - dt.timedelta(seconds=2)  # b took over a's schedules
    # A re-published slot still makes one execution (the settings of this test's servers:
    # run alone, no earlier test configured them).
    configure(Settings.from_env(real_env))
    for payload in published:
        start_execution(payload)
    assert Execution.select().where(Execution.source == "schedule").count() == len(keys)
    db.close()


def _fired_at_least(keys: list[str], slots: int) -> bool:
    """Every schedule of ``keys`` has committed ``slots`` fires (read from its row)."""
    least = Schedule.select(peewee.fn.MIN(Schedule.fire_count)).where(Schedule.key.in_(keys)).scalar()
    return least is not None and least >= slots


def _fired_since(keys: list[str], since: dt.datetime) -> bool:
    """Every schedule of ``keys`` has committed a fire at or after ``since`` (naive UTC)."""
    stale = Schedule.select().where(
        Schedule.key.in_(keys) & (Schedule.last_fired_at.is_null() | (Schedule.last_fired_at < since))
    )
    return not stale.exists()
