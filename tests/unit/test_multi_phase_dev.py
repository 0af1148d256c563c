"""The multi-phase example runs in dev mode's engine: SQLite, the in-process broker, the timer
loop in a thread, the fake deploy service on a real port. The first execution fails after
planning, its retry (a child) resumes from the checkpoint and deploys."""

from __future__ import annotations

import threading
from pathlib import Path

import dramatiq
import pytest
import yaml

from shiftflow import actors
from shiftflow.consumers.dead_letters import DeadLetters
from shiftflow.consumers.timers import run_loop
from shiftflow.fakes.deploy import FakeDeploy, FakeDeployServer, SystemClock, Timings
from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.contracts import TriggerPayload
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.enqueue import send
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.manage import catalog
from shiftflow.models.tables.executions import Execution
from shiftflow.models.tables.registry import create_all
from tests.support.waiting import wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "multi_phase" / "workflow.yaml"


@pytest.mark.timeout(120)
def test_the_example_runs_in_dev_mode(tmp_path):
    settings = configure(Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_DATA_DIR": str(tmp_path),
                                            "SHIFTFLOW_HTTP_ALLOW_PRIVATE": "true"}))
    db = bind_database(settings.database_url)
    create_all(db)
    broker = install(build_broker(settings, extra=[DeadLetters()]))
    actors.declare(broker)
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=50)
    worker.start()
    stop = threading.Event()
    timers = threading.Thread(target=run_loop, args=(stop, 0.1), daemon=True)
    timers.start()
    fake = FakeDeployServer(FakeDeploy(clock=SystemClock(), timings=Timings(queued=0.2, building=0.5))).start()
    try:
        data = yaml.safe_load(EXAMPLE.read_text())
        data["vars"]["deploy_url"] = fake.base_url
        workflow = catalog.apply_definition(catalog.ensure_workspace("dev"), data).workflow
        send("triggers.start", TriggerPayload(str(workflow.id), "demo-1", "test", {}))
        root = wait_until(lambda: Execution.get_or_none(Execution.dedup_key == "demo-1"), timeout=30)
        child = wait_until(lambda: (c := Execution.get_or_none(Execution.parent == root.id)) is not None
                           and c.status in ("SUCCEEDED", "FAILED") and c, timeout=90, interval=0.2)
        assert child.status == "SUCCEEDED", child.error
        assert Execution.get_by_id(root.id).status == "FAILED" and child.retry_count == 1
        assert [p["phase"] for p in child.phases] == ["implementing", "testing", "refining", "deploying"]
        assert child.result["deploy"]["status"] == "ready"
    finally:
        stop.set()
        fake.stop()
        worker.stop()
        broker.close()
        db.close()
